"""Prefect flow `fsar`: descriptions -> frames -> audit -> embeddings -> train -> evaluate for one dataset.

Each stage is a Prefect task that calls the library's stage function (`pipeline.registry.run_stage`) and
passes artifact references on; no stage logic and no stage table live here (the registry in
`pipeline.registry` has both). Stages not run in this flow run are taken at the versions the config
implies (`fsar plan`), or pinned with `inputs=["STAGE=VERSION"]`. A stage whose artifact version exists is
skipped by the library and the task says so. The frames stage's work units (shards) run as Prefect
tasks through the chosen task runner: threads in-process (default), a Dask cluster
(`task_runner="dask"`, optional `dask_address`), or Ray (`task_runner="ray"`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed, State

from flows.stage_artifacts import publish_stage_artifact
from pipeline.artifacts import ArtifactRef, ArtifactStore
from pipeline.cli_common import one_line
from pipeline.config import Config
from pipeline.errors import FsarError
from pipeline.evaluate.report import table_markdown
from pipeline.logs import install
from pipeline.registry import PIPELINE, parse_pins, resolve_inputs, run_stage, with_prerequisites
from pipeline.runfile import find_run_file, resolve
from pipeline.secrets import redact_text, restore_overrides

__all__ = ["fsar", "ALL_STAGES", "StageFailed", "run_stages"]

ALL_STAGES = tuple(s.name for s in PIPELINE)
# Where a retry helps: LLM calls (rate limits, a server that restarts) and I/O.
RETRIES = {"descriptions": 2, "frames": 1, "audit": 1, "embeddings": 1, "train": 0, "prefix": 1, "evaluate": 0}


class _FailedRunInOneLine(logging.Filter):
    """Prefect's engine logs a flow run that ended Failed as "Engine execution exited with unexpected exception"
    plus the traceback of re-raising that state (FailedRun) -- in a worker's log, 30 lines of Prefect internals
    under the reason, which the run's state message and the line before already give. For FailedRun only (a run
    that returned a Failed state: bad input, one line) the record keeps its line and loses the traceback; a
    flow that raised (a bug) keeps its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and type(exc).__name__ == "FailedRun" and type(exc).__module__ == "prefect.exceptions":
            record.msg, record.args = f"{record.getMessage()}: {one_line(exc)}", ()
            record.exc_info = record.exc_text = None
        return True


_FLOW_RUN_LOGGER = logging.getLogger("prefect.flow_runs")
if not any(isinstance(f, _FailedRunInOneLine) for f in _FLOW_RUN_LOGGER.filters):
    _FLOW_RUN_LOGGER.addFilter(_FailedRunInOneLine())


class StageFailed(FsarError):
    """A stage task ended Failed on bad input; the message is its one line (the flow ends Failed with it)."""


def _retry_unless_refused(task: Any, task_run: Any, state: State) -> bool:
    """Retry a stage that raised (I/O, a server that restarts), never one that refused its input (it would again)."""
    return _raised(state)


def _stage_task(name: str):
    @task(name=name, retries=RETRIES[name], retry_delay_seconds=10, retry_condition_fn=_retry_unless_refused, cache_policy=NO_CACHE,
          log_prints=True)  # fmt: skip
    def stage_task(cfg: Config, inputs: dict[str, ArtifactRef], **kwargs: Any) -> ArtifactRef | State:
        logger = get_run_logger()
        try:
            ref = run_stage(name, cfg, inputs, **kwargs)
        except FsarError as exc:  # bad input: one line in the log and the state, no traceback, no retry
            line = one_line(exc)
            return Failed(message=line if line.startswith(f"{name}:") else f"{name}: {line}")
        logger.info("%s: %s %s", name, "skipped, artifact exists:" if ref.skipped else "built", ref)

        publish_stage_artifact(name, ref)  # Prefect artifact `<stage>-<dataset>`, also when skipped
        return ref

    return stage_task


STAGE_TASKS = {name: _stage_task(name) for name in ALL_STAGES}


@task(name="frames-unit", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def frames_unit(fn: Callable[[Any], Any], unit: Any) -> Any:
    """One shard of the frames stage (side-effect free apart from its own shard file)."""
    return fn(unit)


def prefect_map_units(fn: Callable[[Any], Any], units: Sequence[Any]) -> list[Any]:
    """Run the frames stage's work units as Prefect tasks on the flow's task runner."""
    futures = frames_unit.map(unmapped(fn), list(units))
    return [f.result() for f in futures]


def _task_runner(kind: str, dask_address: str | None):
    if kind == "local":
        return None
    if kind == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError:
            raise StageFailed("task_runner='dask' needs prefect-dask: pip install 'fsar[dask]'") from None
        return DaskTaskRunner(address=dask_address) if dask_address else DaskTaskRunner(cluster_kwargs={"n_workers": 2, "threads_per_worker": 1})
    if kind == "ray":
        try:
            from prefect_ray import RayTaskRunner
        except ImportError:
            raise StageFailed("task_runner='ray' needs prefect-ray: pip install 'fsar[ray]'") from None
        return RayTaskRunner()
    raise StageFailed(f"unknown task_runner {kind!r}; choose local, dask or ray")


@flow(name="frames-units", log_prints=True)
def frames_subflow(cfg: Config, inputs: dict[str, ArtifactRef]) -> ArtifactRef | State:
    state = STAGE_TASKS["frames"](cfg, inputs, map_units=prefect_map_units, return_state=True)
    if state.is_failed() and not _raised(state):
        return Failed(message=state.message)  # the task's one line, as this subflow's state
    return state.result()


def _result(state: State) -> Any:
    """A finished task's (or subflow's) result; one that failed on bad input stops the flow with its one-line message."""
    if state.is_failed() and not _raised(state):
        raise StageFailed(state.message or "a stage failed")
    return state.result()


def _raised(state: State) -> bool:
    """Whether a failed state holds an exception (a bug, or I/O: re-raised with its traceback) rather than the
    one-line message of a stage that refused its input (data None)."""
    data = state.data
    if data is None:
        return False
    return getattr(data, "result", data) is not None  # a persisted ResultRecord holds the value (the exception)


@flow(name="fsar", log_prints=True)
def fsar(
    dataset: str | None = None,
    preset: str | None = None,
    video_root: str | None = None,
    video_list: str | None = None,
    artifacts: str | None = None,
    overrides: list[str] | None = None,
    stages: list[str] | None = None,
    task_runner: str = "local",
    dask_address: str | None = None,
    inputs: list[str] | None = None,
    config: str | None = None,
) -> dict[str, str] | State:
    """Run the pipeline's stages in order for a dataset; returns {stage: artifact version}.

    Settings: the preset < the run file (`config`, else `fsar.yaml` in the flow's working folder when it
    exists) < these parameters. `overrides` are `key=value` config overrides (secrets in them are masked by
    `python -m flows` before Prefect stores the parameters, and restored here); `inputs` pins upstream
    versions. Bad input (a missing upstream, an LLM without a usable answer, ...) ends the run Failed with
    one line as its state message."""
    install(None, prefect=True)  # fsar's lines go to this run's logger (a worker runs the flow without the CLI)
    try:
        return _full(dataset, preset, video_root, video_list, artifacts, overrides, stages, task_runner, dask_address, inputs, config)
    except FsarError as exc:
        get_run_logger().error("%s", one_line(exc))
        return Failed(message=one_line(exc))


def _full(dataset, preset, video_root, video_list, artifacts, overrides, stages, task_runner, dask_address, inputs, config) -> dict[str, str]:
    logger = get_run_logger()
    run_file = find_run_file(config)
    if run_file is not None:
        logger.info("settings from run file %s", run_file)
    artifacts, video_root, video_list = (restore_overrides([v])[0] if v else v for v in (artifacts, video_root, video_list))
    cfg = resolve(dataset, preset, restore_overrides(overrides or []), artifacts, video_root, video_list, run_file, strict=True).config
    chosen = list(stages or ALL_STAGES)
    unknown = [s for s in chosen if s not in ALL_STAGES]
    if unknown:
        raise StageFailed(f"unknown stage(s) {unknown}; choose from {list(ALL_STAGES)}")
    refs = run_stages(cfg, chosen, task_runner, dask_address, parse_pins(inputs))
    store = ArtifactStore(cfg.artifacts)
    _publish_outcome(cfg, refs, store)
    logger.info("artifacts: %s", {k: str(v) for k, v in refs.items()})
    return {k: v.version for k, v in refs.items()}


def run_stages(cfg: Config, chosen: Sequence[str], task_runner: str = "local", dask_address: str | None = None,
               pins: dict[str, str] | None = None) -> dict[str, ArtifactRef]:
    """Run the chosen stages in pipeline order inside the current flow; upstream artifacts not run here are
    the versions the config implies (or `pins`)."""
    store = ArtifactStore(cfg.artifacts)
    refs: dict[str, ArtifactRef] = {}
    chosen = with_prerequisites(cfg, chosen)  # e.g. evaluate's vision prefix: the registry decides
    for spec in PIPELINE:
        name = spec.name
        if name not in chosen or not spec.enabled(cfg):  # a stage the config switches off (evaluate.prefix=false)
            continue
        inputs = resolve_inputs(cfg, name, store, pins, built=refs)
        if name == "frames":
            runner = _task_runner(task_runner, dask_address)
            sub = frames_subflow if runner is None else frames_subflow.with_options(task_runner=runner)
            refs[name] = _result(sub(cfg, inputs, return_state=True))
        else:
            refs[name] = _result(STAGE_TASKS[name](cfg, inputs, return_state=True))
    return refs


def _publish_outcome(cfg: Config, refs: dict[str, ArtifactRef], store: ArtifactStore) -> None:
    """A Prefect Markdown artifact with the evaluation table and the artifact versions of this run."""
    lines = [f"# fsar: {cfg.dataset.name} (preset {cfg.preset})", "", "| stage | artifact | status |", "|---|---|---|"]
    for name, ref in refs.items():
        lines.append(f"| {name} | `{ref}` | {'skipped (exists)' if ref.skipped else 'built'} |")
    if "evaluate" in refs:
        import json

        path = store.local_path(refs["evaluate"]) / "summary.json"
        if path.exists():
            lines += ["", table_markdown(json.loads(path.read_text()))]
    key = f"fsar-{cfg.dataset.name}".lower().replace("_", "-")
    create_markdown_artifact(markdown=redact_text("\n".join(lines)), key=key, description=f"fsar results for {cfg.dataset.name}")

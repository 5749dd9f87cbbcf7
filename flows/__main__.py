"""Run a flow in-process (Prefect's local API; no server to start).

    python -m flows full [--config FILE] [--dataset D] [--preset P] [--video-root DIR] [--artifacts ROOT] [--set k=v ...]
                         [--stages a,b] [--input STAGE=VERSION ...] [--task-runner local|dask|ray] [--dask-address HOST:PORT]
    python -m flows demo [--config FILE] [--artifacts ROOT] [--set k=v ...]

`make full` and `make demo` call this. A typer app, like the `fsar` CLI, with its options and error
guard (`pipeline.cli_common`): settings are preset < run file (`--config`, else ./fsar.yaml) < options, and
a run that fails on bad input is one `error:` line and exit code 2.
"""

from __future__ import annotations

import os
import sys
from enum import Enum
from typing import Annotated

import typer

from pipeline.cli_common import (
    APP_SETTINGS,
    ArtifactsOpt,
    ConfigOpt,
    DatasetOpt,
    InputOpt,
    PresetOpt,
    QuietOpt,
    SetOpt,
    VerboseOpt,
    VideoListOpt,
    VideoRootOpt,
    guarded,
    show_logs,
    echo,
)

__all__ = ["app", "main"]

app = typer.Typer(name="python -m flows", help="Run the fsar flow (full) or the offline demo in-process.", **APP_SETTINGS)


@app.callback()
def _options(quiet: QuietOpt = False, verbose: VerboseOpt = False) -> None:
    """How much of fsar's log to print (inside a flow run the lines go to the run's logger, and so to the Prefect UI)."""
    show_logs(quiet, verbose, prefect=True)


class TaskRunner(str, Enum):
    local = "local"
    dask = "dask"
    ray = "ray"


def _run_file(config: str | None) -> str | None:
    """The run file the flow reads (checked here, so a wrong path is one line before Prefect starts)."""
    # start-up: imported by the command that uses it
    from pipeline.runfile import find_run_file

    path = find_run_file(config)
    if path is not None:
        echo(f"[fsar] settings from run file {path}", err=True)
    return str(path) if path is not None else None


def _prepare(overrides: list[str] | None) -> list[str]:
    """Secrets out of the overrides (Prefect stores flow parameters), Prefect's ephemeral-API settings."""
    # start-up: imported by the command that uses it
    from pipeline.secrets import stash_overrides

    # The ephemeral Prefect API starts a local server; its 20 s default time-out is too short on small machines.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    return stash_overrides(list(overrides or []))


def _stash(value: str | None) -> str | None:
    """A path or URL flow parameter with any secret masked (the real value waits in this process, `_prepare`)."""
    # start-up: imported by the command that uses it
    from pipeline.secrets import stash_overrides

    return stash_overrides([value])[0] if value else value


@app.command()
def full(
    dataset: DatasetOpt = None,
    preset: PresetOpt = None,
    video_root: VideoRootOpt = None,
    video_list: VideoListOpt = None,
    artifacts: ArtifactsOpt = None,
    set_: SetOpt = None,
    stages: Annotated[str | None, typer.Option("--stages", help="comma-separated subset of the stages")] = None,
    task_runner: Annotated[TaskRunner, typer.Option("--task-runner", help="where the frames units run")] = TaskRunner.local,
    dask_address: Annotated[str | None, typer.Option("--dask-address", help="scheduler of an existing Dask cluster")] = None,
    input_: InputOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Every stage in order as one Prefect flow run; prints each stage's version."""

    def go() -> None:
        run_file = _run_file(config)
        overrides = _prepare(set_)
        # start-up: imported by the command that uses it
        from flows.fsar import fsar

        versions = fsar(
            dataset=dataset,
            preset=preset,
            video_root=_stash(os.path.abspath(video_root) if video_root else None),
            video_list=_stash(os.path.abspath(video_list) if video_list else None),
            artifacts=_stash(artifacts),
            overrides=overrides,
            stages=stages.split(",") if stages else None,
            task_runner=task_runner.value,
            dask_address=dask_address,
            inputs=list(input_ or []),
            config=run_file,
        )
        for stage, version in versions.items():
            echo(f"{stage}: {version}")

    guarded(go)


@app.command()
def demo(artifacts: ArtifactsOpt = None, set_: SetOpt = None, config: ConfigOpt = None) -> None:
    """The offline demo flow (synthetic data, the demo preset; a run file gives its artifact root and --set options)."""

    def go() -> None:
        run_file = _run_file(config)
        overrides = _prepare(set_)
        # start-up: imported by the command that uses it
        from flows.demo import demo as run_demo

        run_demo(artifacts=_stash(artifacts), overrides=overrides, config=run_file)

    guarded(go)


def main(argv: list[str] | None = None) -> int:
    """Run the app on `argv` (default: sys.argv[1:]); the exit code."""
    try:
        app(args=argv, prog_name="python -m flows")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run a flow in-process (Prefect's local API; no server to start).

    python -m flows full --dataset D [--preset P] [--video-root DIR] [--artifacts ROOT] [--set k=v ...] [--stages a,b]
                         [--input STAGE=VERSION ...] [--task-runner local|dask|ray] [--dask-address HOST:PORT]
    python -m flows demo [--artifacts ROOT] [--set k=v ...]

`make full` and `make demo` call this. A typer app, like the `fsar` CLI.
"""

from __future__ import annotations

import os
import sys
from enum import Enum
from typing import Annotated

import typer

from pipeline.cli import APP_SETTINGS

__all__ = ["app", "main"]

app = typer.Typer(name="python -m flows", help="Run the fsar flow (full) or the offline demo in-process.", **APP_SETTINGS)

SetOpt = Annotated[list[str] | None, typer.Option("--set", help="config override key=value (repeatable)")]
ArtifactsOpt = Annotated[str | None, typer.Option("--artifacts", help="artifact root: a local folder or file:// URL")]


class TaskRunner(str, Enum):
    local = "local"
    dask = "dask"
    ray = "ray"


def _prepare(overrides: list[str] | None) -> list[str]:
    """Secrets out of the overrides (Prefect stores flow parameters), Prefect's ephemeral-API settings."""
    from pipeline.secrets import stash_overrides

    # The ephemeral Prefect API starts a local server; its 20 s default time-out is too short on small machines.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    return stash_overrides(list(overrides or []))


@app.command()
def full(
    dataset: Annotated[str, typer.Option("--dataset", help="dataset name")] = "synthetic",
    preset: Annotated[str | None, typer.Option("--preset", help="preset name or YAML path")] = None,
    video_root: Annotated[str | None, typer.Option("--video-root", help="folder holding the dataset's videos")] = None,
    video_list: Annotated[str | None, typer.Option("--video-list", help="custom dataset: CSV with path,label,split")] = None,
    artifacts: ArtifactsOpt = None,
    set_: SetOpt = None,
    stages: Annotated[str | None, typer.Option("--stages", help="comma-separated subset of the stages")] = None,
    task_runner: Annotated[TaskRunner, typer.Option("--task-runner", help="where the frames units run")] = TaskRunner.local,
    dask_address: Annotated[str | None, typer.Option("--dask-address", help="scheduler of an existing Dask cluster")] = None,
    input_: Annotated[list[str] | None, typer.Option("--input", help="pin an upstream artifact: STAGE=VERSION (repeatable)")] = None,
) -> None:
    """Every stage in order as one Prefect flow run; prints each stage's version."""
    overrides = _prepare(set_)
    from flows.fsar import fsar

    versions = fsar(
        dataset=dataset,
        preset=preset,
        video_root=os.path.abspath(video_root) if video_root else None,
        video_list=os.path.abspath(video_list) if video_list else None,
        artifacts=artifacts,
        overrides=overrides,
        stages=stages.split(",") if stages else None,
        task_runner=task_runner.value,
        dask_address=dask_address,
        inputs=list(input_ or []),
    )
    for stage, version in versions.items():
        typer.echo(f"{stage}: {version}")


@app.command()
def demo(artifacts: ArtifactsOpt = None, set_: SetOpt = None) -> None:
    """The offline demo flow (synthetic data, the demo preset)."""
    overrides = _prepare(set_)
    from flows.demo import demo as run_demo

    run_demo(artifacts=artifacts, overrides=overrides)


def main(argv: list[str] | None = None) -> int:
    """Run the app on `argv` (default: sys.argv[1:]); the exit code."""
    try:
        app(args=argv, prog_name="python -m flows")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

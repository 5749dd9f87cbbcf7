"""Run a flow in-process (Prefect's local API; no server to start).

    python -m flows full --dataset D [--preset P] [--video-root DIR] [--artifacts ROOT] [--set k=v ...] [--stages a,b]
    python -m flows demo [--artifacts ROOT] [--set k=v ...]

`make full` and `make demo` call this.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows", description="Run the fsar flow (full) or the offline demo in-process.")
    parser.add_argument("flow", choices=["full", "demo"])
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--preset", default=None)
    parser.add_argument("--video-root", default=None)
    parser.add_argument("--video-list", default=None)
    parser.add_argument("--artifacts", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    parser.add_argument("--stages", default=None, help="comma-separated subset of the stages")
    parser.add_argument("--task-runner", default="local", choices=["local", "dask", "ray"])
    parser.add_argument("--dask-address", default=None)
    parser.add_argument("--input", dest="inputs", action="append", default=[], help="pin an upstream artifact: STAGE=VERSION")
    args = parser.parse_args(argv)
    from pipeline.secrets import stash_overrides

    args.overrides = stash_overrides(args.overrides)  # Prefect stores flow parameters: never a secret among them
    # The ephemeral Prefect API starts a local server; its 20 s default time-out is too short on small machines.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if args.flow == "demo":
        from flows.demo import demo

        demo(artifacts=args.artifacts, overrides=args.overrides)
        return 0
    from flows.fsar import fsar

    versions = fsar(
        dataset=args.dataset,
        preset=args.preset,
        video_root=os.path.abspath(args.video_root) if args.video_root else None,
        video_list=os.path.abspath(args.video_list) if args.video_list else None,
        artifacts=args.artifacts,
        overrides=args.overrides,
        stages=args.stages.split(",") if args.stages else None,
        task_runner=args.task_runner,
        dask_address=args.dask_address,
        inputs=args.inputs,
    )
    for stage, version in versions.items():
        print(f"{stage}: {version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

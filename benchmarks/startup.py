"""Benchmark of start-up (not a test): where `fsar predict` and `fsar export` spend their wall time.

    python benchmarks/startup.py [--clip fsar-tiny] [--image-size 64] [--repeats 3] [--out DIR] [--keep]

Builds a demo-like run in a temporary artifact root (the synthetic dataset, the demo preset with its
tiny CLIP, a seeded random backbone *file* as the demo's backbone stage writes, script descriptions, two
training episodes), then measures in one run, each command in a fresh process from a warm disk cache:

- `fsar export` and `fsar predict --model BUNDLE --support DIR --query ONE_CLIP` (only --model: the
  bundle holds its backbone file): the wall time of the whole process, the median of `--repeats` runs;
- where it goes: `python -X importtime` (the slowest top-level imports, cumulative) and a cProfile of
  the command in-process (the functions with the most cumulative time), plus the bare interpreter and
  `import torch` as the floor.

Target (issue 22): `fsar predict` of one clip with the demo bundle <= 4 s wall on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TINY_TRAIN = [
    "descriptions.backend=file", "train.epochs=1", "train.episodes_per_epoch=2", "train.val_episodes=2",
    "train.warmup_epochs=0", "frames.workers=1", "train.device=cpu",
]  # fmt: skip


def build(root: Path, clip: str, image_size: int) -> tuple[Path, Path, list[str], list[str]]:
    """(bundle, support dir, one query clip, the export command's arguments) of a demo-like trained run."""
    import torch

    from pipeline.artifacts import ArtifactStore
    from pipeline.datasets.synthetic import generate
    from pipeline.model import load_backbone
    from pipeline.predict import export_bundle
    from pipeline.runfile import build_config
    from pipeline.registry import PIPELINE, run_stage

    videos = generate(root / "videos", 3, seed=0, num_frames=24, size=64)
    torch.manual_seed(0)
    backbone = root / "open_clip.pt"
    torch.save(load_backbone(clip, None, image_size).clip.state_dict(), backbone)
    sets = [*TINY_TRAIN, f"descriptions.corpus={videos / 'scripts.yaml'}", f"model.clip={clip}", f"model.image_size={image_size}",
            f"model.pretrained={backbone}"]  # fmt: skip
    cfg = build_config("synthetic", "demo", sets, str(root / "artifacts"), str(videos))
    store = ArtifactStore(cfg.artifacts)
    for spec in PIPELINE:
        if spec.name in ("descriptions", "frames", "embeddings", "train"):
            run_stage(spec.name, cfg)
    bundle = export_bundle(cfg, store, root / "bundle")
    support = root / "support"
    test = sorted({p.parent.name for p in (videos).glob("*/*.mp4")})
    chosen = [c for c in test if c.replace("_", " ") in {n for n in _test_classes(cfg)}][:5]
    for cls in chosen:
        (support / cls).mkdir(parents=True)
        clip_file = sorted((videos / cls).glob("*.mp4"))[0]
        os.symlink(clip_file, support / cls / clip_file.name)
    query = [str(sorted((videos / chosen[0]).glob("*.mp4"))[-1])]
    export_args = ["export", "--dataset", "synthetic", "--preset", "demo", "--artifacts", str(store.root), "--video-root", str(videos),
                   *[a for s in sets for a in ("--set", s)], "--out", str(root / "bundle-again")]  # fmt: skip
    return bundle, support, query, export_args


def _test_classes(cfg) -> list[str]:
    from pipeline.datasets import get_dataset

    return get_dataset(cfg.dataset).classes("test")


def wall(cmd: list[str], env: dict[str, str], cwd: Path) -> float:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return seconds


def import_times(args: list[str], env: dict[str, str], cwd: Path, top: int) -> list[tuple[float, str]]:
    """The slowest imports of a command (cumulative seconds, module), from `python -X importtime`."""
    code = "import sys; from pipeline.cli import app; sys.argv = ['fsar', *sys.argv[1:]]; app()"
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", code, *args], env=env, cwd=cwd, capture_output=True, text=True)
    rows = []
    for line in out.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if m and len(m.group(2)) <= 2:  # top-level (and first nested) imports
            rows.append((int(m.group(1)) / 1e6, m.group(3)))
    return sorted(rows, reverse=True)[:top]


def profile(args: list[str], top: int) -> str:
    """cProfile of the command in this process (imports already loaded by `build`: the work itself)."""
    from typer.main import get_command

    from pipeline.cli import app

    prof = cProfile.Profile()
    prof.enable()
    try:
        get_command(app).main(args=args, prog_name="fsar", standalone_mode=False)
    finally:
        prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(top)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clip", default="fsar-tiny")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="fsar-startup-"))
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    elsewhere = root / "elsewhere"  # predict from another folder: only --model
    elsewhere.mkdir(exist_ok=True)
    try:
        bundle, support, query, export_args = build(root, args.clip, args.image_size)
        fsar = [sys.executable, "-m", "pipeline.cli"]
        predict_args = ["predict", "--model", str(bundle), "--support", str(support), "--query", *query, "--device", "cpu"]
        floor = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "python -c 'import torch'": [sys.executable, "-c", "import torch"],
            "fsar --help": [*fsar, "--help"],
        }
        commands = {**floor, "fsar export": [*fsar, *export_args], "fsar predict (1 clip)": [*fsar, *predict_args]}
        for cmd in commands.values():  # warm the disk cache
            wall(cmd, env, elsewhere)
        times: dict[str, list[float]] = {k: [] for k in commands}
        for _ in range(args.repeats):  # alternate the commands within each round
            for name, cmd in commands.items():
                times[name].append(wall(cmd, env, elsewhere))
        load = os.getloadavg()
        print(f"# start-up, {args.clip} at {args.image_size} px, {os.cpu_count()} CPUs, load {load[0]:.2f} {load[1]:.2f}; "
              f"median of {args.repeats} runs, wall seconds (whole process)")
        for name, ts in times.items():
            print(f"{name:<28} {statistics.median(ts):6.2f} s   (runs: {', '.join(f'{t:.2f}' for t in ts)})")
        for name, cmd_args in (("fsar predict", predict_args), ("fsar export", export_args)):
            print(f"\n## {name}: slowest imports (cumulative s)")
            for seconds, module in import_times(cmd_args, env, elsewhere, args.top):
                print(f"  {seconds:6.3f}  {module}")
            print(f"\n## {name}: cProfile after imports (cumulative)")
            os.chdir(elsewhere)
            print(profile(cmd_args, args.top))
    finally:
        if not args.keep and args.out is None:
            shutil.rmtree(root, ignore_errors=True)
        elif args.keep:
            print(f"work folder kept: {root}")


if __name__ == "__main__":
    main()

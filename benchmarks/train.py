"""The train stage's loop against its bare step, on the same episodes. Not a test.

    python benchmarks/train.py                          # CPU, the demo config (fsar-tiny, random weights): about a minute on 2 cores
    python benchmarks/train.py --device cuda --artifacts /tmp/fsar-gpu/art --video-root /tmp/fsar-gpu/videos \\
        --set model.clip=ViT-B-16 --set model.image_size=224 ... --episodes 200 --options    # benchmarks/gpu.sh

Builds (or reuses, under --artifacts) the synthetic videos, the frames, descriptions (the scripts, `file` backend)
and embeddings artifacts of the `demo` preset with the --set overrides, then runs, alternating, `--rounds` times:

- loop: `Trainer.fit` over --episodes training episodes: episodes prepared by the data workers while the step
  runs, loss/accuracy read every `train.log_every`, resumable checkpoints every `train.checkpoint_every`, the
  TensorBoard file and progress lines (validation is off: `train.warmup_epochs` = `train.epochs`, so both sides
  run the same steps); timed from the first step to the last (`loop_seconds`), start-up and the final files not;
- step only: the same episodes loaded onto the device beforehand (untimed), then only `Trainer.train_step`
  (forward, backward, optimiser), one read of the losses at the end.

Both start from the same weights and optimiser state, so their losses must be equal: bit for bit on the CPU,
within --tolerance (relative) on CUDA, where some kernels (attention backward) are not deterministic.
On CUDA it also prints the peak memory of one step (growth of allocated memory over weights and inputs, as
benchmarks/model.py measures it). With --options it then times the step alone per speed option (CUDA graphs,
E=4 batched episodes per step, torch.compile) after checking each one's loss and gradients against the plain
step in fp32, and prints which one to use (`recommend: --set ...`).

Ends with `loop_ratio=<loop episodes/s / step-only episodes/s> agree=<true|false>`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import load_config  # noqa: E402
from pipeline.fewshot.loader import Prefetcher, train_rng  # noqa: E402
from pipeline.registry import run_stage  # noqa: E402
from pipeline.train.trainer import Trainer, make_optimizer  # noqa: E402

MIB = 2**20


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", default=None, help="artifact root to build in or reuse (default: a temporary folder)")
    p.add_argument("--video-root", default=None, help="synthetic videos (default: written under the artifact root)")
    p.add_argument("--videos-per-class", type=int, default=8, help="synthetic videos per class when they are written")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="config override KEY=VALUE (repeatable)")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--episodes", type=int, default=30, help="training episodes per side and round")
    p.add_argument("--rounds", type=int, default=2, help="loop and step-only runs, alternating")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--tolerance", type=float, default=None, help="relative loss tolerance of `agree` (default 0 on CPU, 1e-2 on CUDA)")
    p.add_argument("--options", action="store_true", help="also time the step per speed option (CUDA)")
    p.add_argument("--option-steps", type=int, default=20, help="timed steps per option")
    p.add_argument("--no-compile", action="store_true", help="with --options: leave torch.compile out (its compile time)")
    p.add_argument("--options-only", action="store_true", help="only the speed options (no loop/step comparison, no loop_ratio line)")
    p.add_argument("--only", action="append", default=None, help="with --options-only: just these options (plain is always timed)")
    return p.parse_args()


def _config(args: argparse.Namespace, root: Path, videos: Path):
    overrides = [
        f"artifacts={root}", f"dataset.video_root={videos}", "descriptions.backend=file", f"descriptions.corpus={videos / 'scripts.yaml'}",
        "model.pretrained=null", f"train.device={args.device}", f"evaluate.device={args.device}", "frames.decoder=pyav",
        *args.overrides,
        "train.epochs=1", f"train.episodes_per_epoch={args.episodes}", "train.warmup_epochs=1",  # no validation: both sides run the same steps
    ]
    return load_config("demo", overrides=overrides)


def _inputs(cfg, videos: Path, per_class: int) -> dict:
    if not (videos / "synthetic.csv").is_file():
        from pipeline.datasets.synthetic import generate

        t0 = time.perf_counter()
        generate(videos, per_class, seed=0, num_frames=24, size=64)
        print(f"synthetic videos written to {videos} in {time.perf_counter() - t0:.1f} s", flush=True)
    refs = {}
    for stage in ("frames", "descriptions", "embeddings"):
        t0 = time.perf_counter()
        refs[stage] = run_stage(stage, cfg)
        print(f"{stage}: {refs[stage]} ({'reused' if refs[stage].skipped else f'built in {time.perf_counter() - t0:.1f} s'})", flush=True)
    return refs


class Start:
    """The trainer's initial weights and optimiser state, to start every run from."""

    def __init__(self, trainer: Trainer):
        self.weights = {k: v.clone() for k, v in trainer.model.trainable_state_dict().items()}
        self.optimizer = {"state": {}, "param_groups": [dict(g) for g in trainer.optimizer.state_dict()["param_groups"]]}

    def restore(self, trainer: Trainer, out: Path) -> None:
        trainer.model.load_trainable_state_dict(self.weights)
        trainer.optimizer = make_optimizer(trainer.cfg, trainer.params)
        trainer.state = {"step": 0, "best": None, "metrics": [], "validation": [], "seconds": 0.0}
        trainer.out = out
        out.mkdir(parents=True, exist_ok=True)
        trainer.monitor = None
        for q in trainer.params:
            q.grad = None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _loop(trainer: Trainer, start: Start, out: Path) -> tuple[float, list[float]]:
    start.restore(trainer, out)
    trainer.fit(None)
    return trainer.state["loop_seconds"], [m["loss"] for m in trainer.state["metrics"]]


def _load_all(trainer: Trainer, steps: int | None = None) -> list[list]:
    """Every step's episode batches on the device (the data workers' batches: the synchronous loader's, tested)."""
    steps = trainer.total_steps if steps is None else steps
    E = trainer.cfg.train.episodes_per_step
    with Prefetcher(trainer.host_episode, [i for s in range(steps) for i in trainer.episode_indices(s)], trainer.workers, trainer.device) as it:
        flat = list(it)
    return [flat[s * E : (s + 1) * E] for s in range(steps)]


def _steps(trainer: Trainer, start: Start, out: Path, batches: list[list]) -> tuple[float, list[float]]:
    start.restore(trainer, out)
    _sync(trainer.device)
    t0 = time.perf_counter()
    stats = [trainer.train_step(b) for b in batches]
    values = torch.stack(stats).cpu()  # the one read (and synchronisation) of the run
    seconds = time.perf_counter() - t0
    return seconds, [trainer._metrics_of(v)["loss"] for v in values]


def _step_peak_mib(trainer: Trainer, batches: list) -> float:
    """CUDA allocated-memory growth of one step over the weights and its loaded inputs (benchmarks/model.py's measure)."""
    for q in trainer.params:
        q.grad = None
    _sync(trainer.device)
    base = torch.cuda.memory_allocated(trainer.device)
    torch.cuda.reset_peak_memory_stats(trainer.device)
    trainer.train_step(batches)
    _sync(trainer.device)
    return (torch.cuda.max_memory_allocated(trainer.device) - base) / MIB


def _agree(a: list[float], b: list[float], tol: float) -> tuple[bool, float]:
    x, y = np.asarray(a), np.asarray(b)
    if x.shape != y.shape:
        return False, float("inf")
    diff = float(np.max(np.abs(x - y) / np.maximum(np.abs(y), 1e-12))) if len(x) else 0.0
    return (diff <= tol) if tol > 0 else bool(np.array_equal(x, y)), diff


def main() -> None:
    args = _parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="fsar-benchmark-train-") as tmp:
        root = Path(args.artifacts or Path(tmp) / "artifacts").resolve()
        videos = Path(args.video_root or root.parent / f"{root.name}-videos").resolve()
        cfg = _config(args, root, videos)
        refs = _inputs(cfg, videos, args.videos_per_class)
        run(args, cfg, refs, Path(tmp))


def run(args: argparse.Namespace, cfg, refs: dict, tmp: Path) -> None:
    t0 = time.perf_counter()
    torch.manual_seed(cfg.train.seed)
    trainer = Trainer(cfg, refs, tmp / "warm")
    device = trainer.device
    tol = args.tolerance if args.tolerance is not None else (0.0 if device.type == "cpu" else 1e-2)
    m, p = cfg.model, cfg.protocol
    precision = "bf16 autocast" if m.amp and device.type == "cuda" else "fp32"
    print(f"{m.clip} ({'random weights' if m.pretrained is None else m.pretrained}) at {m.image_size} px on {device} ({precision}, "
          f"{torch.get_num_threads()} CPU threads), M={m.vision_adapted_layers}, M_t={m.text_adapted_layers}, {p.way}-way {p.shot}-shot, "
          f"{p.query} query per class, T={p.num_frames}; frames {cfg.frames.storage_size} px ({cfg.frames.storage_format}); "
          f"{cfg.train.optimizer}, {cfg.train.episodes_per_step} episode(s) per step, {trainer.workers} data worker(s); "
          f"trainer built in {time.perf_counter() - t0:.1f} s", flush=True)
    start = Start(trainer)
    if args.options_only:
        _options(trainer, start, cfg, refs, args, tmp)
        return
    for s in range(min(2, trainer.total_steps)):  # warm-up (kernels, allocator, open files), then back to the start
        trainer.step(s)
    _sync(device)
    batches = _load_all(trainer)
    episodes = trainer.total_steps * trainer.per_step
    loop_s, step_s, agree, worst = 0.0, 0.0, True, 0.0
    for r in range(args.rounds):
        s_seconds, s_losses = _steps(trainer, start, tmp / f"steps{r}", batches)
        l_seconds, l_losses = _loop(trainer, start, tmp / f"loop{r}")
        ok, diff = _agree(l_losses, s_losses, tol)
        agree, worst = agree and ok, max(worst, diff)
        step_s, loop_s = step_s + s_seconds, loop_s + l_seconds
        print(f"round {r + 1}: step only {episodes} episodes in {s_seconds:.2f} s = {episodes / s_seconds:.2f} episodes/s; "
              f"loop {l_seconds:.2f} s = {episodes / l_seconds:.2f} episodes/s; losses equal: {ok} (max relative difference {diff:.1e})",
              flush=True)
    if device.type == "cuda":
        start.restore(trainer, tmp / "peak")
        print(f"train step peak memory (CUDA allocated growth over weights and inputs): {_step_peak_mib(trainer, batches[0]):.0f} MiB", flush=True)
    ratio = step_s / loop_s
    print(f"loop {args.rounds * episodes / loop_s:.2f} episodes/s, step only {args.rounds * episodes / step_s:.2f} episodes/s "
          f"(sums over {args.rounds} rounds of {episodes} episodes); losses of loop and step agree: {agree} "
          f"(tolerance {'exact' if tol == 0 else f'{tol:g} relative'}, largest difference {worst:.1e}); "
          f"uptime load {' '.join(f'{x:.2f}' for x in _load())}", flush=True)
    if args.options:
        _options(trainer, start, cfg, refs, args, tmp)
    print(f"loop_ratio={ratio:.3f} agree={str(agree).lower()}")


def _load() -> tuple[float, ...]:
    try:
        import os

        return os.getloadavg()
    except OSError:
        return ()


# ---- speed options (CUDA) ---------------------------------------------------------------------------------------

def _options(trainer: Trainer, start: Start, cfg, refs: dict, args: argparse.Namespace, tmp: Path) -> None:
    """Step time per speed option (same episodes; E=4 counted per episode) after an fp32 check against the plain step;
    the step's peak memory is the allocated growth over the warm-up steps (a CUDA graph keeps what its capture took)."""
    options = [("plain", ()), ("cuda_graphs", ("train.cuda_graphs=true",)), ("E4", ("train.episodes_per_step=4",)),
               ("E4+cuda_graphs", ("train.episodes_per_step=4", "train.cuda_graphs=true"))]
    if not args.no_compile:
        options.append(("compile", ("train.compile=true",)))
    if trainer.device.type != "cuda":
        options = [o for o in options if "cuda_graphs" not in o[0]]
    if args.only:
        options = [o for o in options if o[0] == "plain" or o[0] in args.only]
    rates: dict[str, float] = {}
    for name, extra in options:
        t0 = time.perf_counter()
        try:
            check = _check_option(trainer, start, cfg, extra, tmp / f"check-{name}") if extra and "train.episodes_per_step=4" not in extra else None
            rate, peak = _time_option(trainer, start, cfg, extra, args.option_steps, tmp / f"time-{name}")
        except Exception as exc:  # noqa: BLE001 - one option failing must not hide the others' numbers
            print(f"option {name}: failed ({type(exc).__name__}: {' '.join(str(exc).split())[:300]})", flush=True)
            continue
        rates[name] = rate
        agreed = "" if check is None else f"; fp32 check vs plain: max relative loss difference {check[0]:.1e}, gradients {check[1]:.1e}"
        memory = f", step peak {peak:.0f} MiB" if trainer.device.type == "cuda" else ""
        print(f"option {name}: {rate:.2f} episodes/s in the step alone ({rate / rates.get('plain', rate):.2f}x plain){memory}{agreed} "
              f"({time.perf_counter() - t0:.0f} s with set-up)", flush=True)
    same_semantics = {k: v for k, v in rates.items() if not k.startswith("E4")}  # E=4 changes the optimiser's steps
    if same_semantics:
        best = max(same_semantics, key=same_semantics.get)
        flags = {"plain": "", "cuda_graphs": "--set train.cuda_graphs=true", "compile": "--set train.compile=true"}[best]
        print(f"fastest step with the paper's one episode per step: {best}", flush=True)
        print(f"recommend: {flags}".rstrip(), flush=True)


def _time_option(trainer: Trainer, start: Start, cfg, extra: tuple[str, ...], steps: int, out: Path) -> tuple[float, float]:
    option_cfg = cfg.override(*extra)
    start.restore(trainer, out)
    trainer.cfg = option_cfg
    trainer._setup_speed_options()
    try:
        E = option_cfg.train.episodes_per_step
        batches = _load_all(trainer, steps + 3)
        peak = 0.0
        if trainer.device.type == "cuda":  # over the warm-up: a CUDA graph's memory is taken when it is captured
            _sync(trainer.device)
            base = torch.cuda.memory_allocated(trainer.device)
            torch.cuda.reset_peak_memory_stats(trainer.device)
        for b in batches[:3]:  # warm-up: kernels, capture, compilation
            trainer.train_step(b)
        _sync(trainer.device)
        if trainer.device.type == "cuda":
            peak = (torch.cuda.max_memory_allocated(trainer.device) - base) / MIB
        t0 = time.perf_counter()
        for b in batches[3:]:
            trainer.train_step(b)
        _sync(trainer.device)
        return steps * E / (time.perf_counter() - t0), peak
    finally:
        trainer.cfg = cfg
        trainer._setup_speed_options()


def _check_option(trainer: Trainer, start: Start, cfg, extra: tuple[str, ...], out: Path) -> tuple[float, float]:
    """Largest relative difference of the loss and of any gradient between the option and the plain step, in fp32
    (TF32 off), on the same weights and episodes."""
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    model_cfg = trainer.model.cfg
    results = []
    try:
        for options in ((), extra):
            run_cfg = cfg.override("model.amp=false", *options)
            start.restore(trainer, out)
            trainer.cfg, trainer.model.cfg = run_cfg, run_cfg.model
            trainer._setup_speed_options()
            step = trainer.optimizer.step
            trainer.optimizer.step = lambda *a, **k: None  # keep the weights: both steps see the same ones
            for s in range(2):  # a CUDA graph captures at the first step and replays at the second: compare that one
                stats = trainer.train_step([trainer.loader.batch(trainer.sampler.episode(i), "train", train_rng(cfg.train.seed, i))
                                            for i in trainer.episode_indices(s)])
            trainer.optimizer.step = step
            results.append((float(stats[0]), {n: q.grad.clone() for n, q in trainer.model.named_parameters() if q.grad is not None}))
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        trainer.cfg, trainer.model.cfg = cfg, model_cfg
        trainer._setup_speed_options()
    (la, ga), (lb, gb) = results
    loss = abs(la - lb) / max(abs(la), 1e-12)
    grad = max(float((ga[k] - gb[k]).abs().max()) / max(float(ga[k].abs().max()), 1e-12) for k in ga)
    return loss, grad


if __name__ == "__main__":
    main()

"""What each defect of the released code is worth, on the demo world: one set of saved test episodes, each variant
trained and evaluated its own way. Not a test; the numbers are in docs/method.md ("What each defect is worth").

    python benchmarks/defects.py --artifacts ROOT                  # ROOT: a `make demo` root (its backbone, frames,
                                                                   # script descriptions and embeddings are reused)
    python benchmarks/defects.py --artifacts ROOT --val-every 10   # also defect 2 with a validation every 10 episodes

The config is the demo's for the `script` corpus (flows/demo.py: the demo preset, the dataset's true scripts, the
pre-trained tiny backbone), so the `fsar` variant is the demo's own train and evaluate artifacts. Variants:

| variant | overrides | defect |
|---|---|---|
| fsar | - | - |
| fsar, queries shuffled | evaluate.query_order=shuffled (the same checkpoint) | 1 (fsar's scores must not care) |
| released scores | model.scores=released (trained so; evaluate scores both query orders) | 1 |
| picked on test | train.val_split=test | 2 |
| inductive | model.task_context=inductive | 9 |
| fp16 cosines | fsar's checkpoint; the final cosines and their product in fp16 as released (patched in here) | 10 |

Each row: accuracy +- 1.96 std / sqrt(episodes); the paired difference from fsar on the same episodes (mean of the
per-episode differences +- 1.96 std / sqrt(episodes)); the share of queries whose predicted class differs from fsar's
(matched by video, whatever the query order); and the training step of the checkpoint scored.

Every train and evaluate artifact goes to ROOT (versioned: a second run reuses them). The fp16 row is computed here,
not stored. Ends with one line `defects: <variant>=<accuracy>/<difference> ...` (percent).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flows.demo import CORPORA  # noqa: E402
from pipeline import pretrain  # noqa: E402
from pipeline.artifacts import ArtifactRef, ArtifactStore  # noqa: E402
from pipeline.config import Config, load_config  # noqa: E402
from pipeline.fewshot.checkpoints import checkpoint_path, load_checkpoint  # noqa: E402
from pipeline.fewshot.episodes import Episode, episodes_from_frame  # noqa: E402
from pipeline.fewshot.prepare import prepare  # noqa: E402
from pipeline.fewshot.scoring import EpisodeScorer, score_episodes  # noqa: E402
import pipeline.model.model as model_module  # noqa: E402
from pipeline.registry import run_stage  # noqa: E402

FULL = "task_adapter_pp"


@dataclass
class Variant:
    name: str
    overrides: list[str]
    defect: str
    rows: pd.DataFrame | None = None  # evaluate rows of the full model (one per episode and method)
    step: int | None = None  # training step of the checkpoint scored


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", required=True, help="artifact root of a `make demo` run (reused; new variants are built in it)")
    p.add_argument("--video-root", default=None, help="the demo's synthetic videos (default: ROOT/synthetic-videos)")
    p.add_argument("--val-every", type=int, default=None, help="also defect 2 with train.val_every=N for the val and the test pick")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p.parse_args()


def demo_config(root: Path, videos: Path) -> Config:
    """The demo's config for the `script` corpus (flows/demo.py), on CPU, with its pre-trained backbone."""
    corpus = [o.format(video_root=videos) for o in CORPORA["script"]]
    base = load_config("demo", overrides=[f"artifacts={root}", f"dataset.video_root={videos}", "train.device=cpu",
                                          "evaluate.device=cpu", "backbone.device=cpu"])
    backbone = pretrain.run(base, {}, ArtifactStore(base.artifacts))  # reused: the demo built it
    return base.override(f"model.clip={base.backbone.clip}", f"model.pretrained={pretrain.checkpoint_path(backbone)}", *corpus,
                         "evaluate.descriptions_label=script")


def build(cfg: Config, store: ArtifactStore) -> tuple[ArtifactRef, ArtifactRef]:
    """Train (or reuse) and evaluate (or reuse) one variant; prints what it reused or built."""
    refs = {}
    for stage in ("train", "evaluate"):
        t0 = time.perf_counter()
        refs[stage] = run_stage(stage, cfg, store=store)
        print(f"  {stage}: {refs[stage]} ({'reused' if refs[stage].skipped else f'built in {time.perf_counter() - t0:.0f} s'})", flush=True)
    return refs["train"], refs["evaluate"]


@contextlib.contextmanager
def fp16_cosines(model: torch.nn.Module) -> Iterator[None]:
    """The released code's precision of the final scores (defect 10): unit vectors cast to fp16 before each cosine, the
    semantic mean and the vis x sem product in fp16; every tower runs as usual (fp32 on CPU)."""

    def visual(query: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        q = F.normalize(query.mean(dim=2), dim=-1).half()  # (B, Q, E)
        p = F.normalize(prototypes.mean(dim=2), dim=-1).half()  # (B, N, E)
        return q @ p.transpose(1, 2)  # (B, Q, N) fp16

    def semantic(transitions: torch.Tensor, text: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        u = F.normalize(transitions, dim=-1).half()  # (B, Q, T-1, E)
        t = F.normalize(text, dim=-1).half()  # (B, N, S, E)
        cos = torch.einsum("bqte,bnse->bqtns", u, t)  # (B, Q, T-1, N, S) fp16
        return torch.einsum("bqtns,ts->bqn", cos, weights.half()) / weights.shape[1]  # (B, Q, N) fp16

    def logits(vis: torch.Tensor, sem: torch.Tensor) -> torch.Tensor:
        return model.cfg.logit_scale * (vis * sem).float()  # the product rounded to fp16, as the released scores

    saved = model_module.batched_visual_scores, model_module.batched_semantic_scores
    model_module.batched_visual_scores, model_module.batched_semantic_scores = visual, semantic
    model.logits = logits
    try:
        yield
    finally:
        model_module.batched_visual_scores, model_module.batched_semantic_scores = saved
        del model.logits


def fp16_rows(cfg: Config, store: ArtifactStore, episodes: list[Episode]) -> tuple[pd.DataFrame, int | None]:
    """fsar's checkpoint scored on the saved episodes with fp16 cosines (evaluation only: training is fsar's)."""
    device = torch.device("cpu")
    inputs = {s: run_stage(s, cfg, store=store) for s in ("frames", "embeddings", "train")}
    model, loader, _ = prepare(cfg, inputs, device)
    ckpt = load_checkpoint(checkpoint_path(cfg, inputs))
    model.load_trainable_state_dict(ckpt["trainable"])
    model.eval()
    scorer = EpisodeScorer(model, loader, cache=True, amp=False)
    t0 = time.perf_counter()
    with fp16_cosines(model):
        rows = pd.DataFrame(score_episodes(scorer, episodes, baselines=False, desc="fp16 cosines"))
    print(f"  fp16 cosines: {len(episodes)} episodes scored in {time.perf_counter() - t0:.0f} s", flush=True)
    return rows, ckpt.get("step")


def predicted_by_video(rows: pd.DataFrame, episodes: dict[int, Episode], order: str) -> dict[tuple[int, str], str]:
    """{(episode, query video): predicted class} of rows scored with the queries in `order`."""
    out = {}
    for r in rows.itertuples(index=False):
        ep = episodes[r.episode].with_query_order(order)
        out.update({(r.episode, v): ep.classes[p] for v, p in zip(ep.query, r.predictions, strict=True)})
    return out


def interval(values: np.ndarray) -> tuple[float, float]:
    return float(values.mean()), float(1.96 * values.std() / math.sqrt(len(values)))


def table(variants: list[Variant], episodes: dict[int, Episode]) -> tuple[str, list[str]]:
    base = variants[0].rows
    base_acc = base[base["method"] == FULL].set_index("episode")["accuracy"]
    base_pred = predicted_by_video(base[base["method"] == FULL], episodes, "by_class")
    lines = ["| variant | defect | overrides | accuracy (%) | vs fsar, same episodes (points) | queries predicted otherwise (%) | checkpoint step |",
             "|---|---|---|---|---|---|---|"]
    short = []
    for v in variants:
        for method, part in v.rows.groupby("method", sort=False):
            order = _order(v, method)
            acc = part.set_index("episode")["accuracy"]
            mean, ci = interval(acc.to_numpy())
            diff, dci = interval((acc - base_acc.loc[acc.index]).to_numpy())
            pred = predicted_by_video(part, episodes, order)
            changed = np.mean([pred[k] != base_pred[k] for k in pred])
            several = v.rows["method"].nunique() > 1  # released scores: both query orders
            name = f"{v.name}, queries {order.replace('_', ' ')}" if several else v.name
            over = ", ".join(f"`{o}`" for o in v.overrides) or "-"
            lines.append(f"| {name} | {v.defect} | {over} | {100 * mean:.2f} +- {100 * ci:.2f} | {100 * diff:+.2f} +- {100 * dci:.2f} "
                         f"| {100 * changed:.1f} | {v.step} |")
            short.append(f"{name.replace(' ', '_').replace(',', '')}={100 * mean:.2f}/{100 * diff:+.2f}")
    return "\n".join(lines), short


def _order(v: Variant, method: str) -> str:
    if method != FULL:
        return method.rsplit("_queries_", 1)[1]
    return next((o.split("=", 1)[1] for o in v.overrides if o.startswith("evaluate.query_order=")), "by_class")


def main() -> None:
    args = _parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(args.artifacts).resolve()
    cfg = demo_config(root, Path(args.video_root or root / "synthetic-videos").resolve())
    store = ArtifactStore(cfg.artifacts)
    variants = [
        Variant("fsar", [], "-"),
        Variant("fsar, queries shuffled", ["evaluate.query_order=shuffled"], "1"),
        Variant("released scores", ["model.scores=released"], "1"),
        Variant("picked on test", ["train.val_split=test"], "2"),
        Variant("inductive", ["model.task_context=inductive"], "9"),
    ]
    if args.val_every:
        every = f"train.val_every={args.val_every}"
        variants += [Variant(f"fsar, validated every {args.val_every}", [every], "2"),
                     Variant(f"picked on test, validated every {args.val_every}", [every, "train.val_split=test"], "2")]
    saved = None
    for v in variants:
        print(f"{v.name}: {' '.join(v.overrides) or '(the demo config)'}", flush=True)
        tr, ev = build(cfg.override(*v.overrides), store)
        rows = store.load("evaluate", ev.dataset, ev.version)
        v.rows = rows[rows["method"].str.startswith(FULL)]
        v.step = (store.manifest(tr).get("summary", {}).get("best") or {}).get("step")
        listed = episodes_from_frame(store.load("evaluate", ev.dataset, ev.version, table="episode_list.parquet"))
        if saved is not None and listed != saved:
            raise SystemExit(f"error: {v.name} was evaluated on other episodes than fsar; keep evaluate.seed/episodes/split equal")
        saved = listed
    print("fp16 cosines: fsar's checkpoint, final cosines in fp16", flush=True)
    fp16, step = fp16_rows(cfg, store, saved)
    variants.append(Variant("fp16 cosines", [], "10", fp16, step))
    text, short = table(variants, {ep.index: ep for ep in saved})
    print()
    print(f"{len(saved)} saved test episodes (evaluate seed {cfg.evaluate.seed}), script corpus, demo preset; intervals 1.96 std / sqrt(episodes)")
    print(text)
    print("defects: " + " ".join(short))


if __name__ == "__main__":
    main()

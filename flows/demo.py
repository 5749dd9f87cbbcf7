"""Prefect flow `fsar-demo`: the whole pipeline offline, on CPU, on the bundled synthetic dataset.

1. writes the synthetic order-sensitive videos (deterministic; kept across runs),
2. pre-trains the tiny CLIP on captioned synthetic frames (`backbone` stage),
3. for each description corpus (the dataset's true scripts, and the local LLM's), runs
   descriptions -> frames -> embeddings -> train -> evaluate with that backbone,
4. publishes one evaluate artifact with every corpus's rows (the latest `evaluate` of `synthetic`) and
   prints one table: full model, visual-only, semantic-only and the frozen prototype baseline on the
   same saved held-out episodes, with 95% intervals and order-pair accuracy.

Every step is a versioned artifact, so a second `make demo` skips what exists.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.fsar import ALL_STAGES, run_stages
from pipeline.artifacts import ArtifactRef, ArtifactStore
from pipeline.cli import build_config
from pipeline.config import Config

__all__ = ["demo", "CORPORA"]

# corpus label -> config overrides (the video folder is filled in at run time)
CORPORA: dict[str, list[str]] = {
    "script": ["descriptions.backend=file", "descriptions.corpus={video_root}/scripts.yaml"],
    "llm": ["descriptions.backend=local"],
}


@task(name="synthetic-videos", cache_policy=NO_CACHE, log_prints=True)
def synthetic_videos(cfg: Config, out: str) -> str:
    from pipeline.datasets.synthetic import generate

    d = cfg.dataset
    root = generate(out, d.synthetic_videos_per_class, seed=d.synthetic_seed, num_frames=d.synthetic_frames,
                    size=d.synthetic_size, num_sub_actions=cfg.protocol.num_sub_actions)
    print(f"[fsar] synthetic videos in {root}")
    return str(root)


@task(name="backbone", retries=0, cache_policy=NO_CACHE, log_prints=True)
def backbone(cfg: Config) -> ArtifactRef:
    from pipeline.backbone import run

    return run(cfg, {}, ArtifactStore(cfg.artifacts))


@task(name="combine-evaluations", cache_policy=NO_CACHE, log_prints=True)
def combined(store: ArtifactStore, evaluations: dict[str, ArtifactRef]) -> ArtifactRef:
    """One evaluate artifact with every corpus's rows, so `artifacts.load("evaluate", "synthetic")` shows them all."""
    from pipeline.training.evaluate import combine

    return combine(store, evaluations, "fsar demo: held-out synthetic classes, every description corpus")


@flow(name="fsar-demo", log_prints=True)
def demo(artifacts: str | None = None, corpora: list[str] | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """The offline demo; returns the evaluation summaries by corpus."""
    logger = get_run_logger()
    base = build_config("synthetic", "demo", list(overrides or []), artifacts)
    store = ArtifactStore(base.artifacts)
    video_root = synthetic_videos(base, str(Path(store.root) / "synthetic-videos"))
    base = base.override(f"dataset.video_root={video_root}")
    bb = backbone(base)
    from pipeline.backbone import checkpoint_path

    base = base.override(f"model.clip={base.backbone.clip}", f"model.pretrained={checkpoint_path(bb)}")
    summaries: dict[str, Any] = {}
    refs_by_corpus: dict[str, dict[str, ArtifactRef]] = {}
    for corpus in corpora or list(CORPORA):
        cfg = base.override(*[o.format(video_root=video_root) for o in CORPORA[corpus]], f"evaluate.descriptions_label={corpus}")
        refs = run_stages(cfg, ALL_STAGES)
        refs_by_corpus[corpus] = refs
        summaries[corpus] = json.loads((store.local_path(refs["evaluate"]) / "summary.json").read_text())
    both = combined(store, {c: r["evaluate"] for c, r in refs_by_corpus.items()})
    text = demo_table(summaries, base)
    print(text)
    print(f"[fsar] report (every corpus): {store.local_path(both) / 'report.md'}")
    for corpus, refs in refs_by_corpus.items():
        print(f"[fsar] {corpus}: report {store.local_path(refs['evaluate']) / 'report.md'}")
    print(f"[fsar] artifacts under {store.root}; list them with: python -c \"from pipeline import artifacts; "
          f"print(artifacts.catalog('{store.root}'))\"")
    create_markdown_artifact(markdown=text, key="fsar-demo", description="fsar demo results")
    logger.info("demo finished")
    return summaries


def demo_table(summaries: dict[str, Any], cfg: Config) -> str:
    """One Markdown table over corpora and methods."""
    from pipeline.training.report import METHOD_LABELS

    any_summary = next(iter(summaries.values()))
    lines = [
        f"## fsar demo: held-out synthetic classes, {any_summary['way']}-way {any_summary['shot']}-shot, "
        f"{any_summary['episodes']} saved episodes (same episodes for every row)",
        "",
        "| descriptions | method | accuracy (%) | 95% interval | order pairs (%) |",
        "|---|---|---|---|---|",
    ]
    for corpus, summary in summaries.items():
        for r in summary["results"]:
            op = r.get("order_pairs")
            pair = f"{100 * op['accuracy']:.1f} +- {100 * op['ci95']:.1f}" if op else ""
            lines.append(f"| {corpus} | {METHOD_LABELS.get(r['method'], r['method'])} | {100 * r['mean']:.1f} | +- {100 * r['ci95']:.1f} | {pair} |")
    lines += [
        "",
        "order pairs: how often the true class outscores the class that differs from it only in temporal order (chance 50%).",
        f"Training departs from the paper for a CPU budget: {cfg.train.optimizer}, lr {cfg.train.lr}, "
        f"{cfg.train.epochs} x {cfg.train.episodes_per_epoch} episodes (the paper: SGD, lr 1e-3, 10 x 1000).",
    ]
    return "\n".join(lines)

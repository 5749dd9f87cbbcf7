"""Prefect flow `fsar-demo`: the whole pipeline offline, on CPU, on the bundled synthetic dataset.

1. writes the synthetic order-sensitive videos (deterministic; kept across runs),
2. pre-trains the tiny CLIP on captioned synthetic frames (`backbone` stage),
3. for each description corpus (the dataset's true scripts, and the local LLM's), runs
   descriptions -> frames -> audit -> embeddings -> train -> evaluate with that backbone, and once more with
   `descriptions.choose=videos` (the candidates and orders the audit found the videos to support most),
4. publishes one evaluate artifact with every corpus's rows (the latest `evaluate` of `synthetic`), prints
   each corpus's audit and one table: full model, visual-only, semantic-only, the frozen prototype baseline and
   the variants (descriptions chosen by the supports; choose=videos) on the same saved held-out episodes, with
   95% intervals and order-pair accuracy.

Every step is a versioned artifact, so a second `make demo` skips what exists.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from prefect.states import Failed, State

from flows.fsar import ALL_STAGES, run_stages
from flows.stage_artifacts import publish_stage_artifact
from pipeline import pretrain
from pipeline.artifacts import ArtifactRef, ArtifactStore
from pipeline.audit.report import summary_lines
from pipeline.cli_common import one_line
from pipeline.config import Config
from pipeline.datasets import get_dataset
from pipeline.datasets.synthetic import generate
from pipeline.errors import FsarError
from pipeline.evaluate.combine import combine
from pipeline.evaluate.report import METHOD_LABELS
from pipeline.logs import install
from pipeline.predict.bundle import export_bundle
from pipeline.predict.cli import predict_videos
from pipeline.runfile import build_config, find_run_file
from pipeline.secrets import restore_overrides

log = logging.getLogger("fsar")

__all__ = ["demo", "CORPORA"]

# corpus label -> config overrides (the video folder is filled in at run time)
CORPORA: dict[str, list[str]] = {
    "script": ["descriptions.backend=file", "descriptions.corpus={video_root}/scripts.yaml"],
    "llm": ["descriptions.backend=local", "descriptions.exemplars=dataset", "descriptions.candidates=3"],  # TRAIN classes' scripts as examples
}
# Method variants beyond the paper (docs/audit.md), on the same saved episodes: every corpus's evaluation also scores the
# descriptions its supports fit best (`by_support` rows); and each corpus is trained and evaluated once more with the
# candidate and order the audit found its train/val classes' videos to support most (label "<corpus>, choose=videos"),
# with and without the supports' choice at test (the two variants together).
EVALUATE_VARIANTS = ["evaluate.choose_by_support=true"]
VIDEO_CHOICE = ("choose=videos", ["descriptions.choose=videos", "evaluate.baselines=false", *EVALUATE_VARIANTS])


@task(name="synthetic-videos", cache_policy=NO_CACHE, log_prints=True)
def synthetic_videos(cfg: Config, out: str) -> str:
    d = cfg.dataset
    root = generate(out, d.synthetic_videos_per_class, seed=d.synthetic_seed, num_frames=d.synthetic_frames,
                    size=d.synthetic_size, num_sub_actions=cfg.protocol.num_sub_actions)
    log.info(f"synthetic videos in {root}")
    return str(root)


@task(name="backbone", retries=0, cache_policy=NO_CACHE, log_prints=True)
def backbone(cfg: Config) -> ArtifactRef:
    return pretrain.run(cfg, {}, ArtifactStore(cfg.artifacts))


@task(name="combine-evaluations", cache_policy=NO_CACHE, log_prints=True)
def combined(store: ArtifactStore, evaluations: dict[str, ArtifactRef]) -> ArtifactRef:
    """One evaluate artifact with every corpus's rows, so `artifacts.load("evaluate", "synthetic")` shows them all."""
    ref = combine(store, evaluations, "fsar demo: held-out synthetic classes, every description corpus")
    publish_stage_artifact("evaluate", ref)
    return ref


@flow(name="fsar-demo", log_prints=True)
def demo(artifacts: str | None = None, corpora: list[str] | None = None, overrides: list[str] | None = None,
         config: str | None = None) -> dict[str, Any] | State:
    """The offline demo; returns the evaluation summaries by corpus (a run file, `config` or ./fsar.yaml, may give
    the artifact root and `set:` options; the dataset, preset and video folder are the demo's own)."""
    install(None, prefect=True)  # fsar's lines go to this run's logger
    try:
        return _demo(artifacts, corpora, overrides, config)
    except FsarError as exc:
        get_run_logger().error("%s", one_line(exc))
        return Failed(message=one_line(exc))


def _demo(artifacts: str | None, corpora: list[str] | None, overrides: list[str] | None, config: str | None) -> dict[str, Any]:
    logger = get_run_logger()
    artifacts = restore_overrides([artifacts])[0] if artifacts else artifacts  # stashed like the full flow's (flows/__main__.py)
    base = build_config("synthetic", "demo", restore_overrides(overrides or []), artifacts, run_file=find_run_file(config), strict=True)
    store = ArtifactStore(base.artifacts)
    video_root = synthetic_videos(base, str(Path(store.root) / "synthetic-videos"))
    base = base.override(f"dataset.video_root={video_root}")
    bb = backbone(base)
    base = base.override(f"model.clip={base.backbone.clip}", f"model.pretrained={pretrain.checkpoint_path(bb)}")
    summaries: dict[str, Any] = {}
    refs_by_corpus: dict[str, dict[str, ArtifactRef]] = {}
    audits: dict[str, list[str]] = {}
    for corpus in corpora or list(CORPORA):
        overrides = [o.format(video_root=video_root) for o in CORPORA[corpus]]
        runs = {corpus: [*overrides, *EVALUATE_VARIANTS], f"{corpus}, {VIDEO_CHOICE[0]}": [*overrides, *VIDEO_CHOICE[1]]}
        for label, extra in runs.items():
            refs = run_stages(base.override(*extra, f"evaluate.descriptions_label={label}"), ALL_STAGES)
            refs_by_corpus[label] = refs
            summaries[label] = json.loads((store.local_path(refs["evaluate"]) / "summary.json").read_text())
            audits[label] = audit_lines(store, refs["audit"])
    both = combined(store, {c: r["evaluate"] for c, r in refs_by_corpus.items()})
    for label, lines in audits.items():
        log.info(f"audit of the {label} descriptions (frozen backbone, before training; {store.local_path(refs_by_corpus[label]['audit'])}/report.md):\n"
                 + "\n".join(f"  {line}" for line in lines), extra={"bare": True})
    text = demo_table(summaries, base)
    log.info(text, extra={"bare": True})
    log.info(f"report (every corpus): {store.local_path(both) / 'report.md'}")
    for corpus, refs in refs_by_corpus.items():
        log.info(f"{corpus}: report {store.local_path(refs['evaluate']) / 'report.md'}")
    log.info(f"artifacts under {store.root}; list them with: python -c \"from pipeline import artifacts; "
             f"print(artifacts.catalog('{store.root}'))\"")
    use_trained_model(base, store, video_root, refs_by_corpus)  # ROOT/bundles/demo + `fsar predict` on held-out clips
    create_markdown_artifact(markdown=text, key="fsar-demo", description="fsar demo results")
    logger.info("demo finished")
    return summaries


def audit_lines(store: ArtifactStore, ref: ArtifactRef) -> list[str]:
    """The audit's summary lines (one per audited split), from its manifest."""
    return summary_lines(store.manifest(ref).get("summary", {}))


def demo_table(summaries: dict[str, Any], cfg: Config) -> str:
    """One Markdown table over corpora and methods."""
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
        "Variants beyond the paper (docs/audit.md): \"descriptions chosen by the supports\": per episode and class, the candidate and "
        "order the class's labelled support clips fit best under the frozen towers; \"<corpus>, choose=videos\": trained and "
        "evaluated with the candidate and order the audit found the train/val classes' videos to support most (test classes keep "
        "the rule's choice).",
        f"Training departs from the paper for a CPU budget: {cfg.train.optimizer}, lr {cfg.train.lr}, "
        f"{cfg.train.epochs} x {cfg.train.episodes_per_epoch} episodes (the paper: SGD, lr 1e-3, 10 x 1000).",
    ]
    return "\n".join(lines)


# ---- use the trained model: export its bundle, classify held-out synthetic clips with `fsar predict` ----------------

PREDICT_SHOTS = 3  # support clips per test class (from the dataset's test videos)
PREDICT_QUERIES = 6  # new clips per test class, from another seed: never seen by any stage


@task(name="use-trained-model", cache_policy=NO_CACHE, log_prints=True)
def use_trained_model(base: Config, store: ArtifactStore, video_root: str, refs_by_corpus: dict[str, dict[str, ArtifactRef]]) -> dict[str, Any]:
    """Export the best corpus's model to ROOT/bundles/demo and run `fsar predict` on held-out clips of the test classes."""
    corpus = "script" if "script" in refs_by_corpus else next(iter(refs_by_corpus))
    return predict_demo(base, store, video_root, refs_by_corpus[corpus]["train"], corpus)


def predict_demo(base: Config, store: ArtifactStore, video_root: str, train: ArtifactRef, corpus: str = "script") -> dict[str, Any]:
    """The demo's last step (a plain function, so tests call it on a small root): bundle, support, queries, predict."""
    cfg = base.override(*[o.format(video_root=video_root) for o in CORPORA[corpus]])
    root = Path(store.root)
    bundle = export_bundle(cfg, store, root / "bundles" / "demo", train=train)
    support, queries, truth = _demo_clips(cfg, Path(video_root), root / "predict-demo")
    log.info(f"model bundle of the {corpus} run: {bundle}")
    t0 = time.perf_counter()
    df = predict_videos(bundle, support, [str(q) for q in queries], root / "predict-demo" / "predictions.csv",
                        device="cpu", artifacts=str(root))  # the bundle holds its (small) backbone file
    seconds = time.perf_counter() - t0
    right = sum(p == truth[Path(q).parent.name] for q, p in zip(df["query"], df["prediction"]))
    log.info(f"predict on {len(df)} held-out clips of the {len(queries)} test classes ({PREDICT_SHOTS} support clips each): "
             f"{right}/{len(df)} correct ({100 * right / max(len(df), 1):.1f}%), {seconds / max(len(df), 1):.3f} s per query with "
             f"loading and support encoding")
    query_args = " ".join(f"'{q}'" for q in queries)
    log.info("the same from the command line:\n"
             f"  fsar predict --model {bundle} --support {support} --query {query_args} "
             f"--out predictions.csv")
    return {"bundle": str(bundle), "queries": len(df), "correct": int(right), "seconds": seconds}


def _demo_clips(cfg: Config, video_root: Path, out: Path) -> tuple[Path, list[Path], dict[str, str]]:
    """support/<class>/ (copies of test videos), held-out/<class slug>/ (new clips), {slug: class}."""
    spec = get_dataset(cfg.dataset)
    test = spec.classes("test")
    by_class: dict[str, list[str]] = {}
    for v in spec.videos("test"):
        by_class.setdefault(v.class_name, []).append(v.path)
    support = out / "support"
    for cls in test:
        (support / cls).mkdir(parents=True, exist_ok=True)
        for path in sorted(by_class[cls])[:PREDICT_SHOTS]:
            shutil.copyfile(path, support / cls / Path(path).name)
    d = cfg.dataset
    held = generate(out / "held-out", PREDICT_QUERIES, seed=d.synthetic_seed + 1, num_frames=d.synthetic_frames, size=d.synthetic_size,
                    num_sub_actions=cfg.protocol.num_sub_actions, classes=test)
    slugs = {cls.replace(" ", "_"): cls for cls in test}
    return support, [held / slug for slug in slugs], slugs

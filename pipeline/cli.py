"""`fsar <stage> --dataset NAME [--preset NAME] [--set key=value ...] [--artifacts ROOT]`.

The Makefile calls this. Every stage command builds a Config and runs the stage through the registry
(`pipeline.stages`) on exactly the upstream versions that config implies (`fsar plan` shows them;
`--input STAGE=VERSION` pins one). `fsar verify` checks whole artifacts against their manifests.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.config import Config, ConfigError, list_presets, load_config, parse_overrides
from pipeline.errors import FsarError, os_error_message
from pipeline.stage import StageError
from pipeline.stages import STAGES, parse_pins, plan, resolve_inputs, run_stage

__all__ = ["APP_SETTINGS", "app", "build_config", "flag_overrides", "run_stage"]

APP_SETTINGS: dict[str, Any] = {"no_args_is_help": True, "add_completion": False, "pretty_exceptions_enable": False}  # fsar and `python -m flows`
app = typer.Typer(name="fsar", help="Few-shot action recognition with Task-Adapter++: one command per pipeline stage.", **APP_SETTINGS)

DatasetOpt = Annotated[str, typer.Option("--dataset", "-d", help="dataset name (see `fsar datasets`)")]
PresetOpt = Annotated[
    str | None, typer.Option("--preset", "-p", help="preset in pipeline/configs/ (`fsar presets`; default: the dataset's own, if any) or a YAML path")
]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="config override key=value (repeatable)")]
ArtifactsOpt = Annotated[str | None, typer.Option("--artifacts", help="artifact root: a local folder or file:// URL")]
InputOpt = Annotated[
    list[str] | None, typer.Option("--input", help="pin an upstream artifact: STAGE=VERSION (repeatable; default: what the config implies)")
]
VideoRootOpt = Annotated[str | None, typer.Option("--video-root", help="folder holding the dataset's videos")]
VideoListOpt = Annotated[str | None, typer.Option("--video-list", help="custom dataset: CSV with path,label,split")]


def build_config(
    dataset: str | None,
    preset: str | None = None,
    overrides: list[str] | None = None,
    artifacts: str | None = None,
    video_root: str | None = None,
    video_list: str | None = None,
) -> Config:
    """Preset (default: the dataset's own preset if one exists, else the demo for `synthetic`, else defaults) + overrides.

    A flag and a `--set` for the same key must agree (a one-line error otherwise, never a silent winner).
    """
    if preset is None and dataset is not None:
        preset = dataset if dataset in list_presets() else ("demo" if dataset == "synthetic" else None)
    sets: dict[str, Any] = {}
    if dataset is not None:
        sets["dataset.name"] = dataset
    if video_root is not None:
        sets["dataset.video_root"] = str(Path(video_root).expanduser().resolve())
    if video_list is not None:
        sets["dataset.video_list"] = str(Path(video_list).expanduser().resolve())
    if artifacts is not None:
        sets["artifacts"] = artifacts
    flags = dict(sets)
    plain = []  # --set items; `flag:key=value` items are a command flag's value (see `flag_overrides`)
    for item in overrides or []:
        if item.startswith(_FLAG):
            flags.update(parse_overrides([item[len(_FLAG):]]))
        else:
            plain.append(item)
    given = parse_overrides(plain)
    for key, value in flags.items():
        if key in given and not _same(given[key], value):
            raise ConfigError(f"the command's flag gives {key}={value!r} but --set gives {key}={given[key]!r}; give one of them")
    cfg = load_config(preset, overrides=sets).override({k: v for k, v in flags.items() if k not in sets}, *plain)
    from pipeline.datasets import DatasetError, list_datasets

    if cfg.dataset.name not in list_datasets():
        raise DatasetError(f"unknown dataset {cfg.dataset.name!r}; choose one of {', '.join(list_datasets())}")
    return cfg


_FLAG = "flag:"


def flag_overrides(pairs: Any) -> list[str]:
    """Overrides that come from a command's own flags ((key, value) pairs; None values are skipped), marked so
    `build_config` can tell them from `--set` items and refuse a disagreement."""
    return [f"{_FLAG}{k}={v}" for k, v in pairs if v is not None]


def _same(a: Any, b: Any) -> bool:
    return a == b or str(a) == str(b)


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _guarded(fn: Callable[[], Any]) -> Any:
    """Run a command body; any FsarError (bad input, broken artifact) or OSError (no space, permission denied,
    a read-only disk, ...) is one line on stderr and exit 2."""
    try:
        return fn()
    except FsarError as exc:
        _fail(exc)
    except OSError as exc:
        _fail(FsarError(os_error_message(exc)))


def _run(name: str, cfg: Config, inputs: list[str] | None) -> Any:
    """Run stage `name` through the registry with `--input` pins; prints and returns its reference."""
    ref = run_stage(name, cfg, pins=parse_pins(inputs))
    typer.echo(f"{name}: {ref}")
    return ref


def _stage_command(name: str, help_text: str) -> None:
    def command(
        dataset: DatasetOpt,
        preset: PresetOpt = None,
        set_: SetOpt = None,
        artifacts: ArtifactsOpt = None,
        video_root: VideoRootOpt = None,
        video_list: VideoListOpt = None,
        input_: InputOpt = None,
    ) -> None:
        def go() -> None:
            _run(name, build_config(dataset, preset, set_, artifacts, video_root, video_list), input_)

        _guarded(go)

    command.__doc__ = help_text
    app.command(name=name)(command)


_stage_command("frames", "Decode videos into versioned Parquet shards of frames.")
_stage_command("embeddings", "Cache the frozen text-prefix states of every prompt.")
_stage_command("prefix", "Store the frozen vision-prefix states of every video of the evaluated split (evaluate runs it too).")


@app.command("descriptions")
def descriptions_cmd(
    dataset: DatasetOpt,
    preset: PresetOpt = None,
    set_: SetOpt = None,
    artifacts: ArtifactsOpt = None,
    video_root: VideoRootOpt = None,
    video_list: VideoListOpt = None,
    llm: Annotated[str | None, typer.Option("--llm", help="backend: auto (default: openai if a key or base URL is set, else local) | openai | vllm | local | file")] = None,
    model: Annotated[str | None, typer.Option("--model", help="model name for the backend")] = None,
    base_url: Annotated[str | None, typer.Option("--base-url", help="OpenAI-compatible endpoint URL")] = None,
    corpus: Annotated[str | None, typer.Option("--corpus", help="file backend: YAML or JSON corpus")] = None,
) -> None:
    """Write ordered sub-action descriptions for every class with an LLM."""

    def go() -> None:
        extra = flag_overrides((f"descriptions.{k}", v) for k, v in (("backend", llm), ("model", model), ("base_url", base_url), ("corpus", corpus)))
        _run("descriptions", build_config(dataset, preset, [*extra, *(set_ or [])], artifacts, video_root, video_list), None)

    _guarded(go)


@app.command("train")
def train_cmd(
    dataset: DatasetOpt,
    preset: PresetOpt = None,
    set_: SetOpt = None,
    artifacts: ArtifactsOpt = None,
    video_root: VideoRootOpt = None,
    video_list: VideoListOpt = None,
    input_: InputOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue a killed run from its last checkpoint")] = False,
) -> None:
    """Train Task-Adapter++ adapters on episodes of the train split."""

    def go() -> None:
        extra = flag_overrides([("train.resume", True if resume else None)])
        _run("train", build_config(dataset, preset, [*extra, *(set_ or [])], artifacts, video_root, video_list), input_)

    _guarded(go)


@app.command("evaluate")
def evaluate_cmd(
    dataset: DatasetOpt,
    preset: PresetOpt = None,
    set_: SetOpt = None,
    artifacts: ArtifactsOpt = None,
    video_root: VideoRootOpt = None,
    video_list: VideoListOpt = None,
    input_: InputOpt = None,
    checkpoint: Annotated[
        str | None, typer.Option("--checkpoint", help="checkpoint file (default: best.pt of the train artifact this config implies)")
    ] = None,
    episodes: Annotated[int | None, typer.Option("--episodes", help="test episodes")] = None,
    shots: Annotated[int | None, typer.Option("--shots", help="K at test")] = None,
) -> None:
    """Evaluate on seeded few-shot episodes of the test split."""

    def go() -> None:
        checkpoint_file = str(Path(checkpoint).expanduser().resolve()) if checkpoint else None
        extra = flag_overrides((f"evaluate.{k}", v) for k, v in (("checkpoint", checkpoint_file), ("episodes", episodes), ("shot", shots)))
        cfg = build_config(dataset, preset, [*extra, *(set_ or [])], artifacts, video_root, video_list)
        pins = parse_pins(input_)
        if STAGES["prefix"].enabled(cfg) and "prefix" not in pins:  # the vision prefix it reads (skipped if it exists)
            ref = run_stage("prefix", cfg, resolve_inputs(cfg, "prefix", pins=pins, needed_by="evaluate"))
            typer.echo(f"prefix: {ref}")
        _run("evaluate", cfg, input_)

    _guarded(go)


@app.command("pretrain-backbone")
def pretrain_backbone_cmd(
    dataset: DatasetOpt = "synthetic",
    preset: PresetOpt = None,
    set_: SetOpt = None,
    artifacts: ArtifactsOpt = None,
) -> None:
    """Pre-train the demo's tiny CLIP on captioned synthetic frames (offline, a few CPU minutes)."""

    def go() -> None:
        from pipeline.artifacts import ArtifactStore
        from pipeline.backbone import checkpoint_path, run

        cfg = build_config(dataset, preset, set_, artifacts)
        ref = run(cfg, {}, ArtifactStore(cfg.artifacts))
        path = checkpoint_path(ref)
        typer.echo(f"pretrain-backbone: {ref}")
        typer.echo(f"checkpoint: {path}")
        typer.echo(f"use it with: --set model.clip={cfg.backbone.clip} --set model.pretrained={path}")

    _guarded(go)


@app.command("synthetic")
def synthetic_cmd(
    out: Annotated[Path, typer.Option("--out", help="folder to write the videos, synthetic.csv and scripts.yaml into")],
    videos_per_class: Annotated[int, typer.Option("--videos-per-class", min=1)] = 8,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    frames: Annotated[int, typer.Option("--frames", min=2, help="frames per video")] = 24,
    size: Annotated[int, typer.Option("--size", min=16, help="frame side in pixels")] = 64,
    sub_actions: Annotated[int, typer.Option("--sub-actions", min=1, help="sentences per class script")] = 3,
) -> None:
    """Write the synthetic order-sensitive dataset (mp4 files + split list + scripts)."""
    from pipeline.datasets.synthetic import generate

    root = generate(out, videos_per_class, seed=seed, num_frames=frames, size=size, num_sub_actions=sub_actions)
    typer.echo(f"synthetic dataset written to {root} (video list: {root / 'synthetic.csv'})")


@app.command("catalog")
def catalog_cmd(artifacts: ArtifactsOpt = None) -> None:
    """List every artifact (a broken one with its problem)."""
    from pipeline.artifacts import catalog

    df = _guarded(lambda: catalog(artifacts))
    typer.echo(df.to_string(index=False) if len(df) else "no artifacts")


@app.command("plan")
def plan_cmd(
    dataset: DatasetOpt,
    preset: PresetOpt = None,
    set_: SetOpt = None,
    artifacts: ArtifactsOpt = None,
    video_root: VideoRootOpt = None,
    video_list: VideoListOpt = None,
    input_: InputOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON list instead of a table")] = False,
) -> None:
    """Show the pipeline a config implies: each stage's version, its inputs' versions, and exists / build / blocked."""

    def go() -> None:
        cfg = build_config(dataset, preset, set_, artifacts, video_root, video_list)
        planned = plan(cfg, pins=parse_pins(input_))
        if as_json:
            typer.echo(json.dumps([p.to_dict() for p in planned], indent=2))
            return
        width = max(len(p.stage) for p in planned)
        for p in planned:
            ins = ", ".join(f"{k}={v}" for k, v in p.inputs.items()) or "-"
            note = f"  ({p.reason})" if p.reason else ""
            typer.echo(f"{p.stage:<{width}}  {p.version or '?':<12}  {p.status:<7}  inputs: {ins}{note}")

    _guarded(go)


@app.command("verify")
def verify_cmd(
    artifacts: ArtifactsOpt = None,
    stage: Annotated[str | None, typer.Option("--stage", help="only this stage")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", "-d", help="only this dataset")] = None,
) -> None:
    """Check every file of every artifact against its manifest (sha256, size); exit 2 when any is broken."""

    def go() -> None:
        from pipeline.artifacts import ArtifactStore

        store = ArtifactStore(artifacts)
        cat = store.catalog()
        if stage is not None:
            cat = cat[cat["stage"] == stage]
        if dataset is not None:
            cat = cat[cat["dataset"] == dataset]
        broken = 0
        for row in cat.itertuples(index=False):
            problems = store.problems(store.ref(row.stage, row.dataset, row.version), full=True)
            broken += bool(problems)
            typer.echo(f"{'BROKEN' if problems else 'ok':<6}  {row.stage}/{row.dataset}/{row.version}" + (f"  {'; '.join(problems)}" if problems else ""))
        typer.echo(f"{len(cat)} artifact(s) checked under {store.root}: {broken} broken")
        if broken:
            raise typer.Exit(2)

    _guarded(go)


@app.command("datasets")
def datasets_cmd() -> None:
    """List the registered datasets."""
    from pipeline.datasets import list_datasets

    typer.echo("\n".join(list_datasets()))


@app.command("presets")
def presets_cmd() -> None:
    """List the config presets."""
    typer.echo("\n".join(list_presets()))


@app.command("config")
def config_cmd(
    dataset: Annotated[str | None, typer.Option("--dataset", "-d")] = None,
    preset: PresetOpt = None,
    set_: SetOpt = None,
    artifacts: ArtifactsOpt = None,
) -> None:
    """Print the resolved config as JSON."""
    _guarded(lambda: typer.echo(json.dumps(build_config(dataset, preset, set_, artifacts).dump(), indent=2)))


@app.command("model-info")
def model_info_cmd(
    dataset: Annotated[str | None, typer.Option("--dataset", "-d", help="dataset name (its preset is the default)")] = None,
    preset: PresetOpt = None,
    clip: Annotated[str | None, typer.Option("--clip", help="open_clip model name (overrides model.clip)")] = None,
    no_pretrained: Annotated[bool, typer.Option("--no-pretrained", help="random weights: downloads nothing")] = False,
    set_: SetOpt = None,
) -> None:
    """Print the model's trainable/frozen parameter counts per part and its resolved config as JSON."""

    def go() -> None:
        from pipeline.model import BackboneError, model_info

        extra = flag_overrides([("model.clip", clip), ("model.pretrained", "null" if no_pretrained else None)])
        cfg = build_config(dataset, preset, [*extra, *(set_ or [])])
        try:
            typer.echo(json.dumps(model_info(cfg), indent=2))
        except (BackboneError, ValueError) as exc:
            _fail(exc)

    _guarded(go)


importlib.import_module("pipeline.predict.cli").register(app)  # `fsar export`, `fsar predict`


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())

"""`fsar <stage> [--config FILE] [--dataset NAME] [--preset NAME] [--set key=value ...] [--artifacts ROOT]`.

The Makefile calls this. Every stage command builds a Config (preset < run file < command line, see
`pipeline.runfile`; `fsar config` shows each value's origin) and runs the stage through the registry
(`pipeline.registry`) on exactly the upstream versions that config implies (`fsar plan` shows them;
`--input STAGE=VERSION` pins one). `fsar verify` checks whole artifacts against their manifests.
Options, config building and the error guard are shared with `pipeline.predict.cli` through
`pipeline.cli_common`; heavy modules (torch, pandas, the stages) load inside the commands that use them.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.cli_common import (
    APP_SETTINGS,
    ArtifactsOpt,
    ConfigOpt,
    DatasetOpt,
    InputOpt,
    PresetOpt,
    SetOpt,
    VideoListOpt,
    VideoRootOpt,
    QuietOpt,
    VerboseOpt,
    command_config,
    command_resolved,
    fail,
    guarded,
    show_logs,
    echo,
)
from pipeline.runfile import build_config, flag_overrides

__all__ = ["APP_SETTINGS", "app", "build_config", "flag_overrides", "run_stage"]

app = typer.Typer(
    name="fsar",
    help="Few-shot action recognition with Task-Adapter++: one command per pipeline stage. "
    "Settings: preset < run file (--config FILE, default ./fsar.yaml) < command line; `fsar config` shows where each came from.",
    **APP_SETTINGS,
)


@app.callback()
def _options(quiet: QuietOpt = False, verbose: VerboseOpt = False) -> None:
    """Options of every command: how much of fsar's log to print."""
    show_logs(quiet, verbose)


def run_stage(name: str, cfg: Any, inputs: Any = None, **kwargs: Any) -> Any:
    """`pipeline.registry.run_stage` (imported when a stage runs, not when the CLI starts)."""
    # start-up: imported by the command that uses it
    from pipeline.registry import run_stage as run

    return run(name, cfg, inputs, **kwargs)


def _run(name: str, cfg: Any, inputs: list[str] | None) -> Any:
    """Run stage `name` through the registry with `--input` pins (and the prerequisites the registry builds first);
    prints each artifact's reference and returns the stage's."""
    # start-up: imported by the command that uses it
    from pipeline.registry import parse_pins

    def built(stage: str, ref: Any) -> None:
        echo(f"{stage}: {ref}")

    ref = run_stage(name, cfg, pins=parse_pins(inputs), on_built=built)
    built(name, ref)
    return ref


def _stage_command(name: str, help_text: str) -> None:
    def command(
        dataset: DatasetOpt = None,
        preset: PresetOpt = None,
        set_: SetOpt = None,
        artifacts: ArtifactsOpt = None,
        video_root: VideoRootOpt = None,
        video_list: VideoListOpt = None,
        input_: InputOpt = None,
        config: ConfigOpt = None,
    ) -> None:
        def go() -> None:
            _run(name, command_config(dataset, preset, set_, artifacts, video_root, video_list, config), input_)

        guarded(go)

    command.__doc__ = help_text
    app.command(name=name)(command)


_stage_command("frames", "Decode videos into versioned Parquet shards of frames.")
_stage_command("audit", "Check each class's descriptions against its videos under the frozen backbone (before any training).")
_stage_command("embeddings", "Cache the frozen text-prefix states of every prompt.")
_stage_command("prefix", "Store the frozen vision-prefix states of every video of the evaluated split (evaluate runs it too).")


@app.command("descriptions")
def descriptions_cmd(
    dataset: DatasetOpt = None,
    preset: PresetOpt = None,
    set_: SetOpt = None,
    artifacts: ArtifactsOpt = None,
    video_root: VideoRootOpt = None,
    video_list: VideoListOpt = None,
    config: ConfigOpt = None,
    llm: Annotated[str | None, typer.Option("--llm", help="backend: auto (default: openai if a key or base URL is set, else local) | openai | vllm | local | file")] = None,
    model: Annotated[str | None, typer.Option("--model", help="model name for the backend")] = None,
    base_url: Annotated[str | None, typer.Option("--base-url", help="OpenAI-compatible endpoint URL")] = None,
    corpus: Annotated[str | None, typer.Option("--corpus", help="file backend: YAML or JSON corpus")] = None,
) -> None:
    """Write ordered sub-action descriptions for every class with an LLM."""

    def go() -> None:
        corpus_file = str(Path(corpus).expanduser().resolve()) if corpus else None
        extra = flag_overrides((f"descriptions.{k}", v) for k, v in (("backend", llm), ("model", model), ("base_url", base_url), ("corpus", corpus_file)))
        _run("descriptions", command_config(dataset, preset, [*extra, *(set_ or [])], artifacts, video_root, video_list, config), None)

    guarded(go)


@app.command("train")
def train_cmd(
    dataset: DatasetOpt = None,
    preset: PresetOpt = None,
    set_: SetOpt = None,
    artifacts: ArtifactsOpt = None,
    video_root: VideoRootOpt = None,
    video_list: VideoListOpt = None,
    input_: InputOpt = None,
    config: ConfigOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue a killed run from its last checkpoint")] = False,
) -> None:
    """Train Task-Adapter++ adapters on episodes of the train split."""

    def go() -> None:
        extra = flag_overrides([("train.resume", True if resume else None)])
        _run("train", command_config(dataset, preset, [*extra, *(set_ or [])], artifacts, video_root, video_list, config), input_)

    guarded(go)


@app.command("evaluate")
def evaluate_cmd(
    dataset: DatasetOpt = None,
    preset: PresetOpt = None,
    set_: SetOpt = None,
    artifacts: ArtifactsOpt = None,
    video_root: VideoRootOpt = None,
    video_list: VideoListOpt = None,
    input_: InputOpt = None,
    config: ConfigOpt = None,
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
        _run("evaluate", command_config(dataset, preset, [*extra, *(set_ or [])], artifacts, video_root, video_list, config), input_)

    guarded(go)


@app.command("pretrain-backbone")
def pretrain_backbone_cmd(
    dataset: DatasetOpt = None,
    preset: PresetOpt = None,
    set_: SetOpt = None,
    artifacts: ArtifactsOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Pre-train the demo's tiny CLIP on captioned synthetic frames (offline, a few CPU minutes; dataset default: synthetic)."""

    def go() -> None:
        # start-up: imported by the command that uses it
        from pipeline.artifacts import ArtifactStore
        from pipeline.pretrain import checkpoint_path, run
        from pipeline.runfile import find_run_file, read_run_file

        path = find_run_file(config)
        name = dataset if dataset is not None or (path is not None and "dataset.name" in read_run_file(path).values) else "synthetic"
        cfg = command_config(name, preset, set_, artifacts, config=config)
        ref = run(cfg, {}, ArtifactStore(cfg.artifacts))
        ckpt = checkpoint_path(ref)
        echo(f"pretrain-backbone: {ref}")
        echo(f"checkpoint: {ckpt}")
        echo(f"use it with: --set model.clip={cfg.backbone.clip} --set model.pretrained={ckpt}")

    guarded(go)


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
    # start-up: imported by the command that uses it
    from pipeline.datasets.synthetic import generate

    root = generate(out, videos_per_class, seed=seed, num_frames=frames, size=size, num_sub_actions=sub_actions)
    echo(f"synthetic dataset written to {root} (video list: {root / 'synthetic.csv'})")


@app.command("catalog")
def catalog_cmd(artifacts: ArtifactsOpt = None) -> None:
    """List every artifact (a broken one with its problem)."""
    # start-up: imported by the command that uses it
    from pipeline.artifacts import catalog

    df = guarded(lambda: catalog(artifacts))
    echo(df.to_string(index=False) if len(df) else "no artifacts")


@app.command("plan")
def plan_cmd(
    dataset: DatasetOpt = None,
    preset: PresetOpt = None,
    set_: SetOpt = None,
    artifacts: ArtifactsOpt = None,
    video_root: VideoRootOpt = None,
    video_list: VideoListOpt = None,
    input_: InputOpt = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON list instead of a table")] = False,
) -> None:
    """Show the pipeline a config implies: each stage's version, its inputs' versions, and exists / build / blocked."""

    def go() -> None:
        # start-up: imported by the command that uses it
        from pipeline.registry import parse_pins, plan

        cfg = command_config(dataset, preset, set_, artifacts, video_root, video_list, config)
        planned = plan(cfg, pins=parse_pins(input_))
        if as_json:
            echo(json.dumps([p.to_dict() for p in planned], indent=2))
            return
        width = max(len(p.stage) for p in planned)
        for p in planned:
            ins = ", ".join(f"{k}={v}" for k, v in p.inputs.items()) or "-"
            note = f"  ({p.reason})" if p.reason else ""
            echo(f"{p.stage:<{width}}  {p.version or '?':<12}  {p.status:<7}  inputs: {ins}{note}")

    guarded(go)


@app.command("verify")
def verify_cmd(
    artifacts: ArtifactsOpt = None,
    stage: Annotated[str | None, typer.Option("--stage", help="only this stage")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", "-d", help="only this dataset")] = None,
) -> None:
    """Check every file of every artifact against its manifest (sha256, size); exit 2 when any is broken."""

    def go() -> None:
        # start-up: imported by the command that uses it
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
            echo(f"{'BROKEN' if problems else 'ok':<6}  {row.stage}/{row.dataset}/{row.version}" + (f"  {'; '.join(problems)}" if problems else ""))
        echo(f"{len(cat)} artifact(s) checked under {store.root}: {broken} broken")
        if broken:
            raise typer.Exit(2)

    guarded(go)


@app.command("datasets")
def datasets_cmd() -> None:
    """List the registered datasets."""
    # start-up: imported by the command that uses it
    from pipeline.datasets import list_datasets

    echo("\n".join(list_datasets()))


@app.command("presets")
def presets_cmd() -> None:
    """List the config presets."""
    # start-up: imported by the command that uses it
    from pipeline.config import list_presets

    echo("\n".join(list_presets()))


@app.command("config")
def config_cmd(
    dataset: DatasetOpt = None,
    preset: PresetOpt = None,
    set_: SetOpt = None,
    artifacts: ArtifactsOpt = None,
    video_root: VideoRootOpt = None,
    video_list: VideoListOpt = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the resolved config as JSON (no origins)")] = False,
) -> None:
    """Print the resolved config, each value with where it came from: default < preset < run file < command line."""

    def go() -> None:
        resolved = command_resolved(dataset, preset, set_, artifacts, video_root, video_list, config, announce=False, require_dataset=False)
        if as_json:
            echo(json.dumps(resolved.config.dump(), indent=2))
            return
        echo(_config_listing(resolved))

    guarded(go)


def _config_listing(resolved: Any) -> str:
    """`key = value  # origin` for every field, under a header naming the preset and the run file."""
    # start-up: imported by the command that uses it
    from pipeline.runfile import RUN_FILE

    flat = _flat(resolved.config.dump())
    rf = resolved.run_file
    lines = [
        "# precedence, lowest first: default < preset < run file < command line (flags, --set, make variables)",
        f"# preset: {resolved.preset or 'none (field defaults)'}",
        f"# run file: {rf.path if rf else f'none (no --config, no {RUN_FILE} in the working folder)'}",
    ]
    width = min(max(len(f"{k} = {json.dumps(v)}") for k, v in flat.items()), 72)
    for key, value in flat.items():
        text = f"{key} = {json.dumps(value)}"
        lines.append(f"{text:<{width}}  # {resolved.origins.get(key, 'default')}")
    return "\n".join(lines)


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


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
        # start-up: imported by the command that uses it
        from pipeline.model import BackboneError, model_info

        extra = flag_overrides([("model.clip", clip), ("model.pretrained", "null" if no_pretrained else None)])
        cfg = build_config(dataset, preset, [*extra, *(set_ or [])], strict=True)
        try:
            echo(json.dumps(model_info(cfg), indent=2))
        except (BackboneError, ValueError) as exc:
            fail(exc)

    guarded(go)


importlib.import_module("pipeline.predict.cli").register(app)  # `fsar export`, `fsar predict`


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())

"""`fsar export` and `fsar predict` (registered on the main app by `register(app)`).

    fsar export --dataset synthetic --out bundles/demo          # or the run file's settings: fsar export --out bundles/demo
    fsar predict --model bundles/demo --support my_support/ --query q1.mp4 q2.mp4 --out predictions.csv

Options and the error guard come from `pipeline.cli_common` (this module never imports `pipeline.cli`);
pandas and the model load inside the commands.
"""

import time  # no `from __future__ import annotations`: typer reads the commands' annotations, defined inside register()
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pipeline.cli_common import ArtifactsOpt, ConfigOpt, DatasetOpt, PresetOpt, SetOpt, VideoListOpt, VideoRootOpt, command_config, echo, fail, guarded

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["format_table", "predict_videos", "register", "write_table"]

OUT_FORMATS = (".csv", ".parquet", ".pq")


def write_table(df: "pd.DataFrame", out: str | Path) -> Path:
    """The prediction table as CSV, or Parquet by extension."""
    path = Path(out).expanduser()
    _check_out(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False)
    return path


def _check_out(path: Path) -> None:
    # start-up: imported by the command that uses it
    from pipeline.contract import StageError

    if path.suffix.lower() not in OUT_FORMATS:
        raise StageError(f"--out {str(path)!r}: write .csv or .parquet (got {path.suffix or 'no extension'!r})")


def format_table(df: "pd.DataFrame", classes: Sequence[str]) -> str:
    """What `fsar predict` prints: query, prediction, vis x sem per class, the single-factor winners (and errors)."""
    import pandas as pd

    cols = ["query", "prediction", *[f"score:{c}" for c in classes], "visual_only", "semantic_only"]
    if df["error"].notna().any():
        cols.append("error")
    shown = df[cols].copy()
    for c in classes:
        shown[f"score:{c}"] = shown[f"score:{c}"].map(lambda v: "" if pd.isna(v) else f"{v:.4f}")
    return shown.fillna("").to_string(index=False)


def predict_videos(
    model: str | Path,
    support: str | Path,
    queries: Sequence[str],
    out: str | Path | None = None,
    descriptions: str | Path | None = None,
    backbone: str | Path | None = None,
    device: str = "auto",
    task_context: str = "inductive",
    batch_size: int = 16,
    overrides: Sequence[str] = (),
    artifacts: str | None = None,
    echo=print,
) -> "pd.DataFrame":
    """Everything `fsar predict` does, printing with `echo`; returns the table (bad queries carry an `error`)."""
    # start-up: imported by the command that uses it
    from pipeline.predict.bundle import describe_lineage
    from pipeline.predict.classifier import FewShotClassifier

    if out is not None:
        _check_out(Path(out))
    clf = FewShotClassifier.load(model, backbone=backbone, device=device, task_context=task_context, batch_size=batch_size, artifacts=artifacts)
    echo(f"[fsar] predict: bundle {model} ({describe_lineage(clf.bundle)}); {clf.device}, task context {task_context}")
    clf.fit(support, descriptions, overrides, artifacts)
    for note in clf.skipped:
        echo(f"[fsar] predict: support {note}")
    shots = sorted(set(clf.shots.values()))
    echo(f"[fsar] predict: {len(clf.classes)} classes, {'/'.join(map(str, shots))} support clip(s) per class")
    for cls in clf.classes:
        echo(f"[fsar] predict: descriptions of {cls!r}: {clf.texts[cls].source}")
    t0 = time.perf_counter()
    df = clf.predict(list(queries))
    seconds = time.perf_counter() - t0
    echo(format_table(df, clf.classes))
    echo(f"[fsar] predict: {len(df)} queries in {seconds:.2f} s ({seconds / max(len(df), 1):.3f} s per query)")
    if out is not None:
        echo(f"[fsar] predict: table written to {write_table(df, out)}")
    return df


def register(app: typer.Typer) -> None:
    """Add the `export` and `predict` commands to the fsar app."""
    @app.command("export")
    def export_cmd(
        out: Annotated[Path, typer.Option("--out", help="bundle folder to write (replaced when it is a bundle)")],
        dataset: DatasetOpt = None,
        preset: PresetOpt = None,
        set_: SetOpt = None,
        artifacts: ArtifactsOpt = None,
        video_root: VideoRootOpt = None,
        video_list: VideoListOpt = None,
        config: ConfigOpt = None,
        checkpoint: Annotated[str | None, typer.Option("--checkpoint", help="checkpoint file (default: best of the trained run)")] = None,
    ) -> None:
        """Write a self-contained model bundle of a trained run (trainable weights, config, backbone identity, preprocessing)."""

        def go() -> None:
            # start-up: imported by the command that uses it
            from pipeline.artifacts import ArtifactStore
            from pipeline.predict.bundle import export_bundle

            cfg = command_config(dataset, preset, set_, artifacts, video_root, video_list, config)
            path = export_bundle(cfg, ArtifactStore(cfg.artifacts), out, checkpoint)
            echo(f"export: bundle written to {path}")

        guarded(go)

    @app.command("predict")
    def predict_cmd(
        model: Annotated[Path, typer.Option("--model", help="bundle folder (from `fsar export`)")],
        support: Annotated[Path, typer.Option("--support", help="folder with one folder of clips per class (the folder name is the class)")],
        query: Annotated[list[str], typer.Option("--query", help="video files or folders of videos; more may follow as arguments")],
        more: Annotated[list[str] | None, typer.Argument(help="more query paths", show_default=False)] = None,
        out: Annotated[Path | None, typer.Option("--out", help="also write the table: .csv or .parquet")] = None,
        descriptions: Annotated[Path | None, typer.Option("--descriptions", help="YAML/JSON mapping each class to its S sentences (first choice per class)")] = None,
        backbone: Annotated[Path | None, typer.Option("--backbone", help="the bundle's backbone checkpoint file (checked by sha256)")] = None,
        device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:N")] = "auto",
        task_context: Annotated[
            str, typer.Option("--task-context", help="inductive: a query's answer never depends on the other queries; faithful: queries attend over each other (released code)")
        ] = "inductive",
        batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="queries per forward pass")] = 16,
        set_: SetOpt = None,
        artifacts: ArtifactsOpt = None,
    ) -> None:
        """Classify query videos among the support folder's classes with a model bundle.

        Task context is inductive by default: each query attends over the supports and itself only, so its answer does not depend on the other queries.

        Descriptions per class: --descriptions FILE, else the bundle's, else the descriptions stage's LLM (--set descriptions.backend=openai ...).
        """

        def go() -> None:
            df = predict_videos(
                model, support, [*query, *(more or [])], out, descriptions, backbone, device, task_context, batch_size,
                set_ or [], artifacts, echo=echo,
            )  # fmt: skip
            # start-up: imported by the command that uses it
            from pipeline.contract import StageError

            bad = int(df["error"].notna().sum())
            if bad:
                first = df[df["error"].notna()].iloc[0]
                fail(StageError(f"{bad} of {len(df)} queries could not be classified (first: {first['query']}: {first['error']}); the others are answered above"))

        guarded(go)

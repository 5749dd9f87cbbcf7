"""Model bundles: a trained run as a self-contained folder that `fsar predict` and `FewShotClassifier` load.

    path = export_bundle(cfg, store, "bundles/demo")          # `fsar export --dataset D --out DIR`
    bundle = load_bundle("bundles/demo", backbone="open_clip.pt")
    model = bundle.build_model(device="cpu", task_context="inductive")

Layout (every file deterministic for the same run and backbone file: sorted JSON, no times; the one absolute
path is where the backbone file was at export):
- `bundle.json`: format_version, the resolved model and protocol config, the backbone's identity
  (open_clip name, weights: tag or file name + sha256 + the absolute path it had at export + the copy in
  the bundle, activation, image size), the preprocessing
  (frames stage decode settings, T, eval sampling, centre crop, mean/std), the prompt templates,
  the descriptions settings and the lineage (train, embeddings, descriptions, frames versions; the audit's when
  `descriptions.choose=videos` chose the sentences).
- `weights.safetensors`: the trainable parameters only (never the frozen CLIP weights).
- `descriptions.json`: the sub-action descriptions of every class the run's descriptions artifact
  holds ({class: {display_name, split, sentences}}), so these classes need no LLM.
- `backbone/<file>`: a copy of the backbone checkpoint file when it is at most BACKBONE_COPY_MAX_BYTES
  (64 MiB: the demo's tiny CLIP, not ViT-B-16), so the bundle alone is enough.
- `manifest.json` (written last): the sha256 and size of every other file of the bundle, `bundle.json`
  and a copied backbone included. Loading checks the bytes it uses against it and refuses a bundle whose
  bytes changed after export (or that has no manifest), naming the file and the fix (export it again).

A backbone from a file is named by its file name and sha256. Loading takes, in order, `backbone=` (the
`--backbone FILE` of `fsar predict`), the copy in the bundle, the file where it was at export, the
artifact it came from under the artifact root; the first that exists must have that sha256 (another
checksum is refused, naming the file and the fix), so a bundle works from any working folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.artifacts import ArtifactRef, ArtifactStore, file_fingerprint, sha256_file
from pipeline.atomic import atomic_path
from pipeline.config import Config, section_dict
from pipeline.contract import StageError
from pipeline.secrets import redact, redact_url

__all__ = ["BUNDLE_FILE", "MANIFEST_FILE", "Bundle", "BundleError", "FORMAT_VERSION", "describe_lineage", "export_bundle", "load_bundle"]

FORMAT_VERSION = 1
BUNDLE_FILE = "bundle.json"
WEIGHTS_FILE = "weights.safetensors"
DESCRIPTIONS_FILE = "descriptions.json"
MANIFEST_FILE = "manifest.json"  # sha256 + size of every other file (bundle.json's own content included)
BACKBONE_DIR = "backbone"  # a copy of a small backbone checkpoint file
BACKBONE_COPY_MAX_BYTES = 64 * 1024 * 1024
SAMPLING = "eval: the centre frame of each of T equal segments over the stored frames; centre crop; no flip"


class BundleError(StageError):
    """A bundle cannot be written or used; the message names the file and the fix."""


@dataclass
class Bundle:
    """A loaded bundle: its metadata, trainable weights, known descriptions and the backbone file to use."""

    path: Path  # the bundle folder
    meta: dict[str, Any]  # bundle.json
    weights: dict[str, torch.Tensor]  # trainable state dict
    descriptions: dict[str, dict[str, Any]]  # class -> {display_name, split, sentences}
    pretrained: str | None = None  # what model.pretrained becomes: the verified backbone file, or the tag
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return int(self.meta["protocol"]["num_frames"])

    @property
    def num_sub_actions(self) -> int:
        return int(self.meta["protocol"]["num_sub_actions"])

    def model_config(self, task_context: str | None = None):
        """The ModelConfig of the trained run, with the verified backbone and (optionally) another task context."""
        # start-up: fsar predict loads only what it uses
        from pipeline.settings.model import ModelConfig

        data = dict(self.meta["model"])
        data["pretrained"] = self.pretrained
        data["quick_gelu"] = self.meta["backbone"]["quick_gelu"]
        if task_context is not None:
            data["task_context"] = task_context
        return ModelConfig(**data)

    def protocol(self):
        # start-up: fsar predict loads only what it uses
        from pipeline.settings.datasets import ProtocolConfig

        return ProtocolConfig(**self.meta["protocol"])

    def build_model(self, device: str | torch.device = "cpu", task_context: str | None = None):
        """The trained TaskAdapterPP in eval mode on `device`."""
        # start-up: fsar predict loads only what it uses
        from pipeline.model import BackboneError, build_model

        try:
            model = build_model(self.model_config(task_context), self.protocol(), device=device)
        except BackboneError as exc:
            raise BundleError(f"bundle {str(self.path)!r}: {exc}") from None
        try:
            model.load_trainable_state_dict({k: v.to(model._device()) for k, v in self.weights.items()})
        except ValueError as exc:
            raise BundleError(f"bundle {str(self.path)!r}: its weights do not fit its model ({exc}); re-export it") from None
        _check_preprocessing(self, model)
        return model.eval()


# ----------------------------------------------------------------------------------------------------- export


def export_bundle(
    cfg: Config,
    store: ArtifactStore,
    out: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str] | None = None,
    train: ArtifactRef | None = None,
) -> Path:
    """Write the bundle of a trained run into folder `out`; returns it.

    The run: `train` (a train artifact), else `checkpoint` (a file; lineage from the latest embeddings), else the
    train artifact `cfg` resolves to. `cfg` must describe the same model (checked against the checkpoint).
    """
    # start-up: fsar predict loads only what it uses
    from pipeline.fewshot.checkpoints import check_checkpoint, load_checkpoint

    train_ref = train if train is not None else (None if checkpoint is not None else _train_ref(cfg, store))
    checkpoint = None if train is not None else checkpoint
    ckpt_path = Path(checkpoint).expanduser() if checkpoint is not None else store.local_path(train_ref) / "best.pt"
    if train_ref is not None:
        store.verify(train_ref, ["best.pt"])
    ckpt = load_checkpoint(ckpt_path)
    check_checkpoint(ckpt, cfg, ckpt_path)
    trained = _trained_config(ckpt, cfg)
    lineage = _lineage(store, cfg, train_ref)
    descriptions = _known_descriptions(trained, store, lineage)
    meta = redact(_metadata(trained, store, lineage, ckpt_path if train_ref is None else None), [trained.descriptions.api_key_env])
    model = _checked_model(trained, ckpt["trainable"])
    meta["preprocessing"]["mean"] = [float(v) for v in model.image_mean]
    meta["preprocessing"]["std"] = [float(v) for v in model.image_std]
    meta["backbone"]["quick_gelu"] = bool(model.quick_gelu)  # the activation the frozen blocks ran with
    copies = {meta["backbone"]["bundled"]: Path(meta["backbone"]["path"])} if meta["backbone"].get("bundled") else {}
    return _write(Path(out).expanduser(), meta, model.trainable_state_dict(), descriptions, copies)


def _trained_config(ckpt: dict[str, Any], cfg: Config) -> Config:
    """The config the checkpoint was trained with: what it stored (what its version covers) over `cfg`, which gives
    the rest (descriptions, dataset folders, the preset's name) and its backbone file as named here (they match:
    checked)."""
    stored = {k: v for k, v in (ckpt.get("config") or {}).items() if k not in ("artifacts", "preset")}
    stored["model"] = {k: v for k, v in (stored.get("model") or {}).items() if k != "pretrained"}
    try:
        return cfg.override(stored)
    except ValueError:
        return cfg


def _train_ref(cfg: Config, store: ArtifactStore) -> ArtifactRef:
    """The train artifact this config implies (`fsar plan`), never merely the newest one."""
    # start-up: fsar predict loads only what it uses
    from pipeline.registry import planned_ref

    return planned_ref(cfg, "train", store, needed_by="export")


def _lineage(store: ArtifactStore, cfg: Config, train_ref: ArtifactRef | None) -> dict[str, str]:
    """{stage: "stage/dataset/version"} of the run: train and what it read (with --checkpoint: the planned embeddings)."""
    out: dict[str, str] = {}
    if train_ref is not None:
        out["train"] = str(train_ref)
        inputs = store.manifest(train_ref).get("inputs", {})
    else:
        # start-up: fsar predict loads only what it uses
        from pipeline.registry import planned_ref

        inputs = {"embeddings": planned_ref(cfg, "embeddings", store, needed_by="export").to_dict()}
    for name in ("frames", "embeddings"):
        if name in inputs:
            out[name] = str(ArtifactRef.from_dict({**inputs[name], "root": store.root}))
    if "embeddings" in inputs:
        emb = ArtifactRef.from_dict({**inputs["embeddings"], "root": store.root})
        emb_inputs = store.manifest(emb).get("inputs", {})
        for name in ("descriptions", "audit"):  # the audit when its candidates were chosen by the videos (descriptions.choose)
            if emb_inputs.get(name):
                out[name] = str(ArtifactRef.from_dict({**emb_inputs[name], "root": store.root}))
    if "descriptions" not in out:
        raise BundleError(f"cannot find the descriptions artifact of this run under {store.root}; re-run `fsar embeddings` first")
    return out


def _ref(store: ArtifactStore, text: str) -> ArtifactRef:
    stage, dataset, version = text.split("/")
    return store.ref(stage, dataset, version)


def _known_descriptions(trained: Config, store: ArtifactStore, lineage: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Every class of the run's descriptions artifact, with the display name its prompts used (and, where the run's
    embeddings took a class's candidate and order from the audit, those sentences)."""
    # start-up: fsar predict loads only what it uses
    from pipeline.datasets import get_dataset
    from pipeline.embeddings.stage import chosen_by_videos

    ref = _ref(store, lineage["descriptions"])
    table = store.load(ref.stage, ref.dataset, ref.version)  # checksum-verified
    if "audit" in lineage:
        table = chosen_by_videos(table, _ref(store, lineage["audit"]), ref)[0]
    spec = get_dataset(trained.dataset)
    out: dict[str, dict[str, Any]] = {}
    for (split, cls), part in table.groupby(["split", "class"], sort=True):
        texts = [str(t) for t in part.sort_values("k")["text"]]
        out[str(cls)] = {"display_name": spec.display_name(str(cls)), "split": str(split), "sentences": texts}
    return out


def _backbone(model: dict[str, Any], store: ArtifactStore) -> dict[str, Any]:
    """The frozen CLIP's identity: name, tag or file (name, sha256, artifact it came from), activation, size."""
    pretrained = model["pretrained"]
    out: dict[str, Any] = {"clip": model["clip"], "image_size": model["image_size"]}
    if pretrained is None:
        if "init_seed" not in model:
            raise BundleError(
                "this run's frozen CLIP has unseeded random weights (model.pretrained=null), which a bundle cannot name; "
                "train with an open_clip tag or a checkpoint file (model.pretrained=...)"
            )
        out.update(weights="random", init_seed=model["init_seed"])  # reproduced from model.init_seed
        return out
    path = Path(pretrained).expanduser()
    if path.is_file():
        path = path.resolve()
        small = path.stat().st_size <= BACKBONE_COPY_MAX_BYTES
        digest = file_fingerprint(path).removeprefix("sha256:")  # hashed once per process (planning hashed it already)
        out.update(weights="file", file=path.name, sha256=digest, artifact_file=_in_store(path, store),
                   path=str(path), bundled=f"{BACKBONE_DIR}/{path.name}" if small else None)
    else:
        out.update(weights="tag", tag=pretrained)
    return out


def _in_store(path: Path, store: ArtifactStore) -> str | None:
    """`stage/dataset/version/file` when the file lies in an artifact of this store, else None."""
    if not store.local:
        return None
    try:
        rel = path.resolve().relative_to(Path(store.root).resolve())
    except ValueError:
        return None
    return rel.as_posix() if len(rel.parts) == 4 else None


def _metadata(trained: Config, store: ArtifactStore, lineage: dict[str, str], checkpoint: Path | None) -> dict[str, Any]:
    model = section_dict(trained.model)
    backbone = _backbone(model, store)
    model["pretrained"] = None  # named by `backbone` instead (no machine-specific path in the bundle)
    descriptions = section_dict(trained.descriptions)
    if descriptions.get("corpus"):
        descriptions["corpus"] = Path(descriptions["corpus"]).name
    if descriptions.get("gguf"):
        descriptions["gguf"] = Path(descriptions["gguf"]).name
    descriptions["base_url"] = redact_url(descriptions.get("base_url"))  # user info / query strings may hold secrets
    frames = trained.frames
    return {
        "format_version": FORMAT_VERSION,
        "dataset": trained.dataset.name,
        "preset": trained.preset,
        "model": model,
        "protocol": section_dict(trained.protocol),
        "backbone": backbone,
        "preprocessing": {
            "num_frames": trained.protocol.num_frames,
            "sampling": SAMPLING,
            "storage_size": frames.storage_size,
            "max_frames": frames.max_frames,
            "jpeg_quality": frames.jpeg_quality,
            "decoder": frames.decoder,
            "video_timeout_s": frames.video_timeout_s,
            "crop_size": trained.model.image_size,
        },
        "prompts": {"template": trained.model.prompt_template},
        "descriptions": descriptions,
        "lineage": lineage,
        "checkpoint": None if checkpoint is None else {"file": checkpoint.name, "sha256": sha256_file(checkpoint)},
    }


def _checked_model(trained: Config, state: dict[str, torch.Tensor]):
    """The run's model with its weights (proves the bundle loads, and gives the backbone's mean/std)."""
    # start-up: fsar predict loads only what it uses
    from pipeline.model import BackboneError, build_model

    try:
        model = build_model(trained.model, trained.protocol, device="cpu")
        model.load_trainable_state_dict(state)
    except (BackboneError, ValueError) as exc:
        raise BundleError(f"the checkpoint does not load into its own model ({exc})") from None
    return model


def _write(out: Path, meta: dict[str, Any], weights: dict[str, torch.Tensor], descriptions: dict[str, Any],
           copies: dict[str, Path] | None = None) -> Path:  # fmt: skip
    """Write into a temporary sibling folder, then rename into place (an existing bundle there is replaced);
    `copies`: {path in the bundle: file to copy there} (a small backbone checkpoint)."""
    import shutil

    from safetensors.torch import save

    if out.exists() and not (out / BUNDLE_FILE).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise BundleError(f"--out {str(out)!r} exists and is not a fsar bundle; choose a new or empty folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:  # a folder: an existing bundle at `out` is replaced on commit
        tmp.mkdir()
        # written like the other files (save_file would create it 0600 where they are 0644 under the usual umask)
        (tmp / WEIGHTS_FILE).write_bytes(save({k: v.detach().cpu().contiguous() for k, v in sorted(weights.items())}))
        _dump_json(tmp / DESCRIPTIONS_FILE, descriptions)
        for rel, source in (copies or {}).items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, tmp / rel)
        _dump_json(tmp / BUNDLE_FILE, meta)  # a folder without it is not a bundle
        _write_manifest(tmp)  # last: the checksums of everything above
    return out


def _write_manifest(folder: Path) -> None:
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
    files = {n: sha256_file(folder / n) for n in names}
    _dump_json(folder / MANIFEST_FILE, {"files": files, "sizes": {n: (folder / n).stat().st_size for n in names}})


def _dump_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------------------------- load


def load_bundle(path: str | os.PathLike[str], backbone: str | os.PathLike[str] | None = None, artifacts: str | None = None) -> Bundle:
    """Read and check a bundle; a backbone file comes from `backbone`, else from its artifact under `artifacts`."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    folder = Path(path).expanduser()
    _read_meta(folder)  # a bundle at all, of a format this fsar reads
    listed = _listed_files(folder)
    raw = {name: _verified_bytes(folder, name, listed) for name in (BUNDLE_FILE, WEIGHTS_FILE, DESCRIPTIONS_FILE)}
    for name in sorted(set(listed) - set(raw)):  # any other file the bundle holds (hashed as a stream)
        _verified_bytes(folder, name, listed, keep=False)
    try:
        meta = json.loads(raw[BUNDLE_FILE].decode("utf-8"))
        weights = load(raw[WEIGHTS_FILE])
        descriptions = json.loads(raw[DESCRIPTIONS_FILE].decode("utf-8"))
    except (SafetensorError, ValueError) as exc:
        raise BundleError(f"bundle {str(folder)!r} is damaged ({type(exc).__name__}: {exc}); export it again") from None
    return Bundle(folder, meta, weights, descriptions, pretrained=_pretrained(meta["backbone"], folder, backbone, artifacts))


def _reexport(folder: Path) -> str:
    return f"re-export it (`fsar export ... --out {str(folder)!r}` with the run's preset and --set options)"


def _listed_files(folder: Path) -> dict[str, str]:
    """{file: sha256} from the bundle's manifest; a bundle without a readable one is refused."""
    file = folder / MANIFEST_FILE
    if not file.is_file():
        raise BundleError(f"bundle {str(folder)!r} has no {MANIFEST_FILE} (the sha256 of its files), so its bytes cannot be checked; {_reexport(folder)}")
    try:
        files = json.loads(file.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"bundle {str(folder)!r}: its {MANIFEST_FILE} is damaged ({type(exc).__name__}: {exc}); {_reexport(folder)}") from None
    if not isinstance(files, dict) or any(not isinstance(n, str) or n.startswith("/") or ".." in n.split("/") for n in files):
        raise BundleError(f"bundle {str(folder)!r}: its {MANIFEST_FILE} has no valid file list; {_reexport(folder)}")
    return files


def _verified_bytes(folder: Path, name: str, listed: dict[str, str], keep: bool = True) -> bytes:
    """The bytes of one bundle file (b"" unless `keep`), checked against its sha256 in the manifest: the bytes
    checked are the bytes then used."""
    import hashlib

    if name not in listed:
        raise BundleError(f"bundle {str(folder)!r}: {MANIFEST_FILE} does not list {name!r} (the manifest was changed); {_reexport(folder)}")
    try:
        data = (folder / name).read_bytes() if keep else b""
        digest = hashlib.sha256(data).hexdigest() if keep else sha256_file(folder / name)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        raise BundleError(f"bundle {str(folder)!r} is incomplete: file {name!r} is missing; {_reexport(folder)}") from None
    if digest != listed[name]:
        raise BundleError(
            f"bundle {str(folder)!r}: file {name!r} does not match its sha256 in {MANIFEST_FILE} (it changed or was damaged "
            f"after export); {_reexport(folder)}"
        )
    return data


def _read_meta(folder: Path) -> dict[str, Any]:
    file = folder / BUNDLE_FILE
    if not file.is_file():
        raise BundleError(f"{str(folder)!r} is not a fsar model bundle (no {BUNDLE_FILE}); make one with `fsar export --out DIR`")
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"{str(file)!r} cannot be read ({exc}); export the bundle again") from None
    got = meta.get("format_version") if isinstance(meta, dict) else None
    if got != FORMAT_VERSION:
        raise BundleError(
            f"bundle {str(folder)!r} has format version {got!r}, this fsar reads version {FORMAT_VERSION}; "
            f"re-export it with this fsar (`fsar export`) or use the fsar that wrote it"
        )
    return meta


def _pretrained(identity: dict[str, Any], folder: Path, backbone: str | os.PathLike[str] | None, artifacts: str | None) -> str | None:
    """The value for model.pretrained: the tag, or a backbone file whose sha256 is the bundle's (see the module doc)."""
    if identity.get("weights") == "tag":
        return str(identity["tag"])
    if identity.get("weights") == "random":
        return None
    want, name = identity["sha256"], identity["file"]
    if backbone is not None:
        path = Path(backbone).expanduser()
        if not path.is_file():
            raise BundleError(f"backbone file {str(path)!r} does not exist; pass the {name!r} this bundle was trained with (--backbone FILE)")
        got = sha256_file(path)
        if got != want:
            raise BundleError(
                f"backbone file {str(path)!r} has sha256 {got[:12]}..., the bundle was trained with {want[:12]}... ({name}); pass that file with --backbone"
            )
        return str(path)
    tried = []
    places = [
        ("in the bundle", folder / identity["bundled"] if identity.get("bundled") else None),
        ("where it was at export", Path(identity["path"]) if identity.get("path") else None),
        ("under the artifact root", _from_artifacts(identity, artifacts)),
    ]
    for where, path in places:
        if path is None:
            continue
        if not path.is_file():
            tried.append(f"{where} ({path}) it is missing")
            continue
        got = sha256_file(path)
        if got == want:
            return str(path)
        tried.append(f"{where} ({path}) it has changed (sha256 {got[:12]}...)")
    seen = "; ".join(tried) if tried else "the bundle holds no copy and names no place for it"
    raise BundleError(
        f"bundle {str(folder)!r} needs its backbone file {name!r} (sha256 {want[:12]}...): {seen}; "
        f"pass that file with --backbone FILE (or re-export the bundle: a backbone file up to "
        f"{BACKBONE_COPY_MAX_BYTES // 2**20} MiB is copied into it)"
    )


def _from_artifacts(identity: dict[str, Any], artifacts: str | None) -> Path | None:
    rel = identity.get("artifact_file")
    if not rel:
        return None
    store = ArtifactStore(artifacts)
    if not store.local:
        return None
    path = Path(store.root) / rel
    return path if path.is_file() else None


def _check_preprocessing(bundle: Bundle, model: Any) -> None:
    pre = bundle.meta["preprocessing"]
    for key, value in (("mean", model.image_mean), ("std", model.image_std)):
        if [round(float(v), 6) for v in value] != [round(float(v), 6) for v in pre[key]]:
            raise BundleError(f"bundle {str(bundle.path)!r}: the backbone's {key} {list(value)} differs from the bundle's {pre[key]}")


def describe_lineage(bundle: Bundle) -> str:
    """One line: what the bundle was made from."""
    return ", ".join(f"{k} {v}" for k, v in sorted(bundle.meta.get("lineage", {}).items())) or "unknown"


"""Typed configuration: a preset (YAML under pipeline/configs/, package data) plus `key=value` overrides.

    cfg = load_config("hmdb51", overrides=["model.task_context=inductive"])
    cfg.model.vision_adapted_layers  # 2

Every field has a default equal to the paper's value (see docs/method.md); presets change only what
differs. A wrong key or value raises `ConfigError` with one line naming the key and what is allowed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError

from pipeline.errors import FsarError, read_text_file
from pipeline.secrets import redact
from pipeline.settings import (
    AuditConfig,
    BackboneConfig,
    DatasetConfig,
    DescriptionsConfig,
    EmbeddingsConfig,
    EvaluateConfig,
    FramesConfig,
    ModelConfig,
    ProtocolConfig,
    Section,
    TrainConfig,
)

__all__ = [
    "Config",
    "ConfigError",
    "CONFIG_DIR",
    "MOVED_KEYS",
    "RUNTIME_FIELDS",
    "config_dir",
    "list_presets",
    "load_config",
    "parse_overrides",
    "read_preset",
    "section_dict",
]

# Settings that decide how a run goes, never what it produces: left out of versions and stored configs.
RUNTIME_FIELDS = (
    "artifacts",
    "train.resume",
    "train.device",
    "train.log_every",
    "train.checkpoint_every",
    "evaluate.device",
    "evaluate.cache",
    "evaluate.episodes_per_batch",
    "audit.device",
    "audit.loader_workers",
    "frames.workers",
    "descriptions.concurrency",
    "backbone.device",
)

# Keys that moved: setting one is refused with a line naming the key to use.
MOVED_KEYS = {
    "train.amp": "model.amp",  # one precision switch for the towers, training and evaluation (pipeline.precision)
}

CONFIG_DIR = Path(str(files("pipeline") / "configs"))  # the packaged presets (package data)


def config_dir() -> Path:
    """The preset folder: $FSAR_CONFIG_DIR when set (read now, not at import), else the packaged presets."""
    env = os.environ.get("FSAR_CONFIG_DIR")
    return Path(env).expanduser() if env else CONFIG_DIR


class ConfigError(FsarError, ValueError):
    """A config key or value is wrong; the message names the key and what is allowed."""


class Config(Section):
    preset: str = "default"  # name of the preset this config was built from (informational)
    artifacts: str | None = None  # artifact root (local folder or fsspec URL); None = $FSAR_ARTIFACTS or ./artifacts
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    protocol: ProtocolConfig = Field(default_factory=ProtocolConfig)
    descriptions: DescriptionsConfig = Field(default_factory=DescriptionsConfig)
    frames: FramesConfig = Field(default_factory=FramesConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    embeddings: EmbeddingsConfig = Field(default_factory=EmbeddingsConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)

    def override(self, *overrides: str | Mapping[str, Any]) -> "Config":
        """Return a copy with `key=value` strings (or a {dotted.key: value} mapping) applied."""
        data = self.model_dump()
        for item in overrides:
            pairs = parse_overrides([item]) if isinstance(item, str) else dict(item)
            for key, value in pairs.items():
                _set_dotted(data, key, value)
        return _validate(data, origin="overrides")

    def dump(self) -> dict[str, Any]:
        """Plain, JSON-ready dict of the whole resolved config, secrets (URL user-info, key values) masked."""
        return redact(json.loads(self.model_dump_json()), [self.descriptions.api_key_env])

    def stored(self) -> dict[str, Any]:
        """The config as artifacts store it (checkpoints, config.json): `dump()` without the runtime-only
        fields (RUNTIME_FIELDS), and with paths under the artifact root written as ``$FSAR_ARTIFACTS/...``,
        so the same run gives the same bytes in any root and after a resume."""
        # start-up: config loading stays light (no pandas/fsspec)
        from pipeline.artifacts import ArtifactStore

        data = self.dump()
        for key in RUNTIME_FIELDS:
            section, _, name = key.rpartition(".")
            (data.get(section, {}) if section else data).pop(name, None)
        root = ArtifactStore(self.artifacts).root.rstrip("/") + "/"

        def rel(v: Any) -> Any:
            if isinstance(v, dict):
                return {k: rel(x) for k, x in v.items()}
            return "$FSAR_ARTIFACTS/" + v[len(root):] if isinstance(v, str) and v.startswith(root) else v

        return rel(data)


def list_presets() -> list[str]:
    """Names of the YAML presets in the preset folder (`config_dir()`)."""
    return sorted(p.stem for p in config_dir().glob("*.yaml"))


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """`["model.lr=0.1", "dataset.name=hmdb51"]` -> {"model.lr": 0.1, ...}; values are YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. model.task_context=inductive)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() != "" else None
        except yaml.YAMLError:
            out[key] = raw
    return out


def load_config(
    preset: str | os.PathLike[str] | None = None,
    overrides: Iterable[str] | Mapping[str, Any] | None = None,
    **sections: Mapping[str, Any],
) -> Config:
    """Build a Config from a preset name (<config_dir()>/<name>.yaml) or a YAML path, then apply overrides.

    `sections` are keyword dicts merged into their section, e.g. `load_config("demo", dataset={"name": "x"})`.
    """
    data: dict[str, Any] = {}
    if preset is not None:
        data = read_preset(preset)
    for name, values in sections.items():
        for key, value in dict(values).items():
            _set_dotted(data, f"{name}.{key}", value)
    if overrides:
        pairs = dict(overrides) if isinstance(overrides, Mapping) else parse_overrides(overrides)
        for key, value in pairs.items():
            _set_dotted(data, key, value)
    return _validate(data, origin=f"preset {preset!r}" if preset else "config")


def section_dict(cfg: BaseModel, fields: Iterable[str] | None = None) -> dict[str, Any]:
    """JSON-ready dict of a section, or of some of its fields (what a stage hashes into its version)."""
    data = json.loads(cfg.model_dump_json())
    return data if fields is None else {f: data[f] for f in fields}


def read_preset(preset: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw mapping of a preset (name under `config_dir()`, or a YAML path), with its `preset` name set."""
    path = Path(preset)
    if path.suffix not in (".yaml", ".yml"):
        path = config_dir() / f"{preset}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"preset {str(preset)!r} not found (looked for {path}); choose one of {list_presets()} or give a YAML path"
        )
    try:
        data = yaml.safe_load(read_text_file(path, "config file", ConfigError)) or {}
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    data.setdefault("preset", path.stem)
    return data


def _moved(key: str) -> ConfigError:
    new = MOVED_KEYS[key]
    return ConfigError(f"config key {key!r} is gone: use {new} (e.g. --set {new}=false), the one setting for it")


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    if key in MOVED_KEYS:
        raise _moved(key)
    parts = key.split(".")
    model: type[BaseModel] | None = Config
    node = data
    for i, part in enumerate(parts):
        if model is None:
            raise ConfigError(f"config key {key!r}: {'.'.join(parts[:i])!r} is a value, not a section")
        fields = model.model_fields
        if part not in fields:
            scope = ".".join(parts[:i]) or "the top level"
            raise ConfigError(f"unknown config key {key!r}; allowed keys in {scope}: {', '.join(fields)}")
        annotation = fields[part].annotation
        is_section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if i == len(parts) - 1:
            if is_section and not isinstance(value, Mapping):
                raise ConfigError(f"config key {key!r} is a section; set one of its keys, e.g. {key}.<key>=value")
            if is_section:
                for sub, sub_value in dict(value).items():
                    _set_dotted(data, f"{key}.{sub}", sub_value)
            else:
                node[part] = value
            return
        if not is_section:
            raise ConfigError(f"config key {key!r}: {'.'.join(parts[: i + 1])!r} is a value, not a section")
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config key {'.'.join(parts[: i + 1])!r} must be a mapping")
        model = annotation


def _validate(data: dict[str, Any], origin: str) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden" and key in MOVED_KEYS:
            raise _moved(key) from None
        if err["type"] == "extra_forbidden":
            section = ".".join(str(p) for p in err["loc"][:-1])
            model: type[BaseModel] = Config
            for part in err["loc"][:-1]:
                model = model.model_fields[str(part)].annotation  # type: ignore[assignment]
            scope = section or "the top level"
            raise ConfigError(
                f"unknown config key {key!r} ({origin}); allowed keys in {scope}: {', '.join(model.model_fields)}"
            ) from None
        got = redact(err.get("input"))
        raise ConfigError(f"config key {key!r} ({origin}): {err['msg']} (got {got!r})") from None

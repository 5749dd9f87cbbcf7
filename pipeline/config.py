"""Typed configuration: a preset (YAML under pipeline/configs/, package data) plus `key=value` overrides.

    cfg = load_config("hmdb51", overrides=["model.task_context=inductive"])
    cfg.model.vision_adapted_layers  # 2

Every field has a default equal to the paper's value (see docs/method.md); presets change only what
differs. A wrong key or value raises `ConfigError` with one line naming the key and what is allowed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
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
    "layered_config",
    "list_presets",
    "load_config",
    "parse_overrides",
    "read_preset",
    "read_yaml",
    "section_dict",
]

# Settings that no version hashes: how a run goes (devices, worker and thread counts, batching, resuming,
# logging), how a service is reached (base URL, key variable, time-outs, retries), a failure threshold and the
# preset's name (a label). They are left out of versions and never reach an artifact's bytes (`Config.stored`),
# so equal versions hold equal bytes on any machine.
RUNTIME_FIELDS = (
    "preset",
    "artifacts",
    "descriptions.base_url",
    "descriptions.api_key_env",
    "descriptions.concurrency",
    "descriptions.max_retries",
    "descriptions.retry_backoff_s",
    "descriptions.request_timeout_s",
    "descriptions.server_threads",
    "descriptions.server_start_timeout_s",
    "descriptions.cache",
    "frames.workers",
    "frames.max_failed_fraction",
    "embeddings.batch_size",
    "train.resume",
    "train.device",
    "train.log_every",
    "train.checkpoint_every",
    "train.loader_workers",
    "train.episodes_per_pass",
    "train.cuda_graphs",
    "train.compile",
    "evaluate.device",
    "evaluate.cache",
    "evaluate.episodes_per_batch",
    "evaluate.videos_per_pass",
    "evaluate.loader_workers",
    "audit.device",
    "audit.loader_workers",
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

    def stored(self, keep: Iterable[str] | None = None) -> dict[str, Any]:
        """The config as an artifact stores it (config.json, checkpoints): a function of the artifact's version alone.

        `dump()` without the fields no version hashes (RUNTIME_FIELDS) and the late fields at their defaults
        (`Section.LATE_FIELDS`), restricted to `keep` (sections or dotted fields; None = every section) -- an
        artifact keeps what its own version and its inputs' versions cover.
        The model section is in the form versions hash it (a local `model.pretrained` file by its content, not
        its path), and other paths under the artifact root are written as ``$FSAR_ARTIFACTS/...``, so the same
        run gives the same bytes in any root, on any machine and after a resume."""
        # start-up: config loading stays light (no pandas/fsspec)
        from pipeline.artifacts import ArtifactStore
        from pipeline.settings.model import model_fields

        data = self.dump()
        for name in type(self).model_fields:
            section = getattr(self, name)
            if isinstance(section, Section):
                data[name] = section.without_late_defaults(data[name])
        data["model"] = redact(model_fields(self.model), [self.descriptions.api_key_env])
        for key in RUNTIME_FIELDS:
            section, _, name = key.rpartition(".")
            (data.get(section, {}) if section else data).pop(name, None)
        if keep is not None:
            data = _kept(data, list(keep))
        root = ArtifactStore(self.artifacts).root.rstrip("/") + "/"

        def rel(v: Any) -> Any:
            if isinstance(v, dict):
                return {k: rel(x) for k, x in v.items()}
            return "$FSAR_ARTIFACTS/" + v[len(root):] if isinstance(v, str) and v.startswith(root) else v

        return rel(data)


def _kept(data: dict[str, Any], keep: list[str]) -> dict[str, Any]:
    """The parts of a nested dict that `keep` names ("protocol" a whole section, "dataset.name" one field)."""
    out: dict[str, Any] = {}
    for key in keep:
        section, _, name = key.partition(".")
        if section not in data:
            continue
        if not name:
            out[section] = data[section]
        elif name in data[section]:
            out.setdefault(section, {})[name] = data[section][name]
    return out


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
    values: dict[str, Any] = {f"{name}.{key}": value for name, section in sections.items() for key, value in dict(section).items()}
    if overrides:
        values.update(dict(overrides) if isinstance(overrides, Mapping) else parse_overrides(overrides))
    return layered_config(preset, [("overrides", values)] if values else [])


def layered_config(preset: str | os.PathLike[str] | None, layers: Sequence[tuple[str, Mapping[str, Any]]]) -> Config:
    """The preset (none: the fields' defaults) with each layer's {dotted key: value} applied in turn, later layers
    winning. An unknown key or a bad value is a ConfigError naming the layer it came from (its label, e.g.
    "run file /x/fsar.yaml" or "command line"; the preset's name for a value no layer set)."""
    data: dict[str, Any] = read_preset(preset) if preset is not None else {}
    base = f"preset {data.get('preset', preset)!r}" if preset is not None else "default"
    for label, values in layers:
        for key, value in values.items():
            _set_dotted(data, key, value, origin=label)

    def origin(key: str) -> str:
        for label, values in reversed(layers):
            if any(k == key or k.startswith(f"{key}.") or key.startswith(f"{k}.") for k in values):
                return label
        return base

    return _validate(data, origin)


def section_dict(cfg: BaseModel, fields: Iterable[str] | None = None) -> dict[str, Any]:
    """JSON-ready dict of a section, or of some of its fields (what a stage hashes into its version), less its late
    fields at their defaults (`Section.LATE_FIELDS`: versions made before such a field existed stay as they were)."""
    data = json.loads(cfg.model_dump_json())
    if fields is not None:
        data = {f: data[f] for f in fields}
    return cfg.without_late_defaults(data) if isinstance(cfg, Section) else data


def read_preset(preset: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw mapping of a preset (name under `config_dir()`, or a YAML path), with its `preset` name set."""
    path = Path(preset)
    if path.suffix not in (".yaml", ".yml"):
        path = config_dir() / f"{preset}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"preset {str(preset)!r} not found (looked for {path}); choose one of {list_presets()} or give a YAML path"
        )
    data = read_yaml(path, "config file") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    data.setdefault("preset", path.stem)
    return data


def read_yaml(path: str | os.PathLike[str], what: str) -> Any:
    """A user's YAML file, strictly: not UTF-8, not YAML, or a mapping that gives one key twice (at any depth:
    YAML would silently keep the last) is a ConfigError naming `what`, the file, the key and its lines."""
    text = read_text_file(path, what, ConfigError)
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse_duplicate_keys(node, f"{what} {str(path)!r}")
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{what} {str(path)!r} is not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    finally:
        loader.dispose()


def _refuse_duplicate_keys(root: yaml.Node, where: str) -> None:
    """Walk the composed YAML tree; a mapping that holds one key twice is a ConfigError naming the key's path and lines."""
    seen_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    while stack:
        node, prefix = stack.pop()
        if id(node) in seen_nodes:  # an alias: the same node again (YAML allows recursive ones)
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            lines: dict[str, int] = {}
            for key, value in node.value:
                if key.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: later keys override the merged ones, by design
                    continue
                name = str(key.value) if isinstance(key, yaml.ScalarNode) else yaml.safe_dump(key.value).strip()
                full = f"{prefix}{name}"
                line = key.start_mark.line + 1
                if name in lines:
                    raise ConfigError(f"{where} gives the key {full!r} twice (line {lines[name]} and line {line}); keep one")
                lines[name] = line
                stack.append((value, f"{full}."))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, f"{prefix[:-1] if prefix else ''}[{i}].") for i, item in enumerate(node.value))


def _moved(key: str) -> ConfigError:
    new = MOVED_KEYS[key]
    return ConfigError(f"config key {key!r} is gone: use {new} (e.g. --set {new}=false), the one setting for it")


def _set_dotted(data: dict[str, Any], key: str, value: Any, origin: str | None = None) -> None:
    """Set `key` (dotted) in the raw nested `data`; an unknown key or a value where a section belongs is a
    ConfigError naming the key and, when given, the layer it came from (`origin`)."""
    at = f" ({origin})" if origin else ""
    if key in MOVED_KEYS:
        raise _moved(key)
    parts = key.split(".")
    model: type[BaseModel] | None = Config
    node = data
    for i, part in enumerate(parts):
        if model is None:
            raise ConfigError(f"config key {key!r}{at}: {'.'.join(parts[:i])!r} is a value, not a section")
        fields = model.model_fields
        if part not in fields:
            scope = ".".join(parts[:i]) or "the top level"
            raise ConfigError(f"unknown config key {key!r}{at}; allowed keys in {scope}: {', '.join(fields)}")
        annotation = fields[part].annotation
        is_section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if i == len(parts) - 1:
            if is_section and not isinstance(value, Mapping):
                raise ConfigError(f"config key {key!r}{at} is a section; set one of its keys, e.g. {key}.<key>=value")
            if is_section:
                for sub, sub_value in dict(value).items():
                    _set_dotted(data, f"{key}.{sub}", sub_value, origin)
            else:
                node[part] = value
            return
        if not is_section:
            raise ConfigError(f"config key {key!r}{at}: {'.'.join(parts[: i + 1])!r} is a value, not a section")
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config key {'.'.join(parts[: i + 1])!r}{at} must be a mapping")
        model = annotation


def _validate(data: dict[str, Any], origin: str | Callable[[str], str]) -> Config:
    """Validate the raw nested mapping; an error names the key, the layer it came from (`origin`: a label, or a
    function of the dotted key) and what is allowed."""
    where = origin if callable(origin) else (lambda key: origin)
    try:
        cfg = Config.model_validate(data)
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
                f"unknown config key {key!r} ({where(key)}); allowed keys in {scope}: {', '.join(model.model_fields)}"
            ) from None
        got = redact(err.get("input"))
        raise ConfigError(f"config key {key!r} ({where(key)}): {err['msg']} (got {got!r})") from None
    _check_across_sections(cfg, where("model.scores"))
    return cfg


def _check_across_sections(cfg: Config, origin: str) -> None:
    """Settings of two sections that only work together (each section checks its own fields)."""
    if cfg.model.scores == "released" and cfg.protocol.query != 1:
        raise ConfigError(
            f"config key 'model.scores' ({origin}): released multiplies a [class, query] semantic matrix by a [query, class] "
            f"visual one, defined only for one query per class, but protocol.query={cfg.protocol.query}; set protocol.query=1 "
            f"or model.scores=query_class"
        )

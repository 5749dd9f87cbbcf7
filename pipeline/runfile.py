"""Run files: a run's settings written once, read by every command, make target, flow and deployment.

A run file is YAML. Every key is optional; each one stands for the command-line option of the same name:

    # fsar.yaml (the default file: read from the working folder when it exists; else --config FILE)
    dataset: synthetic
    video_root: videos            # relative paths are relative to the run file's folder
    preset: demo
    artifacts: artifacts
    llm: openai                   # descriptions.backend   (make LLM=, fsar descriptions --llm)
    llm_model: gpt-4o-mini        # descriptions.model     (make MODEL=, fsar descriptions --model)
    base_url: http://127.0.0.1:8000/v1   # descriptions.base_url (make BASE_URL=)
    corpus: my_corpus.yaml        # descriptions.corpus    (make CORPUS=)
    set:                          # any config key, as with --set (values as written)
      train.episodes_per_epoch: 50
      evaluate.episodes: 200

Where a value comes from, lowest first: the field's default < the preset < the run file < the command
line (flags, `--set`, make variables, flow and deployment parameters). Within one layer a key given twice
with different values is an error naming it (a flag and a `--set`, two `--set`, `llm:` and
`set: {descriptions.backend: ...}`), never a silent winner. `fsar config` prints every value with its
origin. The preset is the command line's `--preset`, else the run file's `preset:`, else the dataset's own.

    resolved = resolve(dataset="hmdb51", overrides=["train.lr=0.01"], run_file=find_run_file(None))
    resolved.config, resolved.origins["train.lr"]   # Config, "command line"
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import Config, ConfigError, layered_config, list_presets, parse_overrides, read_preset, read_yaml

__all__ = [
    "FLAG",
    "RUN_FILE",
    "RUN_KEYS",
    "Resolved",
    "RunFile",
    "build_config",
    "find_run_file",
    "flag_overrides",
    "read_run_file",
    "resolve",
]

RUN_FILE = "fsar.yaml"  # the default run file, looked for in the working folder

# run-file key -> config key it sets (None: chooses something else than a config field)
RUN_KEYS: dict[str, str | None] = {
    "dataset": "dataset.name",
    "video_root": "dataset.video_root",
    "video_list": "dataset.video_list",
    "preset": None,
    "artifacts": "artifacts",
    "llm": "descriptions.backend",
    "llm_model": "descriptions.model",
    "base_url": "descriptions.base_url",
    "corpus": "descriptions.corpus",
    "set": None,
}
_PATH_KEYS = ("video_root", "video_list", "artifacts", "corpus")  # resolved against the run file's folder

FLAG = "flag:"  # marks an override that comes from a command's own flag (see `flag_overrides`)


@dataclass(frozen=True)
class RunFile:
    """A read run file: its path, the preset it names, and the config keys it sets ({dotted key: value})."""

    path: Path
    preset: str | None = None
    values: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Resolved:
    """A resolved config with where each of its values came from."""

    config: Config
    origins: dict[str, str]  # dotted key -> "default" | "preset NAME" | "run file" | "command line"
    preset: str | None
    run_file: RunFile | None


def find_run_file(explicit: str | os.PathLike[str] | None, folder: str | os.PathLike[str] | None = None) -> Path | None:
    """`explicit` (which must be an existing file), else `fsar.yaml` in `folder` (default: the working folder) if there, else None."""
    if explicit is not None and str(explicit) != "":
        path = Path(explicit).expanduser()
        if path.is_dir():
            raise ConfigError(f"run file {str(explicit)!r} is a folder; give the YAML file itself to --config (CONFIG= for make), e.g. {str(path / RUN_FILE)!r}")
        if not path.exists():
            raise ConfigError(f"run file {str(explicit)!r} does not exist; give an existing YAML file to --config (CONFIG= for make)")
        if not path.is_file():
            raise ConfigError(f"run file {str(explicit)!r} is not a regular file; give a YAML file to --config (CONFIG= for make)")
        return path.resolve()
    default = Path(folder if folder is not None else os.getcwd()) / RUN_FILE
    return default.resolve() if default.is_file() else None


def read_run_file(path: str | os.PathLike[str]) -> RunFile:
    """Parse and check a run file; relative paths become absolute against its folder.

    Strict: not UTF-8, not YAML, a key given twice at any depth (two `set:` blocks too), a config key given both
    dotted and nested in `set:`, or a key whose value is not of its type is a ConfigError naming the file and the key."""
    path = Path(path).expanduser().resolve()
    where = f"run file {str(path)!r}"
    data = read_yaml(path, "run file")
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must hold a mapping (dataset: ..., preset: ..., set: {{...}}), got {type(data).__name__}")
    unknown = [k for k in data if str(k) not in RUN_KEYS]
    if unknown:
        hint = " (config keys go under `set:`)" if any(str(k) in Config.model_fields for k in unknown) else ""
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}{hint}; allowed keys: {', '.join(RUN_KEYS)}")
    for key, value in data.items():
        if key != "set":
            _check_text(where, key, value)
    values: dict[str, Any] = {}
    for key in (k for k in RUN_KEYS if k in data and RUN_KEYS[k] is not None):
        value = data[key]
        if key in _PATH_KEYS:
            value = _relative_to(path.parent, value)
        values[RUN_KEYS[key]] = value  # type: ignore[index]
    sets = _set_section(where, data.get("set"))
    for key, value in sets.items():
        if key in values and not _same(values[key], value):
            named = next(k for k, v in RUN_KEYS.items() if v == key)
            raise ConfigError(f"{where} gives {key} twice: {named}: {values[key]!r} and set: {key}: {value!r}; keep one")
        values[key] = value
    preset = data.get("preset")
    if preset is not None and preset.endswith((".yaml", ".yml")):
        preset = _relative_to(path.parent, preset)
    return RunFile(path, preset, values)


def _check_text(where: str, key: str, value: Any) -> None:
    """A run-file key other than `set` holds one text value, as the command-line option it stands for."""
    what = "a path" if key in _PATH_KEYS else "a URL" if key == "base_url" else "a name"
    if value is None:
        raise ConfigError(f"{where}: `{key}:` has no value; give {what} or remove the line")
    if not isinstance(value, str):
        kind = {bool: "true/false", int: "a number", float: "a number", list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)
        quote = f' (quote it: {key}: "{value}")' if isinstance(value, (bool, int, float)) else ""
        raise ConfigError(f"{where}: `{key}` must be {what} (one string), got {kind} {value!r}{quote}")
    if not value.strip():
        raise ConfigError(f"{where}: `{key}:` is empty; give {what} or remove the line")


def _relative_to(folder: Path, text: str) -> str:
    if "://" in text:
        return text
    p = Path(text).expanduser()
    return str(p if p.is_absolute() else (folder / p).resolve())


def _set_section(where: str, raw: Any) -> dict[str, Any]:
    """`set:` as a mapping ({key: value}, nested sections allowed) or a list of "key=value" strings."""
    if raw is None:
        return {}
    if isinstance(raw, list):
        out: dict[str, Any] = {}
        for item in raw:
            if not isinstance(item, str):
                raise ConfigError(f"{where}: an item of the `set` list is {item!r}, not a key=value string (e.g. - train.lr=0.01)")
            for key, value in parse_overrides([item]).items():
                if key in out and not _same(out[key], value):
                    raise ConfigError(f"{where}: set gives {key} twice ({out[key]!r} and {value!r}); keep one")
                out[key] = value
        return out
    if isinstance(raw, dict):
        return _flatten({str(k): v for k, v in raw.items()}, where=where)
    raise ConfigError(f"{where}: `set` must be a mapping of config keys (train.lr: 0.01) or a list of key=value strings")


def _flatten(data: Mapping[str, Any], prefix: str = "", where: str | None = None) -> dict[str, Any]:
    """{"a": {"b": 1}, "c.d": 2} -> {"a.b": 1, "c.d": 2}; a mapping stays whole where its key is a plain field.
    With `where` (a run file), a key reached twice (`train.lr` and `train: {lr: ...}`) is an error naming both forms."""
    out: dict[str, Any] = {}
    spelled: dict[str, str] = {}  # flat key -> how the file wrote it
    for key, value in data.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and _is_section(full):
            inner = _flatten(value, f"{full}.", where)
            forms = {k: f"{full}: {{{k[len(full) + 1:]}: ...}}" for k in inner}
        else:
            inner, forms = {full: value}, {full: full}
        for k, v in inner.items():
            if where is not None and k in out:
                raise ConfigError(
                    f"{where}: set gives {k} twice, as `{spelled[k]}` ({out[k]!r}) and as `{forms[k]}` ({v!r}); keep one form"
                )
            out[k], spelled[k] = v, forms[k]
    return out


def _is_section(key: str) -> bool:
    from pydantic import BaseModel

    model: Any = Config
    for part in key.split("."):
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            return False
        model = fields[part].annotation
    return isinstance(model, type) and issubclass(model, BaseModel)


def flag_overrides(pairs: Iterable[tuple[str, Any]]) -> list[str]:
    """Overrides that come from a command's own flags ((key, value) pairs; None values are skipped), marked so
    `resolve` can tell them from `--set` items and refuse a disagreement."""
    return [f"{FLAG}{k}={v}" for k, v in pairs if v is not None]


def _same(a: Any, b: Any) -> bool:
    return a == b or str(a) == str(b)


def _command_line(
    dataset: str | None, overrides: Iterable[str] | None, artifacts: str | None, video_root: str | None, video_list: str | None,
    strict: bool = True,
) -> dict[str, Any]:
    """The command line's settings as one {key: value} layer. A flag and a `--set` that disagree are an error
    naming the key; so are two `--set` for one key (`strict`; else the later wins, as in `Config.override`)."""
    flags: dict[str, Any] = {}
    if dataset is not None:
        flags["dataset.name"] = dataset
    if video_root is not None:
        flags["dataset.video_root"] = str(Path(video_root).expanduser().resolve())
    if video_list is not None:
        flags["dataset.video_list"] = str(Path(video_list).expanduser().resolve())
    if artifacts is not None:
        flags["artifacts"] = artifacts
    given: dict[str, Any] = {}
    for item in overrides or []:
        if item.startswith(FLAG):
            flags.update(parse_overrides([item[len(FLAG):]]))
            continue
        for key, value in parse_overrides([item]).items():
            if strict and key in given and not _same(given[key], value):
                raise ConfigError(f"--set gives {key} twice ({key}={given[key]!r} and {key}={value!r}); give it once")
            given[key] = value
    for key, value in flags.items():
        if key in given and not _same(given[key], value):
            raise ConfigError(f"the command's flag gives {key}={value!r} but --set gives {key}={given[key]!r}; give one of them")
    return {**flags, **given}


def resolve(
    dataset: str | None = None,
    preset: str | None = None,
    overrides: Iterable[str] | None = None,
    artifacts: str | None = None,
    video_root: str | None = None,
    video_list: str | None = None,
    run_file: str | os.PathLike[str] | RunFile | None = None,
    require_dataset: bool = True,
    strict: bool = True,
) -> Resolved:
    """Defaults < preset < run file < command line (the arguments), with each value's origin.

    Without a dataset anywhere it is an error (`require_dataset`), else the fields' defaults decide.
    `strict`: a key given twice in `overrides` with different values is an error (what a user typed);
    library callers that build override lists may pass False (the later value wins)."""
    rf = run_file if isinstance(run_file, RunFile) or run_file is None else read_run_file(run_file)
    cli = _command_line(dataset, overrides, artifacts, video_root, video_list, strict)
    file_values = rf.values if rf else {}
    name = cli.get("dataset.name", file_values.get("dataset.name"))
    if name is None and require_dataset:
        where = f" or `dataset: NAME` in {rf.path}" if rf else f" or write `dataset: NAME` into a run file ({RUN_FILE} in the working folder, or --config FILE)"
        raise ConfigError(f"no dataset given: pass --dataset NAME (DATASET=NAME for make){where}; `fsar datasets` lists them")
    if preset is None and rf is not None and rf.preset is not None:
        preset = rf.preset
    if preset is None and name is not None:
        preset = name if name in list_presets() else ("demo" if name == "synthetic" else None)
    preset_data = read_preset(preset) if preset is not None else {}
    preset_label = f"preset {preset_data.get('preset', preset)}" if preset is not None else None
    layers: list[tuple[str, dict[str, Any]]] = []
    if rf is not None and file_values:
        layers.append(("run file", file_values))
    if cli:
        layers.append(("command line", cli))
    named = [(f"run file {str(rf.path)!r}" if label == "run file" and rf else label, values) for label, values in layers]
    cfg = layered_config(preset, named)
    # start-up: the CLI reads run files before any dataset module loads
    from pipeline.datasets import DatasetError, list_datasets

    if cfg.dataset.name not in list_datasets():
        raise DatasetError(f"unknown dataset {cfg.dataset.name!r}; choose one of {', '.join(list_datasets())}")
    origins: dict[str, str] = {}
    if preset_label is not None:
        for key in _flatten({k: v for k, v in preset_data.items() if k != "preset"}):
            origins[key] = preset_label
    for label, values in layers:
        for key, value in values.items():
            for leaf in _leaves(key, value):
                origins[leaf] = label
    return Resolved(cfg, origins, preset, rf)


def _leaves(key: str, value: Any) -> list[str]:
    if isinstance(value, Mapping) and _is_section(key):
        return [leaf for k, v in value.items() for leaf in _leaves(f"{key}.{k}", v)]
    return [key]


def build_config(
    dataset: str | None,
    preset: str | None = None,
    overrides: Iterable[str] | None = None,
    artifacts: str | None = None,
    video_root: str | None = None,
    video_list: str | None = None,
    run_file: str | os.PathLike[str] | RunFile | None = None,
    require_dataset: bool = False,
    strict: bool = False,
) -> Config:
    """The Config of a run: preset (default: the dataset's own, else the demo for `synthetic`) < run file
    (`run_file`; None = none) < the given values; see `resolve`. Without any dataset: the fields' defaults.
    For library callers: `overrides` may repeat a key (the later wins) unless `strict`; a flag value and an
    override that disagree are always an error."""
    return resolve(dataset, preset, overrides, artifacts, video_root, video_list, run_file, require_dataset, strict).config

"""The pipeline as data: one registry of stages, and the plan a config implies.

Every stage module has `run(config, inputs, store) -> ArtifactRef` and `plan_fields(config, inputs) ->
dict` (what its version hashes, computed without doing the work) and `FORMAT_VERSION`. A stage's
version is `compute_version(stage, FORMAT_VERSION, plan_fields(...), inputs)`, and its inputs are the
versions that the *same config* implies for its upstream stages, never the newest ones on disk. So
from a config alone every version is known before anything runs:

    for p in plan(cfg):                      # `fsar plan --dataset D ...`
        print(p.stage, p.version, p.status, p.inputs)

`run_stage(name, cfg)` runs one stage on exactly the upstream versions `plan` shows; a missing one is
an error naming the stage to run first, except a stage's *prerequisites*: derived artifacts the registry
builds first when they are missing (evaluate's vision prefix: a cache of the frames and checkpoint it
already reads). `pins` ({stage: version}, `--input STAGE=VERSION`) replace a planned upstream version by
an existing artifact. `with_prerequisites` tells the flows which stages a chosen set implies.

The CLI, the Prefect flows and the tests all read the stage table from here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from pipeline.artifacts import ArtifactRef, ArtifactStore, compute_version
from pipeline.config import Config
from pipeline.contract import StageError
from pipeline.errors import FsarError

__all__ = [
    "PIPELINE",
    "STAGES",
    "Planned",
    "StageSpec",
    "parse_pins",
    "plan",
    "planned_ref",
    "prerequisites",
    "resolve_inputs",
    "run_stage",
    "with_prerequisites",
]


@dataclass(frozen=True)
class StageSpec:
    """One stage: its module, the stages it reads, and the config sections its version depends on."""

    name: str
    module: str  # has run(config, inputs, store), plan_fields(config, inputs), FORMAT_VERSION
    upstream: tuple[str, ...]  # stages whose artifacts it reads (in the order they are passed)
    reads: tuple[str, ...]  # config sections read (documentation and `fsar plan`)
    summary: str
    upstream_fn: str | None = None  # name of a module function cfg -> upstream tuple, when config decides it
    enabled_fn: str | None = None  # name of a module function cfg -> bool, for a stage the config may switch off
    # upstream stages built first when missing (derived from inputs this stage reads anyway; never an LLM or a training run)
    prerequisites: tuple[str, ...] = ()

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)

    def upstream_of(self, cfg: Any) -> tuple[str, ...]:
        if self.upstream_fn is None:
            return self.upstream
        return tuple(getattr(self.load(), self.upstream_fn)(cfg))

    def enabled(self, cfg: Any) -> bool:
        return self.enabled_fn is None or bool(getattr(self.load(), self.enabled_fn)(cfg))

    def version(self, cfg: Any, inputs: Mapping[str, ArtifactRef]) -> str:
        module = self.load()
        return compute_version(self.name, module.FORMAT_VERSION, module.plan_fields(cfg, dict(inputs)), dict(inputs))


PIPELINE: tuple[StageSpec, ...] = (
    StageSpec("descriptions", "pipeline.descriptions.stage", (), ("dataset", "protocol", "descriptions"),
              "ordered sub-action descriptions per class (LLM)"),
    StageSpec("frames", "pipeline.frames.stage", (), ("dataset", "protocol", "frames"),
              "videos decoded into Parquet shards of JPEG frames"),
    StageSpec("audit", "pipeline.audit.stage", ("descriptions", "frames"), ("audit", "descriptions", "model", "protocol"),
              "descriptions checked against the videos under the frozen backbone (order agreement per class)"),
    StageSpec("embeddings", "pipeline.embeddings.stage", ("descriptions",), ("model", "protocol", "embeddings", "descriptions"),
              "frozen text-prefix states of every prompt", upstream_fn="upstream_for"),
    StageSpec("train", "pipeline.train.stage", ("frames", "embeddings"), ("model", "protocol", "train"),
              "Task-Adapter++ adapters trained on episodes"),
    StageSpec("prefix", "pipeline.prefix.stage", ("frames", "train"), ("model", "protocol", "evaluate"),
              "frozen vision-prefix states of every evaluated video", upstream_fn="upstream_for", enabled_fn="enabled"),
    StageSpec("evaluate", "pipeline.evaluate.stage", ("frames", "embeddings", "train"), ("model", "protocol", "evaluate", "audit"),
              "seeded test episodes, per-episode table, report", upstream_fn="upstream_for", prerequisites=("prefix",)),
)
# Stages outside the benchmark pipeline (the demo's backbone pre-training reads only its config).
EXTRA: tuple[StageSpec, ...] = (
    StageSpec("backbone", "pipeline.pretrain.stage", (), ("backbone", "dataset", "frames", "model"),
              "demo only: a tiny CLIP pre-trained on captioned synthetic frames"),
)
STAGES: dict[str, StageSpec] = {s.name: s for s in (*PIPELINE, *EXTRA)}

# Errors that make a plan "blocked" (bad or missing input), not a crash; anything else is a bug and raises.
_BLOCKING: tuple[type[Exception], ...] = (FsarError, FileNotFoundError)


@dataclass
class Planned:
    """One stage of a plan: the version the config implies, and whether it exists, must be built, or is blocked."""

    stage: str
    version: str | None
    status: str  # "exists" | "build" | "blocked"
    inputs: dict[str, str] = field(default_factory=dict)  # {upstream stage: version}
    reason: str | None = None  # why blocked, or what is wrong with a broken artifact that will be rebuilt
    pinned: bool = False  # the version came from --input, not from the config

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "version": self.version, "status": self.status, "inputs": self.inputs,
                "reason": self.reason, "pinned": self.pinned}


def parse_pins(items: Sequence[str] | None) -> dict[str, str]:
    """`["train=abc123", ...]` -> {"train": "abc123"}; names must be stages."""
    pins: dict[str, str] = {}
    for item in items or []:
        stage, sep, version = item.partition("=")
        stage, version = stage.strip(), version.strip()
        if not sep or not stage or not version:
            raise StageError(f"--input {item!r} is not of the form STAGE=VERSION (e.g. --input train=0123456789ab)")
        if stage not in STAGES:
            raise StageError(f"--input {item!r}: unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
        pins[stage] = version
    return pins


def plan(cfg: Any, store: ArtifactStore | None = None, pins: Mapping[str, str] | None = None,
         stages: Sequence[str] | None = None) -> list[Planned]:
    """The pipeline for `cfg`, in order: each stage's implied version, its inputs' versions and its status.

    `stages` limits the answer to those stages and what they need. Nothing is built; a stage whose
    version cannot be computed (missing video root, no LLM configured, a missing upstream) is `blocked`
    with the reason, and so is everything downstream of it.
    """
    store = store if store is not None else ArtifactStore(cfg.artifacts)
    pins = dict(pins or {})
    wanted = _closure(cfg, stages) if stages is not None else {s.name for s in PIPELINE if s.enabled(cfg)}
    out: dict[str, Planned] = {}
    for spec in PIPELINE:
        if spec.name in wanted:
            out[spec.name] = _plan_one(spec, cfg, store, pins, out)
    return list(out.values())


def _closure(cfg: Any, stages: Sequence[str]) -> set[str]:
    need, todo = set(), list(stages)
    while todo:
        name = todo.pop()
        if name not in STAGES:
            raise StageError(f"unknown stage {name!r}; choose from {', '.join(s.name for s in PIPELINE)}")
        if name not in need:
            need.add(name)
            todo.extend(STAGES[name].upstream_of(cfg))
    return need


def _plan_one(spec: StageSpec, cfg: Any, store: ArtifactStore, pins: Mapping[str, str], done: Mapping[str, Planned]) -> Planned:
    dataset = cfg.dataset.name
    if spec.name in pins:
        version = pins[spec.name]
        state, problem = store.status(spec.name, dataset, version)
        if state != "exists":
            why = f"pinned version {version} does not exist under {store.root}" if state == "missing" else f"pinned version {version} is broken ({problem})"
            return Planned(spec.name, version, "blocked", {}, why, pinned=True)
        ins = {k: v["version"] for k, v in store.manifest(store.ref(spec.name, dataset, version)).get("inputs", {}).items()}
        return Planned(spec.name, version, "exists", ins, pinned=True)
    try:
        upstream = spec.upstream_of(cfg)
    except _BLOCKING as exc:
        return Planned(spec.name, None, "blocked", {}, _one_line(exc))
    ups = {u: done[u] if u in done else _plan_one(STAGES[u], cfg, store, pins, done) for u in upstream}
    inputs = {u: p.version for u, p in ups.items() if p.version is not None}
    blocked = [u for u, p in ups.items() if p.status == "blocked"]
    if blocked:
        return Planned(spec.name, None, "blocked", inputs, f"needs {blocked[0]}, which is blocked: {ups[blocked[0]].reason}")
    refs = {u: store.ref(u, dataset, v) for u, v in inputs.items()}
    try:
        version = spec.version(cfg, refs)
    except _BLOCKING as exc:
        return Planned(spec.name, None, "blocked", inputs, _one_line(exc))
    state, problem = store.status(spec.name, dataset, version)
    if state == "exists":
        return Planned(spec.name, version, "exists", inputs)
    return Planned(spec.name, version, "build", inputs, f"the artifact there is broken: {problem}" if state == "broken" else None)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def resolve_inputs(cfg: Any, name: str, store: ArtifactStore | None = None, pins: Mapping[str, str] | None = None,
                   built: Mapping[str, ArtifactRef] | None = None, needed_by: str | None = None) -> dict[str, ArtifactRef]:
    """The upstream artifacts of stage `name` that `plan` shows for this config (or `pins`, or `built` refs
    from this same run); a missing, blocked or broken one is an error naming what to run first (and
    `needed_by`, default `name`, as the one that needs it)."""
    store = store if store is not None else ArtifactStore(cfg.artifacts)
    spec = STAGES[name]
    built = dict(built or {})
    pins = {**{k: v.version for k, v in built.items()}, **dict(pins or {})}
    upstream = spec.upstream_of(cfg)
    if not upstream:
        return {}
    planned = {p.stage: p for p in plan(cfg, store, pins, stages=list(upstream))}
    return {up: built.get(up) or _existing(planned[up], cfg, store, needed_by or name) for up in upstream}


def planned_ref(cfg: Any, stage: str, store: ArtifactStore | None = None, pins: Mapping[str, str] | None = None,
                needed_by: str = "this command") -> ArtifactRef:
    """The existing artifact of `stage` that this config implies (or `pins`); else an error naming the fix."""
    store = store if store is not None else ArtifactStore(cfg.artifacts)
    planned = {p.stage: p for p in plan(cfg, store, pins, stages=[stage])}
    return _existing(planned[stage], cfg, store, needed_by)


def _existing(p: Planned, cfg: Any, store: ArtifactStore, needed_by: str) -> ArtifactRef:
    if p.status == "exists":
        return store.ref(p.stage, cfg.dataset.name, p.version)
    if p.status == "blocked":
        raise StageError(f"{needed_by} needs a {p.stage} artifact, but planning it is blocked: {p.reason}")
    hint = f"`fsar {p.stage} --dataset {cfg.dataset.name}` with the same preset and --set options (or `make full`)"
    if p.reason:  # it is there but broken: never used, and never silently rebuilt over
        ref = store.ref(p.stage, cfg.dataset.name, p.version)
        raise StageError(
            f"{needed_by} needs the {p.stage} artifact {ref.dataset}/{ref.version} that this config implies, and it is broken "
            f"({p.reason.split(': ', 1)[-1]}): move {ref.path} away or delete it, then run {hint}"
        )
    head = f"{needed_by} needs the {p.stage} artifact {cfg.dataset.name}/{p.version} that this config implies, and it does not exist"
    others = _other_versions(p, cfg, store)
    if not others:
        raise StageError(f"{head}; run {hint} first, or pin an existing one with --input {p.stage}=VERSION")
    raise StageError("\n".join([f"{head}.", *others, f"Or build it: run {hint}."]))


_SHOWN_VERSIONS = 3  # other versions listed in a missing-upstream error
_SHOWN_FIELDS = 4  # differing fields listed per version


def _other_versions(p: Planned, cfg: Any, store: ArtifactStore) -> list[str]:
    """Lines naming the existing versions of `p.stage` for this dataset (newest first): when each was made,
    the fields where it differs from this run (there vs here), and the flags that would use it."""
    try:
        found = [m for m in store.manifests(p.stage, cfg.dataset.name) if m.get("version") != p.version]
    except FsarError:
        return []
    if not found:
        return []
    try:  # what this run's version hashes (cheap: planning computed it already)
        refs = {u: store.ref(u, cfg.dataset.name, v) for u, v in p.inputs.items()}
        here = _flat_fields(p.stage, STAGES[p.stage].load().plan_fields(cfg, refs), p.inputs)
    except Exception:  # noqa: BLE001 - the listing is a hint; never hide the real error behind another
        here = None
    lines = [f"Other {p.stage} versions of {cfg.dataset.name} exist under {store.root} (newest first; differences: that version vs this run):"]
    newest = sorted(found, key=lambda m: (m.get("created", ""), m.get("version", "")), reverse=True)
    for m in newest[:_SHOWN_VERSIONS]:
        version, made = m.get("version", "?"), str(m.get("created", "?"))[:16].replace("T", " ")
        there = _flat_fields(p.stage, m.get("config", {}), {k: v.get("version") for k, v in m.get("inputs", {}).items()})
        diff = _differences(there, here) if here is not None else []
        shown = "; ".join(f"{k}: {_short(a)} vs {_short(b)}" for k, a, b in diff[:_SHOWN_FIELDS])
        more = f"; and {len(diff) - _SHOWN_FIELDS} more" if len(diff) > _SHOWN_FIELDS else ""
        lines.append(f"  {version}  made {made} UTC  differs in: {shown or 'nothing this run can compare'}{more}")
        settings = [(k, a) for k, a, _ in diff if _is_config_key(k) and not isinstance(a, (dict, list))]
        url = (m.get("run") or {}).get("base_url")  # not hashed, but needed to reach the same server
        if p.stage == "descriptions" and url and url != cfg.descriptions.base_url and any(k == "descriptions.backend" for k, _ in settings):
            settings.append(("descriptions.base_url", url))
        sets = " ".join(f"--set {k}={_value(a)}" for k, a in settings)
        use = f"    use it: --input {p.stage}={version} (make: INPUT={p.stage}={version})"
        lines.append(use + (f", or give the settings it was made with: {sets}" if sets else ""))
    if len(newest) > _SHOWN_VERSIONS:
        lines.append(f"  ... and {len(newest) - _SHOWN_VERSIONS} older (`fsar catalog` lists them)")
    return lines


def _flat_fields(stage: str, fields: Mapping[str, Any], inputs: Mapping[str, Any]) -> dict[str, Any]:
    """A version's hashed fields as dotted keys (config sections keep their name; the stage's own flat fields get
    its name as prefix, as in `descriptions.backend`), plus `inputs.<stage>` versions."""
    import json


    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = value

    for key, value in json.loads(json.dumps(dict(fields), default=str)).items():
        walk(key if key in Config.model_fields and isinstance(value, Mapping) else f"{stage}.{key}", value)
    for name, version in inputs.items():
        out[f"inputs.{name}"] = version
    return out


def _differences(there: Mapping[str, Any], here: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    keys = list(dict.fromkeys([*there, *here]))
    missing = object()

    def value(fields: Mapping[str, Any], key: str) -> Any:  # a late field is absent where it holds its default
        return fields[key] if key in fields else _late_default(key, missing)

    diff = [(k, value(there, k), value(here, k)) for k in keys if value(there, k) != value(here, k)]
    # the fields a user sets first (backend, model, ...), then the rest; inputs last
    diff.sort(key=lambda d: (d[0].startswith("inputs."), not _is_config_key(d[0])))
    return [(k, "(absent)" if a is missing else a, "(absent)" if b is missing else b) for k, a, b in diff]


def _late_default(key: str, otherwise: Any) -> Any:
    """The default of a late field (`Section.LATE_FIELDS`, left out of versions at its default) named `section.field`."""
    section, _, name = key.partition(".")
    field = Config.model_fields.get(section)
    model = field.annotation if field is not None else None
    if isinstance(model, type) and name in getattr(model, "LATE_FIELDS", ()):
        return model.model_fields[name].default
    return otherwise


def _is_config_key(key: str) -> bool:
    from pydantic import BaseModel


    model: Any = Config
    for part in key.split("."):
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return False
        model = fields[part].annotation
    return not (isinstance(model, type) and issubclass(model, BaseModel))


def _short(value: Any, limit: int = 40) -> str:
    text = "None" if value is None else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _value(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def prerequisites(name: str, cfg: Any) -> tuple[str, ...]:
    """The stages `run_stage(name, cfg)` builds first when missing: the spec's prerequisites this config reads."""
    spec = STAGES[name]
    ups = spec.upstream_of(cfg) if spec.prerequisites else ()
    return tuple(p for p in spec.prerequisites if p in ups and STAGES[p].enabled(cfg))


def with_prerequisites(cfg: Any, chosen: Sequence[str]) -> list[str]:
    """`chosen` stages plus the prerequisites they imply, in pipeline order (what a flow runs for them)."""
    wanted = set(chosen) | {p for name in chosen if name in STAGES for p in prerequisites(name, cfg)}
    return [s.name for s in (*PIPELINE, *EXTRA) if s.name in wanted]


def run_stage(name: str, cfg: Any, inputs: Mapping[str, ArtifactRef] | None = None, *, pins: Mapping[str, str] | None = None,
              store: ArtifactStore | None = None, on_built: Callable[[str, ArtifactRef], None] | None = None,
              **kwargs: Any) -> ArtifactRef:
    """Run one stage on the upstream versions its config implies (or `inputs` given explicitly), after building its
    missing prerequisites (skipped when they exist; `on_built(stage, ref)` hears of each)."""
    if name not in STAGES:
        raise StageError(f"unknown stage {name!r}; choose from {', '.join(STAGES)}")
    store = store if store is not None else ArtifactStore(cfg.artifacts)
    given = dict(inputs) if inputs is not None else None
    built: dict[str, ArtifactRef] = {}
    for pre in prerequisites(name, cfg):
        if (given is not None and pre in given) or pre in (pins or {}):
            continue
        needs = STAGES[pre].upstream_of(cfg)
        if given is not None and all(u in given for u in needs):
            pre_inputs = {u: given[u] for u in needs}
        else:
            pre_inputs = resolve_inputs(cfg, pre, store, pins, built=given, needed_by=name)
        built[pre] = STAGES[pre].load().run(cfg, pre_inputs, store)
        if on_built is not None:
            on_built(pre, built[pre])
    if given is None:
        given = resolve_inputs(cfg, name, store, pins, built=built)
    else:
        given.update(built)
    run: Callable[..., ArtifactRef] = STAGES[name].load().run
    return run(cfg, given, store, **kwargs)

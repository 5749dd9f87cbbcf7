"""The versioned artifact store.

Layout: ``<root>/<stage>/<dataset>/<version>/`` holding the data files and ``manifest.json``.
The manifest is written last and marks completion: a folder without one is never read.
Writes go to a staging folder (``<root>/.staging/...``) and are renamed into place (local roots) or
uploaded with the manifest last (other fsspec roots).

    from pipeline import artifacts
    artifacts.catalog()                        # every complete artifact, as a DataFrame
    artifacts.load("descriptions", "hmdb51")   # the stage's main table, as a DataFrame

A version is a content hash of (stage, stage format version, the config fields the stage reads,
the versions of its inputs): the same inputs give the same version, and the stage is skipped.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import pandas as pd

__all__ = [
    "ArtifactError",
    "ArtifactRef",
    "ArtifactStore",
    "Staging",
    "catalog",
    "compute_version",
    "default_root",
    "load",
    "resolve",
]

MANIFEST = "manifest.json"
STAGING = ".staging"
_CHUNK = 1 << 20


class ArtifactError(RuntimeError):
    """An artifact is missing, incomplete or corrupt; the message says which and what to do."""


def default_root() -> str:
    """The artifact root used when none is given: $FSAR_ARTIFACTS, else ./artifacts."""
    return os.environ.get("FSAR_ARTIFACTS") or "artifacts"


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("fsar")
    except Exception:  # noqa: BLE001 - running from a source tree without an install
        return "unknown"


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def compute_version(
    stage: str, format_version: int | str, config: Mapping[str, Any], inputs: Mapping[str, "ArtifactRef"] | None = None
) -> str:
    """Content hash of what determines a stage's output (12 hex digits)."""
    payload = {
        "stage": stage,
        "format": str(format_version),
        "config": config,
        "inputs": {name: f"{ref.stage}/{ref.dataset}/{ref.version}" for name, ref in sorted((inputs or {}).items())},
    }
    return hashlib.sha256(_canonical(payload).encode()).hexdigest()[:12]


def sha256_file(path: str | os.PathLike[str], fs: fsspec.AbstractFileSystem | None = None) -> str:
    h = hashlib.sha256()
    opener = fs.open if fs is not None else open
    with opener(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class ArtifactRef:
    """A pointer to one complete artifact."""

    stage: str
    dataset: str
    version: str
    root: str
    skipped: bool = field(default=False, compare=False)  # True when a stage found it already built

    @property
    def path(self) -> str:
        """Folder of the artifact (a local path, or a URL for remote roots)."""
        return _join(self.root, self.stage, self.dataset, self.version)

    def file(self, name: str) -> str:
        return _join(self.path, name)

    def manifest(self) -> dict[str, Any]:
        return ArtifactStore(self.root).manifest(self)

    def to_dict(self) -> dict[str, str]:
        return {"stage": self.stage, "dataset": self.dataset, "version": self.version, "root": self.root}

    @classmethod
    def from_dict(cls, data: Mapping[str, str]) -> "ArtifactRef":
        return cls(data["stage"], data["dataset"], data["version"], data["root"])

    def __str__(self) -> str:
        return f"{self.stage}/{self.dataset}/{self.version}"


def _join(*parts: str) -> str:
    head, *rest = parts
    return "/".join([head.rstrip("/")] + [p.strip("/") for p in rest])


@dataclass
class Staging:
    """A folder being written; published (manifest last) when the `publish` block exits cleanly."""

    dir: Path  # local folder to write into
    stage: str
    dataset: str
    version: str
    main: str | None = None  # file name of the main table, loaded by `load`
    rows: dict[str, int] = field(default_factory=dict)  # row counts per table, for the manifest
    checksums: dict[str, str] = field(default_factory=dict)  # precomputed sha256 per relative path (optional)
    extra: dict[str, Any] = field(default_factory=dict)  # more manifest fields (a summary, say)

    def path(self, name: str) -> Path:
        p = self.dir / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def write_parquet(self, name: str, df: pd.DataFrame, **kwargs: Any) -> Path:
        """Write a table into the staging folder and count its rows."""
        p = self.path(name)
        tmp = p.with_name(p.name + ".part")
        df.to_parquet(tmp, index=False, **kwargs)
        os.replace(tmp, p)
        self.rows[name] = len(df)
        return p


class ArtifactStore:
    """The artifact store at one root (a local folder or any fsspec URL)."""

    def __init__(self, root: str | os.PathLike[str] | None = None):
        root = os.fspath(root) if root is not None else default_root()
        self.fs, base = fsspec.core.url_to_fs(root)
        self.local = "file" in _protocols(self.fs)
        self.root = str(Path(base).resolve()) if self.local else root.rstrip("/")
        self._base = self.root if self.local else base.rstrip("/")

    # ----------------------------------------------------------------- lookup
    def ref(self, stage: str, dataset: str, version: str) -> ArtifactRef:
        return ArtifactRef(stage, dataset, version, self.root)

    def _fs_path(self, *parts: str) -> str:
        return _join(self._base, *parts)

    def exists(self, stage: str, dataset: str, version: str) -> ArtifactRef | None:
        """The complete artifact of that version, or None (a folder without a manifest is not one)."""
        if self.fs.exists(self._fs_path(stage, dataset, version, MANIFEST)):
            return self.ref(stage, dataset, version)
        return None

    def manifest(self, ref: ArtifactRef) -> dict[str, Any]:
        path = self._fs_path(ref.stage, ref.dataset, ref.version, MANIFEST)
        try:
            with self.fs.open(path, "r") as fh:
                return json.load(fh)
        except FileNotFoundError:
            raise ArtifactError(f"artifact {ref} is incomplete or missing (no {MANIFEST} in {ref.path}); re-run the {ref.stage} stage") from None
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"manifest of artifact {ref} is not valid JSON ({exc}); delete {ref.path} and re-run the {ref.stage} stage") from None

    def manifests(self, stage: str | None = None, dataset: str | None = None) -> list[dict[str, Any]]:
        """Manifests of every complete artifact, oldest first."""
        pattern_stage = stage or "*"
        pattern_dataset = dataset or "*"
        found = self.fs.glob(self._fs_path(pattern_stage, pattern_dataset, "*", MANIFEST))
        out = []
        for path in found:
            rel = path[len(self._base.rstrip("/")) + 1 :] if path.startswith(self._base.rstrip("/")) else path
            parts = rel.strip("/").split("/")
            if len(parts) != 4 or parts[0].startswith("."):
                continue
            try:
                with self.fs.open(path, "r") as fh:
                    m = json.load(fh)
            except (OSError, json.JSONDecodeError):
                continue
            m["path"] = self.ref(parts[0], parts[1], parts[2]).path
            out.append(m)
        out.sort(key=lambda m: (m.get("created", ""), m.get("version", "")))
        return out

    def resolve(self, stage: str, dataset: str, version: str = "latest") -> ArtifactRef:
        """A complete artifact by version, or the newest one for "latest"."""
        if version != "latest":
            ref = self.exists(stage, dataset, version)
            if ref is None:
                raise ArtifactError(
                    f"no complete {stage} artifact {version!r} for dataset {dataset!r} under {self.root}; "
                    f"see artifacts.catalog() for what exists"
                )
            return ref
        found = self.manifests(stage, dataset)
        if not found:
            raise ArtifactError(
                f"no {stage} artifact for dataset {dataset!r} under {self.root}; run `fsar {stage} --dataset {dataset}` first"
            )
        return self.ref(stage, dataset, found[-1]["version"])

    def catalog(self) -> pd.DataFrame:
        """Every complete artifact: stage, dataset, version, created, inputs, path, rows, package."""
        rows = []
        for m in self.manifests():
            rows.append(
                {
                    "stage": m.get("stage"),
                    "dataset": m.get("dataset"),
                    "version": m.get("version"),
                    "created": pd.Timestamp(m["created"]) if m.get("created") else pd.NaT,
                    "inputs": ", ".join(f"{k}={v['stage']}/{v['dataset']}/{v['version']}" for k, v in m.get("inputs", {}).items()),
                    "path": m["path"],
                    "main": m.get("main"),
                    "rows": sum(m.get("rows", {}).values()) if m.get("rows") else None,
                    "package_version": m.get("package_version"),
                }
            )
        cols = ["stage", "dataset", "version", "created", "inputs", "path", "main", "rows", "package_version"]
        return pd.DataFrame(rows, columns=cols)

    def lineage(self, ref: ArtifactRef) -> list[ArtifactRef]:
        """This artifact and every artifact it was made from, depth first."""
        out, seen, todo = [], set(), [ref]
        while todo:
            r = todo.pop()
            if str(r) in seen:
                continue
            seen.add(str(r))
            out.append(r)
            for v in self.manifest(r).get("inputs", {}).values():
                todo.append(ArtifactRef(v["stage"], v["dataset"], v["version"], v.get("root", self.root)))
        return out

    # ------------------------------------------------------------------- read
    def verify(self, ref: ArtifactRef, files: list[str] | None = None) -> None:
        """Check the sha256 of the listed files (default: all) against the manifest."""
        m = self.manifest(ref)
        sums: dict[str, str] = m.get("files", {})
        for name in files if files is not None else list(sums):
            if name not in sums:
                raise ArtifactError(f"file {name!r} is not listed in the manifest of artifact {ref}")
            path = self._fs_path(ref.stage, ref.dataset, ref.version, name)
            try:
                actual = sha256_file(path, self.fs)
            except FileNotFoundError:
                raise ArtifactError(f"file {name!r} of artifact {ref} is missing; delete {ref.path} and re-run the {ref.stage} stage") from None
            if actual != sums[name]:
                raise ArtifactError(
                    f"checksum mismatch for {name!r} in artifact {ref}: the file changed after it was written; "
                    f"delete {ref.path} and re-run the {ref.stage} stage"
                )

    def load(self, stage: str, dataset: str, version: str = "latest", table: str | None = None) -> pd.DataFrame | str:
        """The stage's main table (checksum-verified) as a DataFrame; the folder path if it has none."""
        ref = self.resolve(stage, dataset, version)
        m = self.manifest(ref)
        name = table or m.get("main")
        if not name:
            return ref.path
        self.verify(ref, [name])
        with self.fs.open(self._fs_path(ref.stage, ref.dataset, ref.version, name), "rb") as fh:
            return pd.read_parquet(fh)

    def local_path(self, ref: ArtifactRef) -> Path:
        """Local folder of an artifact (only for local roots)."""
        if not self.local:
            raise ArtifactError(f"artifact root {self.root} is not a local folder; open files with fsspec instead")
        return Path(ref.path)

    # ------------------------------------------------------------------ write
    @contextlib.contextmanager
    def publish(
        self,
        stage: str,
        dataset: str,
        version: str,
        *,
        config: Mapping[str, Any],
        inputs: Mapping[str, ArtifactRef] | None = None,
        main: str | None = None,
        format_version: int | str = 1,
        resume: bool = False,
    ) -> Iterator[Staging]:
        """Write an artifact atomically.

        Yields a `Staging` with a local folder to write into. On clean exit the manifest (with file
        checksums) is written last and the folder is moved into place; on error nothing is published.
        With `resume=True` the staging folder is stable per version and kept on error, so a re-run can
        skip work units it already finished (the stage marks those itself).
        """
        staging_root = self._local_staging_root()
        name = version if resume else f"{version}-{uuid.uuid4().hex[:8]}"
        sdir = staging_root / stage / dataset / name
        if not resume and sdir.exists():
            shutil.rmtree(sdir)
        sdir.mkdir(parents=True, exist_ok=True)
        staging = Staging(sdir, stage, dataset, version, main=main)
        try:
            yield staging
        except BaseException:
            if not resume:
                shutil.rmtree(sdir, ignore_errors=True)
            raise
        self._finish(staging, config=config, inputs=inputs or {}, format_version=format_version)

    def _local_staging_root(self) -> Path:
        if self.local:
            return Path(self.root) / STAGING
        tmp = Path(os.environ.get("FSAR_STAGING", Path.home() / ".cache" / "fsar" / "staging"))
        return tmp / hashlib.sha256(self.root.encode()).hexdigest()[:10]

    def _finish(self, staging: Staging, *, config: Mapping[str, Any], inputs: Mapping[str, ArtifactRef], format_version: int | str) -> None:
        files = sorted(
            p.relative_to(staging.dir).as_posix()
            for p in staging.dir.rglob("*")
            if p.is_file() and not p.name.startswith(".") and p.name != MANIFEST and not p.name.endswith(".part")
        )
        if staging.main and staging.main not in files:
            raise ArtifactError(f"stage {staging.stage} declared main table {staging.main!r} but did not write it")
        sums = {f: staging.checksums.get(f) or sha256_file(staging.dir / f) for f in files}
        manifest = {
            "stage": staging.stage,
            "dataset": staging.dataset,
            "version": staging.version,
            "format_version": str(format_version),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
            "package_version": _package_version(),
            "main": staging.main,
            "inputs": {k: v.to_dict() for k, v in inputs.items()},
            "config": json.loads(_canonical(config)),
            "rows": staging.rows,
            "files": sums,
            **staging.extra,
        }
        # Drop hidden helper files (per-unit completion markers) before publishing.
        for p in list(staging.dir.rglob(".*")):
            if p.is_file():
                p.unlink()
        if self.local:
            (staging.dir / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
            final = Path(self._fs_path(staging.stage, staging.dataset, staging.version))
            final.parent.mkdir(parents=True, exist_ok=True)
            if (final / MANIFEST).exists():  # someone published the same version meanwhile: same content
                shutil.rmtree(staging.dir, ignore_errors=True)
                return
            if final.exists():  # an incomplete folder (no manifest) from a crashed copy: never read, replace it
                shutil.rmtree(final)
            os.replace(staging.dir, final)
        else:
            target = self._fs_path(staging.stage, staging.dataset, staging.version)
            for f in files:
                self.fs.put_file(str(staging.dir / f), _join(target, f))
            with self.fs.open(_join(target, MANIFEST), "w") as fh:
                fh.write(json.dumps(manifest, indent=2, default=str))
            shutil.rmtree(staging.dir, ignore_errors=True)


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    proto = fs.protocol
    return tuple(proto) if isinstance(proto, (tuple, list)) else (proto,)


# ----------------------------------------------------------- module helpers
def catalog(root: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """Every complete artifact under `root` (None: the configured default) as a DataFrame."""
    return ArtifactStore(root).catalog()


def load(stage: str, dataset: str, version: str = "latest", root: str | os.PathLike[str] | None = None) -> pd.DataFrame | str:
    """The main table of a stage's artifact as a DataFrame (or its folder path if it has no table)."""
    return ArtifactStore(root).load(stage, dataset, version)


def resolve(stage: str, dataset: str, version: str = "latest", root: str | os.PathLike[str] | None = None) -> ArtifactRef:
    """The reference of a complete artifact ("latest" = newest)."""
    return ArtifactStore(root).resolve(stage, dataset, version)

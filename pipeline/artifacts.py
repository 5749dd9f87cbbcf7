"""The versioned artifact store.

Layout: ``<root>/<stage>/<dataset>/<version>/`` holding the data files and ``manifest.json``.
The manifest is written last and marks completion: a folder without one is never read.
Writes go to a staging folder (``<root>/.staging/...``) and are renamed into place, one writer per
version at a time (a file lock under ``<root>/.locks``). Roots are local folders or ``file://`` URLs.
Every file is listed in the manifest with its sha256 and size: readers check small files against their
sha256 before use (`verified_path`), `problems(ref)` / `fsar verify` check whole artifacts, and a broken
artifact is listed by the catalog with its problem, never hidden and never taken as built.

    from pipeline import artifacts
    artifacts.catalog()                        # every complete artifact, as a DataFrame
    artifacts.load("descriptions", "hmdb51")   # the stage's main table, as a DataFrame

A version is a content hash of (stage, stage format version, the config fields the stage reads,
the versions of its inputs): the same inputs give the same version, and the stage is skipped.
"""

from __future__ import annotations

import contextlib
import contextvars
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

from pipeline.atomic import atomic_path, atomic_write_text
from pipeline.errors import FsarError

__all__ = [
    "ArtifactError",
    "ArtifactRef",
    "ArtifactStore",
    "Staging",
    "catalog",
    "broken_message",
    "compute_version",
    "default_root",
    "file_fingerprint",
    "sha256_file",
    "load",
    "record_read",
    "recording_reads",
    "resolve",
]

MANIFEST = "manifest.json"
STAGING = ".staging"
LOCKS = ".locks"
_CHUNK = 1 << 20


class ArtifactError(FsarError, RuntimeError):
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


_FINGERPRINTS: dict[tuple[str, int, int], str] = {}


def file_fingerprint(path: str | os.PathLike[str]) -> str:
    """``sha256:<hex>`` of a local file (what versions hash for a weights file, never its path).

    A file inside an artifact folder is checked against that artifact's manifest first, so a corrupt
    checkpoint is an error, not a new version. Cached per (path, size, mtime) within the process.
    """
    p = Path(path).expanduser().resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _FINGERPRINTS:
        digest = sha256_file(p)
        _check_in_artifact(p, digest)
        _FINGERPRINTS[key] = digest
    return f"sha256:{_FINGERPRINTS[key]}"


def _check_in_artifact(path: Path, digest: str) -> None:
    for folder in list(path.parents)[:4]:
        manifest = folder / MANIFEST
        if not manifest.is_file():
            continue
        try:
            listed = json.loads(manifest.read_text(encoding="utf-8")).get("files", {})
        except (OSError, ValueError):
            return
        rel = path.relative_to(folder).as_posix()
        if rel in listed and listed[rel] != digest:
            ref = ArtifactRef(folder.parents[1].name, folder.parent.name, folder.name, str(folder.parents[2]))
            raise ArtifactError(broken_message(ref, f"file {rel!r} does not match its sha256 in the manifest"))
        return


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
        """Folder of the artifact."""
        return _join(self.root, self.stage, self.dataset, self.version)

    def file(self, name: str) -> str:
        return _join(self.path, name)

    def manifest(self) -> dict[str, Any]:
        return ArtifactStore(self.root).manifest(self)

    def to_dict(self) -> dict[str, str]:
        return {"stage": self.stage, "dataset": self.dataset, "version": self.version, "root": self.root}

    @classmethod
    def from_dict(cls, data: Mapping[str, str], root: str | None = None) -> "ArtifactRef":
        """From `to_dict` output, or a manifest's inputs entry (which holds no root: give it)."""
        return cls(data["stage"], data["dataset"], data["version"], data.get("root") or root or default_root())

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
        with atomic_path(p) as tmp:
            df.to_parquet(tmp, index=False, **kwargs)
        self.rows[name] = len(df)
        return p


class ArtifactStore:
    """The artifact store at one root: a local folder or a ``file://`` URL (other fsspec roots are refused)."""

    def __init__(self, root: str | os.PathLike[str] | None = None):
        root = os.fspath(root) if root is not None else default_root()
        self.fs, base = fsspec.core.url_to_fs(root)
        protocols = _protocols(self.fs)
        if "file" not in protocols and "local" not in protocols:
            raise ArtifactError(
                f"artifact root {root!r}: protocol {protocols[0]!r} is not supported; use a local folder or a file:// URL "
                f"(for a cluster, a shared file system mounted at the same path on every machine)"
            )
        self.local = True  # kept for callers: every supported root is a local folder
        self.root = str(Path(base).expanduser().resolve())
        self._base = self.root

    # ----------------------------------------------------------------- lookup
    def ref(self, stage: str, dataset: str, version: str) -> ArtifactRef:
        return ArtifactRef(stage, dataset, version, self.root)

    def _fs_path(self, *parts: str) -> str:
        return _join(self._base, *parts)

    def status(self, stage: str, dataset: str, version: str) -> tuple[str, str | None]:
        """("exists", None), ("missing", None) or ("broken", problem) for one version (cheap checks only)."""
        folder = Path(self._fs_path(stage, dataset, version))
        if not folder.exists():
            return "missing", None
        problems = self.problems(self.ref(stage, dataset, version), full=False)
        return ("broken", problems[0]) if problems else ("exists", None)

    def exists(self, stage: str, dataset: str, version: str) -> ArtifactRef | None:
        """The intact artifact of that version, or None when there is none; a broken one is an error naming the fix."""
        state, problem = self.status(stage, dataset, version)
        if state == "broken":
            raise ArtifactError(broken_message(self.ref(stage, dataset, version), problem or "broken"))
        return self.ref(stage, dataset, version) if state == "exists" else None

    def _read_manifest(self, ref: ArtifactRef) -> tuple[dict[str, Any] | None, str | None]:
        path = self._fs_path(ref.stage, ref.dataset, ref.version, MANIFEST)
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            return None, f"no {MANIFEST}"
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return None, f"{MANIFEST} is not valid JSON ({exc})"
        if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
            return None, f"{MANIFEST} has no file list"
        return data, None

    def manifest(self, ref: ArtifactRef) -> dict[str, Any]:
        data, problem = self._read_manifest(ref)
        if data is None:
            if problem == f"no {MANIFEST}":
                raise ArtifactError(f"artifact {ref} is incomplete or missing (no {MANIFEST} in {ref.path}); re-run the {ref.stage} stage")
            raise ArtifactError(broken_message(ref, problem or "unreadable"))
        return data

    def problems(self, ref: ArtifactRef, full: bool = True) -> list[str]:
        """What is wrong with an artifact ([] when intact): manifest, missing files, sizes, and with `full` every sha256."""
        m, problem = self._read_manifest(ref)
        if m is None:
            return [problem or "unreadable manifest"]
        out = []
        sizes: dict[str, int] = m.get("sizes", {})
        for name, digest in m["files"].items():
            path = Path(self._fs_path(ref.stage, ref.dataset, ref.version, name))
            if not path.is_file():
                out.append(f"file {name!r} is missing")
                continue
            if name in sizes and path.stat().st_size != sizes[name]:
                out.append(f"file {name!r} has {path.stat().st_size} bytes, the manifest says {sizes[name]}")
                continue
            if full and sha256_file(path) != digest:
                out.append(f"file {name!r} does not match its sha256 in the manifest")
        return out

    def _version_folders(self, stage: str | None = None, dataset: str | None = None) -> list[tuple[str, str, str]]:
        base = Path(self._base)
        if not base.is_dir():
            return []
        out = []
        for s in sorted(base.iterdir()) if stage is None else [base / stage]:
            if not s.is_dir() or s.name.startswith("."):
                continue
            for d in sorted(s.iterdir()) if dataset is None else [s / dataset]:
                if not d.is_dir():
                    continue
                out.extend((s.name, d.name, v.name) for v in sorted(d.iterdir()) if v.is_dir() and not v.name.startswith("."))
        return out

    def manifests(self, stage: str | None = None, dataset: str | None = None) -> list[dict[str, Any]]:
        """Manifests of every intact artifact (cheap checks), oldest first."""
        out = []
        for s, d, v in self._version_folders(stage, dataset):
            ref = self.ref(s, d, v)
            if self.problems(ref, full=False):
                continue
            m = self.manifest(ref)
            m["path"] = ref.path
            out.append(m)
        out.sort(key=lambda m: (m.get("created", ""), m.get("version", "")))
        return out

    def resolve(self, stage: str, dataset: str, version: str = "latest") -> ArtifactRef:
        """An intact artifact by version, or the newest intact one for "latest" (a reading convenience)."""
        if version != "latest":
            ref = self.exists(stage, dataset, version)
            if ref is None:
                raise ArtifactError(
                    f"no complete {stage} artifact {version!r} for dataset {dataset!r} under {self.root}; "
                    f"`fsar catalog` (or artifacts.catalog()) lists what exists"
                )
            return ref
        found = []  # every version with a readable manifest, intact or not: the newest must be intact
        for s, d, v in self._version_folders(stage, dataset):
            m = self._read_manifest(self.ref(s, d, v))[0]
            if m is not None:
                found.append((m.get("created", ""), v))
        if not found:
            raise ArtifactError(
                f"no {stage} artifact for dataset {dataset!r} under {self.root}; run `fsar {stage} --dataset {dataset}` first"
            )
        ref = self.ref(stage, dataset, max(found)[1])
        problems = self.problems(ref, full=False)
        if problems:  # never fall back silently to an older one
            raise ArtifactError(broken_message(ref, problems[0]))
        return ref

    def catalog(self) -> pd.DataFrame:
        """Every artifact folder: stage, dataset, version, created, inputs, path, main, rows (of the main table),
        package_version, and problem (None when intact; broken ones are listed, never hidden)."""
        rows = []
        for s, d, v in self._version_folders():
            ref = self.ref(s, d, v)
            problems = self.problems(ref, full=False)
            m = self._read_manifest(ref)[0] or {}
            main = m.get("main")
            rows.append(
                {
                    "stage": s,
                    "dataset": d,
                    "version": v,
                    "created": pd.Timestamp(m["created"]) if m.get("created") else pd.NaT,
                    "inputs": ", ".join(f"{k}={x['stage']}/{x['dataset']}/{x['version']}" for k, x in m.get("inputs", {}).items()),
                    "path": ref.path,
                    "main": main,
                    "rows": m.get("rows", {}).get(main) if main else None,
                    "package_version": m.get("package_version"),
                    "problem": "; ".join(problems) if problems else None,
                }
            )
        cols = ["stage", "dataset", "version", "created", "inputs", "path", "main", "rows", "package_version", "problem"]
        df = pd.DataFrame(rows, columns=cols)
        return df.sort_values(["created", "version"], na_position="last", kind="stable").reset_index(drop=True) if len(df) else df

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
                todo.append(ArtifactRef(v["stage"], v["dataset"], v["version"], self.root))
        return out

    # ------------------------------------------------------------------- read
    def verify(self, ref: ArtifactRef, files: list[str] | None = None) -> None:
        """Check the sha256 of the listed files (default: all) against the manifest; an ArtifactError names the fix."""
        m = self.manifest(ref)
        sums: dict[str, str] = m["files"]
        for name in files if files is not None else list(sums):
            if name not in sums:
                raise ArtifactError(f"file {name!r} is not listed in the manifest of artifact {ref}; it is not part of the artifact")
            path = self._fs_path(ref.stage, ref.dataset, ref.version, name)
            try:
                actual = sha256_file(path)
            except FileNotFoundError:
                raise ArtifactError(broken_message(ref, f"file {name!r} is missing")) from None
            if actual != sums[name]:
                raise ArtifactError(
                    f"checksum mismatch for {name!r} in artifact {ref}: the file changed after it was written; "
                    f"delete {ref.path} and re-run the {ref.stage} stage"
                )

    def verified_path(self, ref: ArtifactRef, name: str) -> Path:
        """Local path of one file of an artifact, after checking it against its sha256 in the manifest."""
        self.verify(ref, [name])
        record_read(ref, name)
        return Path(self._fs_path(ref.stage, ref.dataset, ref.version, name))

    def load(self, stage: str, dataset: str, version: str = "latest", table: str | None = None) -> pd.DataFrame | str:
        """The stage's main table (checksum-verified) as a DataFrame; the folder path if it has none."""
        ref = self.resolve(stage, dataset, version)
        m = self.manifest(ref)
        name = table or m.get("main")
        if not name:
            return ref.path
        return pd.read_parquet(self.verified_path(ref, name))

    def local_path(self, ref: ArtifactRef) -> Path:
        """Local folder of an artifact."""
        return Path(ref.path)

    # ------------------------------------------------------------------ write
    @contextlib.contextmanager
    def lock(self, stage: str, dataset: str, version: str, timeout_s: float | None = None) -> Iterator[None]:
        """Hold the one-writer lock of a version (a file lock under <root>/.locks); waits for another holder."""
        from filelock import FileLock, Timeout

        path = Path(self._base) / LOCKS / stage / dataset / f"{version}.lock"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a read-only root fails here first, before publish
            raise ArtifactError(f"cannot write under the artifact root {self.root} ({exc.strerror}); choose a writable --artifacts folder") from None
        lock = FileLock(str(path))
        timeout = lock_timeout_s() if timeout_s is None else timeout_s
        try:
            lock.acquire(timeout=0)
        except Timeout:
            print(f"[fsar] {stage}: another run is building {dataset}/{version}; waiting for it (up to {timeout:.0f} s)", flush=True)
            try:
                lock.acquire(timeout=timeout)
            except Timeout:
                raise ArtifactError(
                    f"{stage} {dataset}/{version}: another run held the lock {path} for more than {timeout:.0f} s; "
                    f"wait for it, or raise $FSAR_LOCK_TIMEOUT_S"
                ) from None
        try:
            yield
        finally:
            lock.release()

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
        """Write an artifact atomically (call it holding `lock` for the version).

        Yields a `Staging` with a local folder to write into. On clean exit the manifest (with file
        checksums and sizes) is written last and the folder is renamed into place; on error nothing is
        published. With `resume=True` the staging folder is stable per version and kept on error, so a
        re-run can skip work units it already finished (the stage marks those itself). Leftover
        one-off staging folders of the same version (a killed run's) are removed first.
        """
        parent = Path(self._base) / STAGING / stage / dataset
        for old in parent.glob(f"{version}-*") if parent.is_dir() else []:
            shutil.rmtree(old, ignore_errors=True)
        sdir = parent / (version if resume else f"{version}-{uuid.uuid4().hex[:8]}")
        try:
            sdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ArtifactError(f"cannot write under the artifact root {self.root} ({exc.strerror}); choose a writable --artifacts folder") from None
        staging = Staging(sdir, stage, dataset, version, main=main)
        try:
            yield staging
        except BaseException:
            if not resume:
                shutil.rmtree(sdir, ignore_errors=True)
            raise
        self._finish(staging, config=config, inputs=inputs or {}, format_version=format_version)

    def _finish(self, staging: Staging, *, config: Mapping[str, Any], inputs: Mapping[str, ArtifactRef], format_version: int | str) -> None:
        from pipeline.secrets import redact

        # Drop hidden helper files (per-unit completion markers) and partial writes before listing.
        for p in list(staging.dir.rglob("*")):
            if p.is_file() and (p.name.startswith(".") or p.name.endswith(".part")):
                p.unlink()
        files = sorted(p.relative_to(staging.dir).as_posix() for p in staging.dir.rglob("*") if p.is_file() and p.name != MANIFEST)
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
            "inputs": {k: {kk: vv for kk, vv in v.to_dict().items() if kk != "root"} for k, v in inputs.items()},
            "config": json.loads(_canonical(config)),
            "rows": staging.rows,
            "files": sums,
            "sizes": {f: (staging.dir / f).stat().st_size for f in files},
            **staging.extra,
        }
        atomic_write_text(staging.dir / MANIFEST, json.dumps(redact(manifest), indent=2, default=str))
        final = Path(self._fs_path(staging.stage, staging.dataset, staging.version))
        final.parent.mkdir(parents=True, exist_ok=True)
        if (final / MANIFEST).exists():  # published meanwhile (same version, same content)
            shutil.rmtree(staging.dir, ignore_errors=True)
            return
        if final.exists():  # an incomplete folder (no manifest) left by a crashed copy: never read, replace it
            shutil.rmtree(final)
        os.replace(staging.dir, final)


_READS: contextvars.ContextVar[set[str] | None] = contextvars.ContextVar("fsar_artifact_reads", default=None)


@contextlib.contextmanager
def recording_reads() -> Iterator[set[str]]:
    """Collect `stage/dataset/version/file` of every artifact file read (verified) inside the block."""
    reads: set[str] = set()
    token = _READS.set(reads)
    try:
        yield reads
    finally:
        _READS.reset(token)


def record_read(ref: ArtifactRef, name: str) -> None:
    """Note that a file of `ref` was read (for the manifest's `reads` of the artifact being built)."""
    reads = _READS.get()
    if reads is not None:
        reads.add(f"{ref}/{name}")


def broken_message(ref: ArtifactRef, problem: str) -> str:
    """One line: which artifact is broken, why, and the fix."""
    return (
        f"{ref.stage} artifact {ref.dataset}/{ref.version} is broken ({problem}): move {ref.path} away or delete it, "
        f"then re-run the {ref.stage} stage (`fsar verify` checks every artifact)"
    )


def lock_timeout_s() -> float:
    """How long a run waits for another run building the same artifact: $FSAR_LOCK_TIMEOUT_S, default 6 hours."""
    try:
        return float(os.environ.get("FSAR_LOCK_TIMEOUT_S", 6 * 3600))
    except ValueError:
        raise ArtifactError(f"FSAR_LOCK_TIMEOUT_S={os.environ['FSAR_LOCK_TIMEOUT_S']!r} is not a number of seconds") from None


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

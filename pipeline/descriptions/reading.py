"""The read side of a descriptions artifact for the stages that weigh candidates (the audit, evaluate's
`choose_by_support`): every usable candidate of every class as S sentences, the kept one marked.

    cands = candidate_sentences(ref, s)   # split, class, candidate, kept, sentences (S each, in stated order)

A candidate's sentences are cut or padded to S as the kept one's are in descriptions.parquet (`validate.coerce`).
An artifact without candidates.parquet (one made by hand, or by a test) has one candidate per class: its rows in
descriptions.parquet, kept.
"""

from __future__ import annotations

import pandas as pd

from pipeline.artifacts import ArtifactRef, ArtifactStore
from pipeline.contract import StageError
from pipeline.descriptions.stage import CANDIDATES_FILE
from pipeline.descriptions.validate import coerce

__all__ = ["CANDIDATE_COLUMNS", "candidate_sentences"]

CANDIDATE_COLUMNS = ["split", "class", "candidate", "kept", "sentences"]


def candidate_sentences(ref: ArtifactRef, s: int) -> pd.DataFrame:
    """One row per usable candidate of every class: split, class, candidate, kept, sentences (a list of S)."""
    store = ArtifactStore(ref.root)
    main = store.load(ref.stage, ref.dataset, ref.version)
    if CANDIDATES_FILE in store.manifest(ref)["files"]:
        cands = store.load(ref.stage, ref.dataset, ref.version, table=CANDIDATES_FILE)
        cands = cands[cands["usable"]]
        rows = [(split, cls, int(c), bool(kept), coerce(list(sentences), s))
                for split, cls, c, kept, sentences in zip(cands["split"], cands["class"], cands["candidate"], cands["kept"], cands["sentences"])]
    else:
        rows = []
        for (split, cls), part in main.groupby(["split", "class"], sort=False):
            part = part.sort_values("k")
            candidate = int(part["candidate"].iloc[0]) if "candidate" in part.columns else 0
            rows.append((split, cls, candidate, True, coerce(part["text"].tolist(), s)))
    out = pd.DataFrame(rows, columns=CANDIDATE_COLUMNS)
    missing = set(zip(main["split"], main["class"])) - set(zip(out["split"], out["class"]))
    if missing:
        raise StageError(f"the descriptions artifact {ref} has no usable candidate for {sorted(missing)[:5]}; re-run the descriptions stage")
    return out


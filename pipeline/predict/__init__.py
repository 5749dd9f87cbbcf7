"""Use a trained model on your own videos: model bundles (`fsar export`) and few-shot prediction (`fsar predict`).

    from pipeline.predict import FewShotClassifier, export_bundle, load_bundle
    export_bundle(cfg, store, "bundles/demo")                  # trainable weights + everything needed to run them
    clf = FewShotClassifier.load("bundles/demo", backbone="open_clip.pt")
    clf.fit("support/")                                        # one folder of clips per class
    clf.predict(["query.mp4"])                                 # DataFrame: query, prediction, score:<class>, ...

See `bundle` (what a bundle holds), `classifier` (scoring), `videos` (decoding user clips like the
frames stage), `descriptions` (where each class's sub-action sentences come from), `cli`.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Bundle", "BundleError", "FewShotClassifier", "export_bundle", "load_bundle"]

_HOME = {
    "Bundle": "pipeline.predict.bundle",
    "BundleError": "pipeline.predict.bundle",
    "export_bundle": "pipeline.predict.bundle",
    "load_bundle": "pipeline.predict.bundle",
    "FewShotClassifier": "pipeline.predict.classifier",
}


def __getattr__(name: str) -> Any:  # lazy: torch and open_clip load only when used
    if name not in _HOME:
        raise AttributeError(f"module 'pipeline.predict' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOME[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])

"""Helpers of the audit tests: an oracle for the frozen towers, and a descriptions artifact with two candidates per class."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import torch
import yaml

from pipeline.contract import build_once


def scripts_of(synthetic_root: Path) -> dict[str, list[str]]:
    return {c: v["sub_act_en_li"] for c, v in yaml.safe_load((synthetic_root / "scripts.yaml").read_text()).items()}


class Oracle:
    """Frozen 'towers' that see each video's true script in order: a frame at position t of T shows sentence t*S//T;
    text and frames are bags of words over the scripts' vocabulary."""

    def __init__(self, scripts: dict[str, list[str]]):
        self.scripts = scripts
        self.vocab = {w: i for i, w in enumerate(sorted({w for ss in scripts.values() for s in ss for w in re.findall("[a-z]+", s)}))}

    def _bow(self, text: str) -> torch.Tensor:
        v = torch.zeros(len(self.vocab))
        for w in re.findall("[a-z]+", text.lower()):
            if w in self.vocab:
                v[self.vocab[w]] += 1
        return v

    def text_features(self, model, prompts, batch):
        return torch.stack([self._bow(p.split(": ", 1)[1]) for p in prompts])

    def frame_features(self, model, loader, ids, batch, workers):
        classes = dict(zip(loader.frames.index["video_id"], loader.frames.index["class"]))
        t = loader.cfg.protocol.num_frames
        return torch.stack([torch.stack([self._bow(self.scripts[classes[v]][i * len(self.scripts[classes[v]]) // t]) for i in range(t)])
                            for v in ids])  # fmt: skip


def two_candidates(cfg, store, scripts):
    """A descriptions artifact whose rule kept each class's script reversed (candidate 0); candidate 1 is the true script."""
    from pipeline.datasets import get_dataset

    main, cands = [], []
    for split, cls in get_dataset(cfg.dataset).all_classes():
        true = scripts[cls]
        main += [{"split": split, "class": cls, "k": k, "text": t, "candidate": 0} for k, t in enumerate(true[::-1])]
        cands += [{"split": split, "class": cls, "candidate": c, "usable": True, "kept": c == 0, "sentences": s}
                  for c, s in ((0, true[::-1]), (1, list(true)))]  # fmt: skip

    def build(st):
        st.write_parquet("descriptions.parquet", pd.DataFrame(main))
        st.write_parquet("candidates.parquet", pd.DataFrame(cands))

    return build_once(store, "descriptions", "synthetic", config={"corpus": "two candidates"}, inputs={}, build=build,
                      main="descriptions.parquet")

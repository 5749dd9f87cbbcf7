"""Evaluate's `choose_by_support` variant (beyond the paper, off by default): descriptions chosen by the labelled supports.

In each episode, for each class, every usable description candidate of that class in every order scored by the
audit (`pipeline.audit.alignment.orders`: S! orders when S <= audit.all_orders_up_to, else stated and reversed) is
fitted to the class's K support clips under the frozen towers, with the audit's order-respecting fit; the option with
the best mean fit over the supports (ties: the kept candidate, then its stated order) is the one the trained model
scores the episode with. Only the episode's labelled supports are looked at, never its queries: legitimate few-shot
inference. Its rows are the method `by_support` beside the others, on the same saved episodes.

    rows, choices = score_by_support(cfg, inputs, model, scorer, episodes, pairs)   # choices: support_choices.parquet

Each sentence prompt goes through the frozen text tower and the frozen text prefix once; the adapted text features
are computed once per (class, candidate, order) chosen.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch

from pipeline.artifacts import ArtifactRef, ArtifactStore
from pipeline.audit.alignment import cosines, monotone_fit, orders
from pipeline.audit.features import text_features
from pipeline.config import Config
from pipeline.contract import StageError
from pipeline.datasets import get_dataset
from pipeline.descriptions.reading import candidate_sentences
from pipeline.fewshot.episodes import Episode
from pipeline.fewshot.scoring import EpisodeScorer, score_episodes
from pipeline.model.text import format_prompt
from pipeline.precision import autocast

__all__ = ["CHOICES_FILE", "METHOD", "SupportChooser", "score_by_support"]

log = logging.getLogger("fsar")

METHOD = "by_support"
CHOICES_FILE = "support_choices.parquet"


def descriptions_of(inputs: Mapping[str, ArtifactRef]) -> ArtifactRef:
    """The descriptions artifact the embeddings input was made from."""
    emb = inputs["embeddings"]
    made_from = ArtifactStore(emb.root).manifest(emb).get("inputs", {}).get("descriptions")
    if not made_from:
        raise StageError(f"evaluate.choose_by_support needs the description candidates, but the embeddings artifact {emb} names no "
                         f"descriptions input; re-run `fsar embeddings`")
    return ArtifactRef.from_dict(made_from, emb.root)


class SupportChooser:
    """Per episode and class, the candidate and order its supports fit best; the trained text features of that choice."""

    def __init__(self, cfg: Config, model: torch.nn.Module, scorer: EpisodeScorer, candidates: pd.DataFrame):
        self.model, self.scorer = model, scorer
        self.device = scorer.loader.device
        self.amp = cfg.model.amp
        spec = get_dataset(cfg.dataset)
        s = cfg.protocol.num_sub_actions
        order_list = orders(s, cfg.audit.all_orders_up_to)
        prompts: dict[str, int] = {}
        self.options: dict[str, list[tuple[int, tuple[int, ...], bool, list[int]]]] = {}  # class -> (candidate, order, kept, prompt rows)
        ranked = candidates.sort_values(["kept", "candidate"], ascending=[False, True], kind="stable")  # kept first: it wins ties
        for cls, cand, kept, sentences in zip(ranked["class"], ranked["candidate"], ranked["kept"], ranked["sentences"]):
            rows = [prompts.setdefault(format_prompt(cfg.model.prompt_template, spec.display_name(cls), t), len(prompts)) for t in sentences]
            self.options.setdefault(cls, []).extend((int(cand), order, bool(kept), [rows[i] for i in order]) for order in order_list)
        texts = list(prompts)
        self.frozen = text_features(model, texts, cfg.audit.prompts_per_pass)  # (P, E) frozen encode_text, for choosing
        with torch.inference_mode():
            tokens = model.tokenize(texts)  # (P, ctx)
            self.tokens = tokens.cpu()
            self.prefix = torch.cat([model.text_prefix(tokens[i : i + cfg.embeddings.batch_size]).float().cpu()
                                     for i in range(0, len(texts), cfg.embeddings.batch_size)])  # (P, ctx, D_t)
        self._adapted: dict[tuple[str, int, tuple[int, ...]], torch.Tensor] = {}
        self.choices: list[dict[str, Any]] = []

    def choose(self, ep: Episode) -> list[tuple[int, tuple[int, ...], bool, list[int]]]:
        """The option of each of the episode's classes (in class order) that its supports fit best."""
        feats = self.scorer.frozen_features(list(ep.support)).float().cpu()  # (N*K, T, E) frozen frame features
        labels = torch.as_tensor(ep.support_labels)
        picked = []
        for c, cls in enumerate(ep.classes):
            if cls not in self.options:
                raise StageError(f"evaluate.choose_by_support: the descriptions have no usable candidate of class {cls!r}")
            options = self.options[cls]
            rows = torch.as_tensor([o[3] for o in options])  # (O, S)
            sim = cosines(self.frozen, feats[labels == c])  # (K, P, T)
            fit = monotone_fit(sim[:, rows]).mean(0)  # (O,) mean over the class's supports
            best = int(torch.argmax(fit))  # the first of equal maxima: kept candidate, stated order
            picked.append(options[best])
            cand, order, kept, _ = options[best]
            self.choices.append({"episode": ep.index, "class": cls, "candidate": cand, "order": list(order), "kept": kept,
                                 "stated_order": list(order) == sorted(order)})
        return picked

    @torch.inference_mode()
    def __call__(self, episodes: Sequence[Episode]) -> torch.Tensor:
        """(B, N, S, E) adapted text features of each episode's chosen options."""
        out = []
        for ep in episodes:
            feats = []
            for cls, (cand, order, _, rows) in zip(ep.classes, self.choose(ep)):
                key = (cls, cand, order)
                if key not in self._adapted:
                    tokens = self.tokens[rows][None].to(self.device)  # (1, S, ctx)
                    prefix = self.prefix[rows][None].to(self.device)  # (1, S, ctx, D_t)
                    with autocast(self.device, self.amp):
                        self._adapted[key] = self.model.encode_text(tokens, prefix).float()[0]  # (S, E)
                feats.append(self._adapted[key])
            out.append(torch.stack(feats))  # (N, S, E)
        return torch.stack(out)


def score_by_support(cfg: Config, inputs: Mapping[str, ArtifactRef], model: torch.nn.Module, scorer: EpisodeScorer,
                     episodes: Sequence[Episode], pairs: dict[str, str] | None) -> tuple[list[dict[str, Any]], pd.DataFrame]:  # fmt: skip
    """The `by_support` rows of the episodes, and the table of choices (episode, class, candidate, order, kept, stated_order)."""
    cands = candidate_sentences(descriptions_of(inputs), cfg.protocol.num_sub_actions)
    chooser = SupportChooser(cfg, model, scorer, cands[cands["split"] == cfg.evaluate.split])
    rows = [{**row, "method": METHOD} for row in score_episodes(scorer, episodes, False, pairs, METHOD, text_features=chooser)]
    choices = pd.DataFrame(chooser.choices, columns=["episode", "class", "candidate", "order", "kept", "stated_order"])
    same = float((choices["kept"] & choices["stated_order"]).mean()) if len(choices) else float("nan")
    log.info(f"evaluate: choose_by_support: the supports picked the rule's candidate in its stated order for {100 * same:.1f}% of "
             f"{len(choices)} (episode, class) choices")
    return rows, choices

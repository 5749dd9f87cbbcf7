"""Few-shot classification of your own videos with a model bundle.

    from pipeline.predict import FewShotClassifier
    clf = FewShotClassifier.load("bundles/demo", backbone="open_clip.pt")    # device "auto", inductive
    clf.fit("my_support/")                     # one folder per class, K >= 1 clips each (or {class: [paths]})
    clf.skipped                                # entries of the support folder that are not clips (`fsar predict` prints them)
    table = clf.predict(["q1.mp4", "q2.mp4"])  # DataFrame: query, prediction, score:<class>..., error

`fit` decodes every support clip and runs the frozen first L-M vision blocks on it once, and encodes
each class's S prompts once; `predict` then only decodes its queries and runs the adapted blocks, in
batches of `batch_size` queries. Task context `inductive` (the default) lets each query attend over the
supports and itself only, so a query's scores do not depend on the other queries (nor on batching);
`faithful` is the released code's transductive mode: the queries of one `predict` call attend over each
other (they run as one batch).

Columns of the table: `query` (the path as given), `prediction` (a class, empty when the query could not
be read), `score:<class>` (vis x sem, the model's ranking), `vis:<class>` and `sem:<class>` (the two
factors), `visual_only` and `semantic_only` (the winners of each factor alone), `error` (why a query has
no answer: the frames stage's reason and message).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline.contract import StageError
from pipeline.predict.bundle import Bundle, load_bundle
from pipeline.predict.descriptions import ClassText, resolve_descriptions
from pipeline.predict.videos import VIDEO_EXTENSIONS, Preprocessing, check_support, query_problem, query_videos, read_clip, support_videos

__all__ = ["FewShotClassifier", "TASK_CONTEXTS"]

TASK_CONTEXTS = ("inductive", "faithful")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise StageError(f"device {name!r} was asked for but no GPU is visible; use --device cpu (or auto)")
    try:
        return torch.device(name)
    except RuntimeError:
        raise StageError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None


class FewShotClassifier:
    """A trained Task-Adapter++ bundle + a support set: classifies query videos among the support classes."""

    def __init__(self, bundle: Bundle, device: str = "auto", task_context: str = "inductive", batch_size: int = 16):
        if task_context not in TASK_CONTEXTS:
            raise StageError(f"task context {task_context!r} is unknown; choose {' or '.join(TASK_CONTEXTS)}")
        if batch_size < 1:
            raise StageError(f"batch size must be at least 1, got {batch_size}")
        self.bundle = bundle
        self.device = _device(device)
        self.task_context = task_context
        self.batch_size = batch_size
        self.model = bundle.build_model(self.device, task_context)
        if self.model.cfg.scores == "released":
            raise StageError(
                "this bundle's model was trained with model.scores=released, the released code's score, defined only for "
                "episodes of one query per class laid out in class order; unlabelled videos have no such layout: export a "
                "model trained with model.scores=query_class"
            )
        self.prep = Preprocessing.from_meta(bundle.meta["preprocessing"])
        self._decoder: Any = None  # isolation.IsolatedDecoder, started on the first clip, reused by the others
        self.classes: list[str] = []
        self.texts: dict[str, ClassText] = {}  # class -> its sentences and where they came from
        self.shots: dict[str, int] = {}  # class -> K
        self.skipped: list[str] = []  # entries of the support folder that are not clips (reported, never silent)
        self._support: torch.Tensor | None = None  # (N*K, T, P+1, D) frozen-prefix states of the supports
        self._labels: torch.Tensor | None = None  # (N*K,)
        self._text: torch.Tensor | None = None  # (N, S, E) adapted prompt features

    @classmethod
    def load(
        cls,
        bundle: str | os.PathLike[str] | Bundle,
        backbone: str | os.PathLike[str] | None = None,
        device: str = "auto",
        task_context: str = "inductive",
        batch_size: int = 16,
        artifacts: str | None = None,
    ) -> "FewShotClassifier":
        """Load a bundle folder (checking its format version and backbone checksum) and build its model."""
        b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle, backbone=backbone, artifacts=artifacts)
        return cls(b, device=device, task_context=task_context, batch_size=batch_size)

    # ------------------------------------------------------------------------------------------------ support

    def fit(
        self,
        support: str | os.PathLike[str] | Mapping[str, Sequence[str | os.PathLike[str]]],
        descriptions: str | os.PathLike[str] | Mapping[str, Sequence[str]] | None = None,
        llm_overrides: Sequence[str] = (),
        artifacts: str | None = None,
    ) -> "FewShotClassifier":
        """Encode the support clips and the classes' prompts once; `support` is a folder or {class: [paths]}."""
        skipped: list[str] = []
        mapping = support_videos(support, skipped) if isinstance(support, (str, os.PathLike)) else dict(support)
        mapping = check_support(mapping)
        texts = resolve_descriptions(list(mapping), self.bundle, descriptions, llm_overrides, artifacts)
        clips, labels = [], []
        for c, (cls, paths) in enumerate(mapping.items()):
            for path in paths:
                clips.append(self._support_clip(cls, path))
                labels.append(c)
        self._support = self._prefix(clips)  # (N*K, T, P+1, D)
        self._labels = torch.as_tensor(labels, dtype=torch.long, device=self.device)
        self._text = self._encode_text([texts[c] for c in mapping])  # (N, S, E)
        self.classes, self.texts = list(mapping), texts
        self.shots = {c: len(p) for c, p in mapping.items()}
        self.skipped = skipped
        return self

    def _support_clip(self, cls: str, path: str) -> torch.Tensor:
        # start-up: fsar predict loads only what it uses
        from pipeline.frames.decode import VideoFailure

        try:
            return read_clip(path, self.prep, self._clip_decoder())
        except VideoFailure as exc:
            raise StageError(f"support clip {path!r} of class {cls!r} cannot be used ({exc.reason}: {exc}); replace or remove it") from None

    def _clip_decoder(self) -> Any:
        # start-up: fsar predict loads only what it uses
        from pipeline.frames.isolation import IsolatedDecoder

        if self._decoder is None:
            self._decoder = IsolatedDecoder(self.prep.decode_settings())
        return self._decoder

    def close(self) -> None:
        """Stop the clip-decoding process (it also ends with this process)."""
        if self._decoder is not None:
            self._decoder.close()
            self._decoder = None

    @torch.inference_mode()
    def _prefix(self, clips: Sequence[torch.Tensor]) -> torch.Tensor:
        """(B, T, 3, H, W) clips -> (B, T, P+1, D) frozen-prefix states, `batch_size` videos at a time (fp32)."""
        # start-up: fsar predict loads only what it uses
        from pipeline.fewshot.loader import to_device

        out = []
        for i in range(0, len(clips), self.batch_size):
            batch = to_device(torch.stack(list(clips[i : i + self.batch_size])), self.device)  # (b, T, 3, H, W), pinned + non-blocking on CUDA
            out.append(self.model.vision_prefix(batch).float())
        return torch.cat(out)

    @torch.inference_mode()
    def _encode_text(self, texts: Sequence[ClassText]) -> torch.Tensor:
        prompts = [p for t in texts for p in self.model.prompts(t.display_name, t.sentences)]  # N*S prompts, class-major
        tokens = self.model.tokenize(prompts).unflatten(0, (len(texts), self.bundle.num_sub_actions))  # (N, S, ctx)
        return self.model.encode_text(tokens).float()  # (N, S, E)

    # ---------------------------------------------------------------------------------------------- predict

    def predict(self, paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str]) -> pd.DataFrame:
        """One row per query (folders expanded), in the order given; a query that cannot be read gets its `error`."""
        if self._support is None:
            raise StageError("call fit(support) before predict(queries)")
        queries = query_videos([paths] if isinstance(paths, (str, os.PathLike)) else list(paths))
        clips: dict[int, torch.Tensor] = {}
        errors: dict[int, str] = {}
        for i, q in enumerate(queries):
            problem = query_problem(q)  # a folder: the same error row as any other query that cannot be read
            if problem is not None:
                errors[i] = f"not a video: {problem}"
                continue
            try:
                clips[i] = read_clip(q, self.prep, self._clip_decoder())
            except Exception as exc:  # noqa: BLE001 - one bad query never loses the others
                errors[i] = _why(exc, q)
        scores = self._score(clips)
        return self._table(queries, scores, errors)

    def _score(self, clips: dict[int, torch.Tensor]) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """{query index: (vis x sem, vis, sem) over the classes}; batches unless faithful (one batch)."""
        order = sorted(clips)
        step = self.batch_size if self.task_context == "inductive" else max(1, len(order))
        out = {}
        for i in range(0, len(order), step):
            idx = order[i : i + step]
            vis, sem = self._episode(self._prefix([clips[j] for j in idx]))
            for k, j in enumerate(idx):
                out[j] = (vis[k] * sem[k], vis[k], sem[k])
        return out

    @torch.inference_mode()
    def _episode(self, query: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(Q, T, P+1, D) query prefix states -> vis, sem (Q, N) against the fitted supports and texts."""
        # start-up: fsar predict loads only what it uses
        from pipeline.precision import autocast

        with autocast(self.device, self.model.cfg.amp):
            sc = self.model(self._support, self._labels, query, None, support_is_prefix=True, query_is_prefix=True, text_features=self._text)
        return sc.vis.float().cpu().numpy(), sc.sem.float().cpu().numpy()

    def _table(self, queries: list[str], scores: dict[int, tuple[np.ndarray, ...]], errors: dict[int, str]) -> pd.DataFrame:
        n = len(self.classes)
        rows = []
        for i, q in enumerate(queries):
            full, vis, sem = scores.get(i, (np.full(n, np.nan),) * 3)
            ok = i in scores
            row: dict[str, Any] = {
                "query": q,
                "prediction": self.classes[int(np.argmax(full))] if ok else None,
                **{f"score:{c}": float(v) for c, v in zip(self.classes, full)},
                "visual_only": self.classes[int(np.argmax(vis))] if ok else None,
                "semantic_only": self.classes[int(np.argmax(sem))] if ok else None,
                **{f"vis:{c}": float(v) for c, v in zip(self.classes, vis)},
                **{f"sem:{c}": float(v) for c, v in zip(self.classes, sem)},
                "error": errors.get(i),
            }
            rows.append(row)
        return pd.DataFrame(rows)

    def __repr__(self) -> str:
        fitted = f"{len(self.classes)} classes" if self.classes else "not fitted"
        return f"FewShotClassifier({str(self.bundle.path)!r}, {self.device}, {self.task_context}, {fitted})"


def _why(exc: BaseException, path: str) -> str:
    """The error column: the frames stage's reason and message, saying so when the file is not a video at all."""
    # start-up: fsar predict loads only what it uses
    from pipeline.frames.decode import VideoFailure

    suffix = Path(path).suffix.lower()
    hint = f"not a video ({suffix or 'no'} extension); " if suffix not in VIDEO_EXTENSIONS else ""
    if isinstance(exc, VideoFailure):
        return f"{hint}{exc.reason}: {exc}"
    return f"{hint}{type(exc).__name__}: {exc}"


"""The WALAR reward for a batch: language gate (fastText + MaskLID), QE, alignment F1.

    wrong language      -> penalty (-25 with MetricX, 0 with COMET), nothing added
    otherwise           -> r = QE term (+ alpha * F1 on the MaskLID-kept hypothesis)

A bad item (undecodable, empty, too long, or one a component fails on) gets its status
and the penalty; the rest of the batch is scored as usual. An unknown language fails the
whole batch with UnknownLanguageError naming it: that is a caller bug, not a bad sample.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence

import numpy as np

from reward.languages import Language, UnknownLanguageError, resolve

log = logging.getLogger(__name__)

OK, EMPTY_TEXT, INVALID_TEXT, TOO_LONG, ITEM_ERROR = (
    "OK", "EMPTY_TEXT", "INVALID_TEXT", "TOO_LONG", "ITEM_ERROR")


@dataclasses.dataclass(frozen=True)
class RawItem:
    source: bytes | str
    hypothesis: bytes | str
    src_lang: str
    tgt_lang: str
    reference: bytes | str | None = None


@dataclasses.dataclass
class ItemScore:
    reward: float
    status: str = OK
    detail: str = ""
    language_ok: bool = False
    detected_lang: str = ""
    gate_skipped: bool = False
    qe: float | None = None
    align_f1: float | None = None
    masked_hypothesis: str = ""


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    alpha: float = 20.0
    penalty: float = -25.0
    min_share: float = 0.94  # MaskLID: share of target-language characters to pass
    max_chars: int = 20000


def batch_metrics(scores: Sequence[ItemScore]) -> dict[str, float]:
    """Mean QE, share penalised by the gate, mean alignment F1 (NaN when no value)."""
    qe = [s.qe for s in scores if s.qe is not None]
    f1 = [s.align_f1 for s in scores if s.align_f1 is not None]
    gated = sum(1 for s in scores if s.status == OK and not s.language_ok)
    return {
        "n_items": len(scores),
        "mean_qe": float(np.mean(qe)) if qe else math.nan,
        "gate_penalised_share": gated / len(scores) if scores else math.nan,
        "mean_align_f1": float(np.mean(f1)) if f1 else math.nan,
        "n_bad_items": sum(1 for s in scores if s.status != OK),
        "n_gate_skipped": sum(1 for s in scores if s.gate_skipped),
    }


def _text(value: bytes | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return value.decode("utf-8")  # strict: a lone surrogate raises UnicodeDecodeError


class RewardScorer:
    """Holds the loaded components; `score` is not thread-safe (the server locks)."""

    def __init__(self, *, config: RewardConfig, lid=None, masklid=None, qe=None,
                 aligner=None, segmenter=None):
        if aligner is not None and segmenter is None:
            raise ValueError("alignment needs a segmenter")
        self.config, self.lid, self.masklid = config, lid, masklid
        self.qe, self.aligner, self.segmenter = qe, aligner, segmenter

    @staticmethod
    def resolve_languages(items: Sequence[RawItem]) -> list[tuple[Language, Language]]:
        out = []
        for i, item in enumerate(items):
            pair = []
            for field in ("src_lang", "tgt_lang"):
                try:
                    pair.append(resolve(getattr(item, field)))
                except UnknownLanguageError as err:
                    raise UnknownLanguageError(f"item {i} {field}: {err}") from None
            out.append(tuple(pair))
        return out

    def score(self, items: Sequence[RawItem]) -> list[ItemScore]:
        langs = self.resolve_languages(items)
        texts, scores = self._validate(items)
        ok = [i for i, s in enumerate(scores) if s.status == OK]
        self._gate(ok, texts, langs, scores)
        self._qe(ok, texts, scores)
        passed = [i for i in ok if scores[i].status == OK and scores[i].language_ok]
        self._align(passed, texts, langs, scores)
        cfg = self.config
        for s in scores:
            if s.status != OK or not s.language_ok:
                s.reward = cfg.penalty
            else:
                align = cfg.alpha * s.align_f1 if s.align_f1 is not None else 0.0
                s.reward = (s.qe or 0.0) + align
        return scores

    def _validate(self, items):
        texts: list[tuple[str, str, str | None] | None] = []
        scores = []
        for item in items:
            score = ItemScore(reward=self.config.penalty)
            try:
                src, hyp, ref = (_text(item.source), _text(item.hypothesis),
                                 _text(item.reference))
            except UnicodeDecodeError as err:
                score.status, score.detail = INVALID_TEXT, f"text is not valid UTF-8: {err}"
                texts.append(None)
                scores.append(score)
                continue
            longest = max(len(src), len(hyp), len(ref or ""))
            if not src.strip() or not hyp.strip():
                score.status = EMPTY_TEXT
                score.detail = "empty source" if not src.strip() else "empty hypothesis"
            elif longest > self.config.max_chars:
                score.status = TOO_LONG
                score.detail = f"{longest} characters > --max_chars {self.config.max_chars}"
            texts.append((src, hyp, ref))
            scores.append(score)
        return texts, scores

    def _gate(self, ok, texts, langs, scores) -> None:
        for i in ok:
            scores[i].masked_hypothesis = texts[i][1]
            scores[i].language_ok = True
        if self.lid is None:
            for i in ok:
                scores[i].gate_skipped = True
            return
        top = self.lid.predict([texts[i][1] for i in ok])
        for i, (key, _) in zip(ok, top):
            tgt, s = langs[i][1], scores[i]
            s.detected_lang = key.display
            if not self.lid.can_label(tgt):
                s.gate_skipped = True  # never a silent penalty for an unlabelable target
                continue
            if self.masklid is None:
                s.language_ok = key.matches(tgt)
                continue
            try:
                kept, share = self.masklid.target_part(texts[i][1], tgt)
            except Exception as err:  # noqa: BLE001 - one item must not sink the batch
                _fail(s, "MaskLID", err)
                continue
            s.masked_hypothesis = kept
            s.language_ok = share >= self.config.min_share

    def _qe(self, ok, texts, scores) -> None:
        if self.qe is None or not ok:
            return

        def run(idx: list[int]) -> np.ndarray:
            return self.qe.score([texts[i][0] for i in idx], [texts[i][1] for i in idx],
                                 [texts[i][2] for i in idx])

        for i, value in _batched_or_each(ok, run, scores, "QE"):
            scores[i].qe = float(value)

    def _align(self, idx, texts, langs, scores) -> None:
        if self.aligner is None or not idx:
            return

        def run(sub: list[int]) -> np.ndarray:
            src = [self.segmenter.words(texts[i][0], langs[i][0]) for i in sub]
            tgt = [self.segmenter.words(scores[i].masked_hypothesis, langs[i][1]) for i in sub]
            return self.aligner.f1(src, tgt)

        for i, value in _batched_or_each(idx, run, scores, "alignment"):
            scores[i].align_f1 = float(value)


def _fail(score: ItemScore, what: str, err: Exception) -> None:
    score.status, score.detail = ITEM_ERROR, f"{what} failed: {type(err).__name__}: {err}"
    score.language_ok = False
    log.warning("item failed in %s: %s", what, err)


def _batched_or_each(idx: list[int], run: Callable[[list[int]], np.ndarray], scores, what: str):
    """Runs `run` on the whole batch; if that raises, item by item, so that only the
    items that fail alone are marked ITEM_ERROR."""
    idx = [i for i in idx if scores[i].status == OK]
    try:
        values = run(idx)
        if len(values) != len(idx):
            raise RuntimeError(f"{what} returned {len(values)} values for {len(idx)} items")
        yield from zip(idx, values)
        return
    except Exception as err:  # noqa: BLE001
        log.warning("%s failed on the batch (%s); retrying item by item", what, err)
    for i in idx:
        try:
            yield i, run([i])[0]
        except Exception as err:  # noqa: BLE001
            _fail(scores[i], what, err)

"""The WALAR reward for a batch: language gate, QE, alignment F1 on MaskLID's words.

The published rule (WALAR's serve_rm.py `get_reward`), every step on the hypothesis with
its surrounding whitespace stripped and its newlines deleted, and the stripped source:

    top-1 label of the identifier does not name the target  -> penalty, nothing added
    otherwise                  r = QE term (+ alpha * F1 only if the QE term > penalty)

F1 aligns the source's words with the words MaskLID gives to the target language (none:
F1 = 0, r = QE); MaskLID is never a gate. With `min_share` > 0 (ours; 0 under the
published rule) an item whose MaskLID target share is below it is penalised as well.

A bad item (undecodable, empty, too long, or one a component fails on) gets its status
and the penalty; the rest of the batch is scored as usual. An unknown language fails the
whole batch with UnknownLanguageError naming it: that is a caller bug, not a bad sample.
When the identifier has no label for a target, its gate and MaskLID are skipped for that
target (`gate_skipped`, and a warning), never a silent penalty on every sample.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence

import numpy as np

from protos import reward_metrics
from protos.languages import languages
from reward.languages import Language, LabelMatcher, UnknownLanguageError, resolve

log = logging.getLogger(__name__)

OK, EMPTY_TEXT, INVALID_TEXT, TOO_LONG, ITEM_ERROR = (
    "OK", "EMPTY_TEXT", "INVALID_TEXT", "TOO_LONG", "ITEM_ERROR")
# The penalty of each QE backend: the bottom of its range (WALAR: -25 for MetricX, 0 for
# COMET; -1 for an embedding cosine), so that a penalised item never outscores one that
# passed. Defined here only.
QE_PENALTIES = {"metricx": -25.0, "comet": 0.0, "embed": -1.0, "none": 0.0}


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
    masklid_share: float | None = None
    align_bonus: bool = False
    jieba_texts: int = 0  # texts of this item segmented by the jieba fallback


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    alpha: float = 20.0
    penalty: float = -25.0
    min_share: float = 0.0  # MaskLID share gate (ours); 0: off, as WALAR
    max_chars: int = 20000


def normalise_hypothesis(text: str) -> str:
    """What WALAR scores: the response stripped (its `get_target`), newlines deleted."""
    return text.strip().replace("\n", "")


def batch_metrics(scores: Sequence[ItemScore]) -> dict[str, float]:
    """The batch metrics of protos/reward_metrics.py for these scores."""
    return reward_metrics.batch_metrics(scores, sum(s.jieba_texts for s in scores))


def _text(value: bytes | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return value.decode("utf-8")  # strict: a lone surrogate raises UnicodeDecodeError


class RewardScorer:
    """Holds the loaded components; `score` is not thread-safe (the server locks)."""

    def __init__(self, *, config: RewardConfig, lid=None, masklid=None, qe=None,
                 aligner=None, segmenter=None, matcher: LabelMatcher | None = None):
        if aligner is not None and segmenter is None:
            raise ValueError("alignment needs a segmenter")
        self.config, self.lid, self.masklid = config, lid, masklid
        self.qe, self.aligner, self.segmenter = qe, aligner, segmenter
        self.matcher = matcher or (masklid.matcher if masklid is not None else LabelMatcher())
        self._can_label: dict[str, bool] = {}
        self._can_mask: dict[str, bool] = {}
        self._gated: frozenset[str] | None = None

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
        self._masklid(self._passing(ok, scores), texts, langs, scores)
        self._align(self._passing(ok, scores), texts, langs, scores)
        for s in scores:
            s.reward = self._reward(s)
        return scores

    def _reward(self, s: ItemScore) -> float:
        cfg = self.config
        if s.status != OK or not s.language_ok:
            return cfg.penalty
        reward = s.qe if s.qe is not None else 0.0
        # WALAR adds the bonus only to an item whose QE term is above the penalty.
        s.align_bonus = s.align_f1 is not None and (s.qe is None or s.qe > cfg.penalty)
        return reward + cfg.alpha * s.align_f1 if s.align_bonus else reward

    @staticmethod
    def _passing(idx: list[int], scores: list[ItemScore]) -> list[int]:
        return [i for i in idx if scores[i].status == OK and scores[i].language_ok]

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
            src, hyp = src.strip(), normalise_hypothesis(hyp)
            longest = max(len(src), len(hyp), len(ref or ""))
            if not src or not hyp:
                score.status = EMPTY_TEXT
                score.detail = "empty source" if not src else "empty hypothesis"
            elif longest > self.config.max_chars:
                score.status = TOO_LONG
                score.detail = f"{longest} characters > --max_chars {self.config.max_chars}"
            texts.append((src, hyp, ref))
            scores.append(score)
        return texts, scores

    def gated_languages(self) -> frozenset[str]:
        """FLORES-200 codes of the table whose language some label of the identifier
        names: the targets the gate checks (none without an identifier). For the others
        the gate is skipped (`gate_skipped`), so clients refuse them unless told not to."""
        if self._gated is None:
            self._gated = frozenset() if self.lid is None else frozenset(
                lang.code for lang in languages()
                if self.matcher.can_label(self.lid.raw_labels, lang))
        return self._gated

    def can_label(self, lang: Language) -> bool:
        """Whether any label of the identifier names `lang` (else its gate is skipped)."""
        if lang.code not in self._can_label:
            self._can_label[lang.code] = self.matcher.can_label(self.lid.raw_labels, lang)
            if not self._can_label[lang.code]:
                log.warning("no label of %s names %s (label match %s): its language gate "
                            "and MaskLID are skipped", self.lid.path, lang.code,
                            self.matcher.mode)
        return self._can_label[lang.code]

    def _gate(self, ok, texts, langs, scores) -> None:
        for i in ok:
            scores[i].masked_hypothesis = texts[i][1]
            scores[i].language_ok = True
        if self.lid is None:
            for i in ok:
                scores[i].gate_skipped = True
            return
        top = self.lid.predict([texts[i][1] for i in ok])
        for i, (label, _) in zip(ok, top):
            tgt, s = langs[i][1], scores[i]
            s.detected_lang = self.matcher.display(label)
            if not self.can_label(tgt):
                s.gate_skipped = True  # never a silent penalty for an unlabelable target
                continue
            s.language_ok = self.matcher.matches(label, tgt)

    def _masklid(self, idx, texts, langs, scores) -> None:
        """MaskLID picks the hypothesis words the alignment sees; with `min_share` it also
        penalises items whose target-language share is below it."""
        if self.masklid is None:
            return
        for i in idx:
            tgt, s = langs[i][1], scores[i]
            if s.gate_skipped or not self._masklid_can_name(tgt):
                continue
            try:
                s.masked_hypothesis, s.masklid_share = self.masklid.target_part(texts[i][1], tgt)
            except Exception as err:  # noqa: BLE001 - one item must not sink the batch
                _fail(s, "MaskLID", err)
                continue
            if self.config.min_share > 0 and s.masklid_share < self.config.min_share:
                s.language_ok = False

    def _masklid_can_name(self, lang: Language) -> bool:
        if lang.code not in self._can_mask:
            self._can_mask[lang.code] = bool(self.masklid.target_labels(lang))
            if not self._can_mask[lang.code]:
                log.warning("none of MaskLID's %d labels names %s: it aligns the whole "
                            "hypothesis", len(self.masklid.labels), lang.code)
        return self._can_mask[lang.code]

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
        seg = self.segmenter

        def run(sub: list[int]) -> np.ndarray:
            src = [seg.words(texts[i][0], langs[i][0]) for i in sub]
            tgt = [seg.words(scores[i].masked_hypothesis, langs[i][1]) for i in sub]
            return self.aligner.f1(src, tgt)

        for i, value in _batched_or_each(idx, run, scores, "alignment"):
            scores[i].align_f1 = float(value)
            scores[i].jieba_texts = seg.falls_back(langs[i][0]) + seg.falls_back(langs[i][1])


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

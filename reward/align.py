"""SimAlign-style word alignment F1 on any Hugging Face encoder, batched and vectorised.

WALAR's rule: hidden states of one layer for source and hypothesis subwords (special
tokens excluded), dot products, softmax over each direction, keep pairs above 1e-3 in
both (intersection). A word is aligned when any of its subwords is. precision = aligned
hypothesis words / hypothesis words, recall = aligned source words / source words,
F1 = 2PR / (P + R) (0 when both are 0). The rule needs an encoder whose hidden states have
a large norm (bge-m3, layer 24); with a small-norm encoder the softmaxes are flat and
almost every pair passes the threshold.

The hot path has no per-item Python loop: pairs are length-sorted into micro-batches and
each micro-batch is one encoder call per side plus masked tensor ops.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

log = logging.getLogger(__name__)


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Aligner:
    """Alignment F1 between lists of words with one layer of an HF encoder."""

    def __init__(self, model_path: str, *, layer: int | None = None, device: str = "auto",
                 threshold: float = 1e-3, max_length: int = 512, batch_size: int = 32):
        from transformers import AutoModel, AutoTokenizer

        self.device = pick_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        if not self.tokenizer.is_fast:
            raise ValueError(f"{model_path}: alignment needs a fast tokenizer (word ids)")
        self.model = AutoModel.from_pretrained(model_path).to(self.device).eval()
        n_layers = self.model.config.num_hidden_layers
        self.layer = n_layers if layer is None else layer
        if not 0 <= self.layer <= n_layers:
            raise ValueError(f"--align_layer {self.layer} outside 0..{n_layers} of {model_path}")
        self.threshold = threshold
        self.max_length = min(max_length, self.tokenizer.model_max_length)
        self.batch_size = batch_size
        self.model_path = model_path

    def _encode(self, sentences: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states (B, L, D) of `self.layer` and word ids (B, L), -1 off words."""
        enc = self.tokenizer(sentences, is_split_into_words=True, truncation=True,
                             max_length=self.max_length, padding=True, return_tensors="pt")
        word_ids = torch.tensor(
            [[-1 if w is None else w for w in enc.word_ids(i)] for i in range(len(sentences))],
            dtype=torch.long)
        enc = {k: v.to(self.device) for k, v in enc.items()}
        out = self.model(**enc, output_hidden_states=True)
        return out.hidden_states[self.layer], word_ids.to(self.device)

    @torch.no_grad()
    def _batch_f1(self, src: list[list[str]], tgt: list[list[str]]) -> torch.Tensor:
        hs, ws = self._encode(src)
        ht, wt = self._encode(tgt)
        valid = (ws >= 0)[:, :, None] & (wt >= 0)[:, None, :]  # (B, S, T)
        dot = torch.einsum("bsd,btd->bst", hs.float(), ht.float())
        dot = dot.masked_fill(~valid, float("-inf"))
        # A sentence with no subwords gives all -inf rows: softmax NaN, compares False.
        fwd = torch.softmax(dot, dim=-1) > self.threshold
        bwd = torch.softmax(dot, dim=-2) > self.threshold
        aligned = fwd & bwd & valid
        n_src = torch.tensor([len(s) for s in src], device=self.device, dtype=torch.float64)
        n_tgt = torch.tensor([len(t) for t in tgt], device=self.device, dtype=torch.float64)
        hit_src = _count_words(aligned.any(dim=-1), ws)
        hit_tgt = _count_words(aligned.any(dim=-2), wt)
        precision = torch.where(n_tgt > 0, hit_tgt / n_tgt.clamp(min=1), 0.0)
        recall = torch.where(n_src > 0, hit_src / n_src.clamp(min=1), 0.0)
        denom = precision + recall
        return torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), 0.0)

    def f1(self, src: list[list[str]], tgt: list[list[str]]) -> np.ndarray:
        """Alignment F1 per pair of word lists."""
        if len(src) != len(tgt):
            raise ValueError(f"{len(src)} sources but {len(tgt)} hypotheses")
        out = np.zeros(len(src), dtype=np.float64)
        # Length-sorted micro-batches keep padding (and wasted FLOPs) small.
        order = sorted(range(len(src)), key=lambda i: sum(map(len, src[i] + tgt[i])))
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            f1 = self._batch_f1([src[i] for i in idx], [tgt[i] for i in idx])
            out[idx] = f1.cpu().numpy()
        return out


def _count_words(token_hit: torch.Tensor, word_ids: torch.Tensor) -> torch.Tensor:
    """Distinct words with at least one hit subword, per row (scatter, no loops)."""
    n_cols = int(word_ids.max().item()) + 2 if word_ids.numel() else 1
    index = torch.where(word_ids >= 0, word_ids, n_cols - 1)  # off-word tokens -> dummy
    hits = torch.zeros(token_hit.shape[0], n_cols, device=token_hit.device)
    hits.scatter_reduce_(1, index, token_hit.float(), reduce="amax")
    return hits[:, :-1].sum(dim=1).double()

"""A straightforward per-item implementation of WALAR's alignment F1, written for the
benchmark and the tests as an independent check of reward/align.py's batched version:
one sentence at a time, subwords per word, then a Python loop over aligned pairs."""

from __future__ import annotations

import itertools

import torch


@torch.no_grad()
def align_f1_per_item(model, tokenizer, layer: int, src: list[str], tgt: list[str],
                      threshold: float = 1e-3, max_length: int = 512) -> float:
    def encode(words):
        pieces = [tokenizer.tokenize(w) for w in words]
        ids = list(itertools.chain(*[tokenizer.convert_tokens_to_ids(p) for p in pieces]))
        ids = tokenizer.prepare_for_model(ids, truncation=True, max_length=max_length,
                                          return_tensors="pt")["input_ids"]
        word_of = [i for i, p in enumerate(pieces) for _ in p]
        device = next(model.parameters()).device
        hidden = model(ids.unsqueeze(0).to(device), output_hidden_states=True)
        return hidden.hidden_states[layer][0, 1:-1], word_of

    out_src, map_src = encode(src)
    out_tgt, map_tgt = encode(tgt)
    if not len(src) or not len(tgt) or out_src.shape[0] == 0 or out_tgt.shape[0] == 0:
        return 0.0
    dot = out_src.float() @ out_tgt.float().T
    both = (torch.softmax(dot, -1) > threshold) & (torch.softmax(dot, -2) > threshold)
    pairs = {(map_src[i], map_tgt[j]) for i, j in torch.nonzero(both).tolist()}
    precision = len({b for _, b in pairs}) / len(tgt)
    recall = len({a for a, _ in pairs}) / len(src)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)

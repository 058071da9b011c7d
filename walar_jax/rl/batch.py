"""Rollouts -> the host arrays one optimizer step trains on.

Sequences are right-padded [S, T]; position t predicts token t+1, so the loss mask and
the sampler's log-probs sit one position before each response token. A response that
hit `max_tokens` gets EOS appended to its trained tokens (OpenRLHF, hence WALAR, does
so); the sampler has no log-prob for that token, so `sampled` marks the positions whose
`rollout_logp` is real.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

KEYS = ("ids", "seg", "mask", "sampled", "rollout_logp", "adv")


def pack(seqs: Sequence[tuple[Sequence[int], object]], adv, *, bucket: int,
         eos_id: int | None) -> dict[str, np.ndarray]:
    """`seqs` are (prompt token ids, completion) pairs; `eos_id` (or None) is appended
    to completions that end without it (finish_reason "length")."""
    rows = []
    for prompt, comp in seqs:
        resp, lps = list(comp.token_ids), list(comp.logprobs)
        if eos_id is not None and comp.finish_reason == "length" and (
                not resp or resp[-1] != eos_id):
            resp.append(eos_id)
        rows.append((list(prompt), resp, lps))
    T = max(len(p) + len(r) for p, r, _ in rows)
    T = int(math.ceil(T / bucket) * bucket)
    S = len(rows)
    out = {"ids": np.zeros((S, T), np.int32), "seg": np.zeros((S, T), np.int32),
           "mask": np.zeros((S, T), np.float32), "sampled": np.zeros((S, T), np.float32),
           "rollout_logp": np.zeros((S, T), np.float32), "adv": np.asarray(adv, np.float32)}
    for i, (p, r, lps) in enumerate(rows):
        n_p, n_r = len(p), len(r)
        out["ids"][i, :n_p + n_r] = p + r
        out["seg"][i, :n_p + n_r] = 1
        out["mask"][i, n_p - 1:n_p + n_r - 1] = 1.0
        out["sampled"][i, n_p - 1:n_p - 1 + len(lps)] = 1.0
        out["rollout_logp"][i, n_p - 1:n_p - 1 + len(lps)] = lps
    return out


def concat(batches: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stacks batches along sequences; [S, T] arrays are right-padded to one T."""
    out = {}
    for k in batches[0]:
        arrays = [b[k] for b in batches]
        if arrays[0].ndim == 1:
            out[k] = np.concatenate(arrays)
        else:
            T = max(a.shape[1] for a in arrays)
            out[k] = np.concatenate([np.pad(a, ((0, 0), (0, T - a.shape[1]))) for a in arrays])
    return out


def split(batch: dict[str, np.ndarray], size: int) -> list[dict[str, np.ndarray]]:
    """Consecutive parts of `size` sequences."""
    n = len(batch["adv"])
    return [{k: v[i:i + size] for k, v in batch.items()} for i in range(0, n, size)]


def micro_batches(batch: dict[str, np.ndarray], micro: int) -> dict[str, np.ndarray]:
    """[S, ...] -> [S // micro, micro, ...], the layout of the jitted step."""
    M = len(batch["adv"]) // micro
    return {k: v.reshape(M, micro, *v.shape[1:]) for k, v in batch.items()}

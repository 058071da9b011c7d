"""Reward batch metrics: defined once, computed by the reward service, merged by the client.

Pure Python (no numpy), so the reward environment and the trainer environment import the
same definitions. The service computes `batch_metrics` over the items of one Score call;
a client that split a batch across servers combines the responses with `merge`, which
gives exactly what `batch_metrics` would have given on the whole batch: counts add, and
each mean is weighted by the count of items it is a mean over (NaN when that count is 0).

Names (also the fields of `BatchMetrics` in reward.proto and the keys the client returns):
  n_items               items scored
  n_bad_items           status other than OK (empty, invalid UTF-8, too long, item error)
  n_gate_skipped        the identifier cannot name the target: no language check
  gate_penalised_share  share of n_items that were OK but penalised for their language
  mean_qe, n_qe         mean QE term over the n_qe items that have one
  mean_align_f1, n_align_f1   mean alignment F1 (before alpha) over the n_align_f1 items
  n_align_bonus         items whose reward got alpha * F1 (QE above the penalty)
  n_jieba_fallback      Chinese texts segmented with jieba because no HanLP model was given
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

COUNTS = ("n_items", "n_bad_items", "n_gate_skipped", "n_qe", "n_align_f1", "n_align_bonus",
          "n_jieba_fallback")
# mean -> the count it is a mean over
MEANS = {"gate_penalised_share": "n_items", "mean_qe": "n_qe", "mean_align_f1": "n_align_f1"}
NAMES = COUNTS + tuple(MEANS)


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values) if values else math.nan


def batch_metrics(items: Sequence, n_jieba_fallback: int = 0) -> dict[str, float]:
    """Metrics of one batch. `items` have `status` ("OK", ...), `language_ok`,
    `gate_skipped`, `qe` and `align_f1` (None when absent) and `align_bonus`."""
    ok = [it for it in items if it.status == "OK"]
    qe = [it.qe for it in items if it.qe is not None]
    f1 = [it.align_f1 for it in items if it.align_f1 is not None]
    n = len(items)
    return {
        "n_items": n,
        "n_bad_items": n - len(ok),
        "n_gate_skipped": sum(1 for it in items if it.gate_skipped),
        "n_qe": len(qe),
        "n_align_f1": len(f1),
        "n_align_bonus": sum(1 for it in items if it.align_bonus),
        "n_jieba_fallback": n_jieba_fallback,
        "gate_penalised_share": sum(1 for it in ok if not it.language_ok) / n if n else math.nan,
        "mean_qe": _mean(qe),
        "mean_align_f1": _mean(f1),
    }


def merge(parts: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """The metrics of the union of disjoint batches, from each batch's metrics."""
    parts = list(parts)
    if not parts:
        raise ValueError("merge() needs the metrics of at least one batch")
    for i, part in enumerate(parts):
        missing = [k for k in NAMES if k not in part]
        if missing:
            raise KeyError(f"batch {i} metrics lack {missing}")
    out: dict[str, float] = {k: int(sum(p[k] for p in parts)) for k in COUNTS}
    for mean, count in MEANS.items():
        weighted = [(p[mean], p[count]) for p in parts if p[count] > 0]
        total = sum(w for _, w in weighted)
        out[mean] = math.fsum(m * w for m, w in weighted) / total if total else math.nan
    return out

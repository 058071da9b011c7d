"""protos/reward_metrics.py: computed once per batch, merged exactly across splits."""

import dataclasses
import math

import pytest

from protos import reward_metrics
from protos.reward_pb2 import BatchMetrics


@dataclasses.dataclass
class _Item:
    status: str = "OK"
    language_ok: bool = True
    gate_skipped: bool = False
    qe: float | None = None
    align_f1: float | None = None
    align_bonus: bool = False


ITEMS = [
    _Item(qe=-3.0, align_f1=0.5, align_bonus=True),
    _Item(language_ok=False, qe=-20.0),
    _Item(status="EMPTY_TEXT", language_ok=False),
    _Item(qe=-25.0, align_f1=0.25),  # QE at the penalty: F1 but no bonus
    _Item(gate_skipped=True, qe=-1.0, align_f1=1.0, align_bonus=True),
    _Item(status="ITEM_ERROR", language_ok=False, qe=-7.0),
]


def test_batch_metrics_by_hand():
    m = reward_metrics.batch_metrics(ITEMS, n_jieba_fallback=2)
    assert m == {
        "n_items": 6, "n_bad_items": 2, "n_gate_skipped": 1, "n_qe": 5, "n_align_f1": 3,
        "n_align_bonus": 2, "n_jieba_fallback": 2,
        "gate_penalised_share": 1 / 6,  # only the OK item penalised for its language
        "mean_qe": (-3 - 20 - 25 - 1 - 7) / 5, "mean_align_f1": (0.5 + 0.25 + 1.0) / 3,
    }
    assert set(m) == set(reward_metrics.NAMES) == {f.name for f in BatchMetrics.DESCRIPTOR.fields}


@pytest.mark.parametrize("cuts", [(1,), (2, 4), (1, 2, 3, 4, 5), (3,)])
def test_merge_of_split_batches_equals_the_whole(cuts):
    bounds = [0, *cuts, len(ITEMS)]
    parts = [reward_metrics.batch_metrics(ITEMS[a:b]) for a, b in zip(bounds, bounds[1:])]
    whole = reward_metrics.batch_metrics(ITEMS)
    merged = reward_metrics.merge(parts)
    assert merged.keys() == whole.keys()
    for k in whole:
        assert merged[k] == pytest.approx(whole[k], rel=1e-15), k


def test_merge_weights_each_mean_by_its_count():
    first, rest = (reward_metrics.batch_metrics(ITEMS[:1]), reward_metrics.batch_metrics(ITEMS[1:]))
    assert (first["mean_qe"], rest["mean_qe"]) == (-3.0, -13.25)
    assert reward_metrics.merge([first, rest])["mean_qe"] == pytest.approx(-11.2)  # not -8.125


def test_merge_is_nan_safe():
    no_values = reward_metrics.batch_metrics([ITEMS[2]])  # no QE, no F1
    assert math.isnan(no_values["mean_qe"]) and math.isnan(no_values["mean_align_f1"])
    merged = reward_metrics.merge([no_values, reward_metrics.batch_metrics(ITEMS[:2])])
    assert merged["mean_qe"] == pytest.approx(-11.5) and merged["mean_align_f1"] == 0.5
    assert math.isnan(reward_metrics.merge([no_values, no_values])["mean_qe"])


def test_merge_refuses_incomplete_metrics():
    with pytest.raises(KeyError, match="batch 1 metrics lack"):
        reward_metrics.merge([reward_metrics.batch_metrics(ITEMS), {"n_items": 1}])
    with pytest.raises(ValueError, match="at least one"):
        reward_metrics.merge([])

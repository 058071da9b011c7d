"""The WALAR formula, computed by hand from the components, on real (tiny) models."""

import math

import numpy as np
import pytest

from reward.languages import UnknownLanguageError, resolve
from reward.lid import MaskLID
from reward.qe import MetricXQE
from reward.scorer import RawItem, RewardConfig, RewardScorer, batch_metrics
from tiny_models import FLORES, flores_lines

if not FLORES.is_dir():
    pytest.skip(f"FLORES data not found at {FLORES}", allow_module_level=True)
ENG = flores_lines("devtest", "eng_Latn", 3)
FRA = flores_lines("devtest", "fra_Latn", 3)
SWH = flores_lines("devtest", "swh_Latn", 3)


@pytest.fixture(scope="module")
def metricx(metricx_dirs):
    return MetricXQE(*metricx_dirs, device="cpu")


@pytest.fixture(scope="module")
def scorer(glotlid, metricx, aligner, segmenter):
    return RewardScorer(config=RewardConfig(alpha=20.0, penalty=-25.0), lid=glotlid,
                        masklid=MaskLID(glotlid), qe=metricx, aligner=aligner,
                        segmenter=segmenter)


def _item(src, hyp, tgt="fra_Latn", src_lang="eng_Latn"):
    return RawItem(src.encode(), hyp.encode(), src_lang, tgt)


def test_true_translation_gets_qe_plus_alpha_f1(scorer, metricx, aligner, segmenter):
    scores = scorer.score([_item(ENG[0], FRA[0]), _item(ENG[1], FRA[1])])
    for s, src, hyp in zip(scores, ENG, FRA):
        assert s.status == "OK" and s.language_ok and not s.gate_skipped
        assert s.detected_lang == "fra_Latn"
        qe = metricx.score([src], [hyp])[0]
        f1 = aligner.f1([segmenter.words(src, resolve("eng"))],
                        [segmenter.words(s.masked_hypothesis, resolve("fra"))])[0]
        assert s.qe == pytest.approx(qe, abs=1e-5) and s.align_f1 == pytest.approx(f1)
        assert s.reward == pytest.approx(qe + 20.0 * f1, abs=1e-5)
        assert -25 <= s.qe <= 0 and 0 < s.align_f1 <= 1


@pytest.mark.parametrize("hyp", [ENG[0], SWH[0]], ids=["copy_source", "wrong_language"])
def test_wrong_language_gets_the_penalty_and_nothing_else(scorer, hyp):
    (s,) = scorer.score([_item(ENG[0], hyp)])
    assert s.status == "OK" and not s.language_ok and s.reward == -25.0
    assert s.align_f1 is None and s.qe is not None  # QE still reported, not added
    assert s.detected_lang in ("eng_Latn", "swh_Latn")


def test_gate_skipped_when_identifier_cannot_label_target(lid176, embed_qe, aligner, segmenter):
    scorer = RewardScorer(config=RewardConfig(alpha=20.0, penalty=0.0), lid=lid176,
                          masklid=MaskLID(lid176), qe=embed_qe, aligner=aligner,
                          segmenter=segmenter)
    wol = flores_lines("devtest", "wol_Latn", 1)[0]
    (s,) = scorer.score([_item(ENG[0], wol, tgt="wol_Latn")])
    assert s.gate_skipped and s.language_ok and s.status == "OK"
    assert s.masked_hypothesis == wol
    assert s.reward == pytest.approx(s.qe + 20.0 * s.align_f1)


def test_bad_items_get_status_and_penalty_without_touching_the_rest(scorer):
    good = _item(ENG[0], FRA[0])
    (alone,) = scorer.score([good])
    bad = [
        RawItem(ENG[0].encode(), b"", "eng_Latn", "fra_Latn"),
        RawItem(ENG[0].encode(), "chat \ud800 noir".encode("utf-8", "surrogatepass"),
                "eng_Latn", "fra_Latn"),
        RawItem(ENG[0].encode(), ("mot " * 30000).encode(), "eng_Latn", "fra_Latn"),
        RawItem(b"   ", FRA[0].encode(), "eng_Latn", "fra_Latn"),
    ]
    scores = scorer.score([bad[0], good, *bad[1:]])
    assert [s.status for s in scores] == ["EMPTY_TEXT", "OK", "INVALID_TEXT", "TOO_LONG",
                                          "EMPTY_TEXT"]
    assert "UTF-8" in scores[2].detail and "--max_chars" in scores[3].detail
    assert all(s.reward == -25.0 and not s.language_ok for i, s in enumerate(scores) if i != 1)
    assert scores[1].reward == pytest.approx(alone.reward, abs=1e-5)


class _PoisonedQE:
    """Wraps the real MetricX backend; raises on one marked hypothesis, as a crashing
    model would on one item."""

    def __init__(self, inner):
        self.inner = inner

    def score(self, sources, hypotheses, references=None):
        if any("POISON" in h for h in hypotheses):
            raise RuntimeError("model crashed on this input")
        return self.inner.score(sources, hypotheses, references)


def test_one_crashing_item_is_isolated(glotlid, metricx, aligner, segmenter):
    scorer = RewardScorer(config=RewardConfig(), lid=glotlid, masklid=None,
                          qe=_PoisonedQE(metricx), aligner=aligner, segmenter=segmenter)
    scores = scorer.score([_item(ENG[0], FRA[0]), _item(ENG[1], FRA[1] + " POISON")])
    assert scores[0].status == "OK" and scores[0].qe == pytest.approx(
        metricx.score([ENG[0]], [FRA[0]])[0], abs=1e-5)
    assert scores[1].status == "ITEM_ERROR" and "model crashed" in scores[1].detail
    assert scores[1].reward == -25.0


def test_unknown_language_fails_the_batch_naming_item_and_field(scorer):
    with pytest.raises(UnknownLanguageError, match=r"item 1 tgt_lang: unknown language 'xx'"):
        scorer.score([_item(ENG[0], FRA[0]), _item(ENG[0], FRA[0], tgt="xx")])


def test_switches_qe_none_align_off_and_comet_penalty(glotlid, metricx, aligner, segmenter,
                                                     xcomet_dir):
    from reward.qe import CometQE

    align_only = RewardScorer(config=RewardConfig(penalty=0.0), lid=glotlid, masklid=None,
                              qe=None, aligner=aligner, segmenter=segmenter)
    (s,) = align_only.score([_item(ENG[0], FRA[0])])
    assert s.qe is None and s.reward == pytest.approx(20.0 * s.align_f1)
    qe_only = RewardScorer(config=RewardConfig(), lid=glotlid, masklid=None, qe=metricx)
    (s,) = qe_only.score([_item(ENG[0], FRA[0])])
    assert s.align_f1 is None and s.reward == s.qe
    comet = RewardScorer(config=RewardConfig(penalty=0.0), lid=glotlid, masklid=None,
                         qe=CometQE(xcomet_dir, device="cpu"), aligner=aligner,
                         segmenter=segmenter)
    right, wrong = comet.score([_item(ENG[0], FRA[0]), _item(ENG[0], SWH[0])])
    assert right.reward == pytest.approx(right.qe + 20 * right.align_f1)
    assert wrong.reward == 0.0 and not wrong.language_ok


def test_batch_metrics_by_hand(scorer):
    scores = scorer.score([_item(ENG[0], FRA[0]), _item(ENG[0], SWH[0]),
                           RawItem(b"x", b"", "en", "fr"), _item(ENG[1], FRA[1])])
    m = batch_metrics(scores)
    qe = [scores[i].qe for i in (0, 1, 3)]
    assert m["n_items"] == 4 and m["n_bad_items"] == 1 and m["n_gate_skipped"] == 0
    assert m["mean_qe"] == pytest.approx(np.mean(qe))
    assert m["gate_penalised_share"] == 0.25
    assert m["mean_align_f1"] == pytest.approx((scores[0].align_f1 + scores[3].align_f1) / 2)
    assert math.isnan(batch_metrics([scores[2]])["mean_qe"])

"""WALAR's published rule, each branch computed by hand from the components, on real
(tiny) models: a GlotLID-style fastText, a tiny MetricX-24 (MT5ForRegression), MiniLM
alignment, WALAR's segmentation.

MaskLID runs with beta 3 / alpha 1 where a branch needs it to drop words: WALAR's beta 20
is scaled for GlotLID's 2,000 labels; this identifier has 26, so almost every word ranks
every language in its top 20."""

import math

import numpy as np
import pytest
import torch

from protos.languages import WALAR_MASKLID_LABELS
from reward.languages import UnknownLanguageError, resolve
from reward.lid import MaskLID, MaskLIDParams
from reward.qe import MetricXQE, MT5ForRegression
from reward.scorer import RawItem, RewardConfig, RewardScorer, batch_metrics
from tiny_models import FLORES, flores_lines

if not FLORES.is_dir():
    pytest.skip(f"FLORES data not found at {FLORES}", allow_module_level=True)
ENG = flores_lines("devtest", "eng_Latn", 3)
FRA = flores_lines("devtest", "fra_Latn", 3)
SWH = flores_lines("devtest", "swh_Latn", 3)
# First half of a French sentence, second half of its English source: top-1 French.
_fw, _ew = FRA[0].split(), ENG[0].split()
MIXED = " ".join(_fw[: len(_fw) // 2] + _ew[len(_ew) // 2:])
SCALED = MaskLIDParams(beta=3, alpha=1)


@pytest.fixture(scope="module")
def metricx(metricx_dirs):
    return MetricXQE(*metricx_dirs, device="cpu")


@pytest.fixture(scope="module")
def worst_metricx(metricx_dirs, tmp_path_factory):
    """A MetricX-24 that scores every input 25 (the worst, clamped): the decoder's start
    embedding dominates one hidden direction, which the score row reads."""
    model_dir, tok_dir = metricx_dirs
    model = MT5ForRegression.from_pretrained(model_dir)
    with torch.no_grad():
        model.shared.weight[0] = 0.0
        model.shared.weight[0, 0] = 1000.0
        model.lm_head.weight[model.config.metricx_score_token] = 0.0
        model.lm_head.weight[model.config.metricx_score_token, 0] = 10.0
    out = tmp_path_factory.mktemp("worst_metricx")
    model.save_pretrained(out, safe_serialization=True)
    return MetricXQE(str(out), tok_dir, device="cpu")


def _scorer(glotlid, qe, aligner, segmenter, params=SCALED, **config):
    config = {"alpha": 20.0, "penalty": -25.0, **config}
    return RewardScorer(config=RewardConfig(**config), lid=glotlid,
                        masklid=MaskLID(glotlid, params, labels=WALAR_MASKLID_LABELS),
                        qe=qe, aligner=aligner, segmenter=segmenter)


@pytest.fixture(scope="module")
def scorer(glotlid, metricx, aligner, segmenter):
    return _scorer(glotlid, metricx, aligner, segmenter)


def _item(src, hyp, tgt="fra_Latn", src_lang="eng_Latn"):
    return RawItem(src.encode(), hyp.encode(), src_lang, tgt)


def _f1(aligner, segmenter, src, hyp, src_lang="eng_Latn", tgt="fra_Latn"):
    return aligner.f1([segmenter.words(src, resolve(src_lang))],
                      [segmenter.words(hyp, resolve(tgt))])[0]


def test_true_translation_gets_qe_plus_alpha_f1(scorer, metricx, aligner, segmenter):
    scores = scorer.score([_item(ENG[0], FRA[0]), _item(ENG[1], FRA[1])])
    for s, src, hyp in zip(scores, ENG, FRA):
        assert s.status == "OK" and s.language_ok and not s.gate_skipped
        assert s.detected_lang == "fra_Latn" and s.align_bonus
        qe = metricx.score([src], [hyp])[0]
        f1 = _f1(aligner, segmenter, src, s.masked_hypothesis)
        assert s.qe == pytest.approx(qe, abs=1e-5) and s.align_f1 == pytest.approx(f1)
        assert s.reward == pytest.approx(qe + 20.0 * f1, abs=1e-5)
        assert -25 <= s.qe <= 0 and 0 < s.align_f1 <= 1


@pytest.mark.parametrize("hyp", [ENG[0], SWH[0]], ids=["copy_source", "wrong_language"])
def test_wrong_top1_label_gets_the_penalty_and_nothing_else(scorer, glotlid, hyp):
    (s,) = scorer.score([_item(ENG[0], hyp)])
    ((label, _),) = glotlid.predict([hyp])
    assert label in ("__label__eng_Latn", "__label__swh_Latn")
    assert s.status == "OK" and not s.language_ok and s.reward == -25.0
    assert s.detected_lang == label.removeprefix("__label__")
    assert s.align_f1 is None and not s.align_bonus and s.masklid_share is None
    assert s.qe is not None  # QE still reported (WALAR computes it for every item), not added


def test_masklid_keeping_part_of_the_words_aligns_only_those(scorer, glotlid, metricx,
                                                             aligner, segmenter):
    """Top-1 French, so the gate passes; MaskLID keeps the French words, the alignment
    sees only them (F1 on the kept words), nothing else is penalised."""
    assert glotlid.predict([MIXED])[0][0] == "__label__fra_Latn"
    kept, share = MaskLID(glotlid, SCALED, labels=WALAR_MASKLID_LABELS).target_part(
        MIXED, resolve("fra_Latn"))
    assert 0 < len(kept.split()) < len(MIXED.split()) and set(kept.split()) < set(MIXED.split())
    (s,) = scorer.score([_item(ENG[0], MIXED)])
    assert s.language_ok and s.masked_hypothesis == kept and s.masklid_share == share
    f1_kept = _f1(aligner, segmenter, ENG[0], kept)
    assert f1_kept != pytest.approx(_f1(aligner, segmenter, ENG[0], MIXED))
    qe = metricx.score([ENG[0]], [MIXED])[0]  # QE on the whole hypothesis, not the kept part
    assert s.qe == pytest.approx(qe, abs=1e-5) and s.align_f1 == pytest.approx(f1_kept)
    assert s.reward == pytest.approx(qe + 20.0 * f1_kept, abs=1e-5)


def test_masklid_keeping_nothing_gives_the_qe_alone(glotlid, metricx, aligner, segmenter):
    """A hypothesis identified as French none of whose words ranks French first: with
    beta 1 MaskLID gives French no word, F1 is 0 and the reward is the QE term."""
    hyp = "en Gymnastics one"
    assert glotlid.predict([hyp])[0][0] == "__label__fra_Latn"
    scorer = _scorer(glotlid, metricx, aligner, segmenter, MaskLIDParams(beta=1, alpha=1))
    (s,) = scorer.score([_item(ENG[0], hyp)])
    assert s.language_ok and s.masked_hypothesis == "" and s.masklid_share == 0.0
    assert s.align_f1 == 0.0
    assert s.reward == s.qe == pytest.approx(metricx.score([ENG[0]], [hyp])[0], abs=1e-5)


def test_qe_at_the_penalty_in_the_right_language_gets_no_bonus(glotlid, worst_metricx, metricx,
                                                               aligner, segmenter):
    (s,) = _scorer(glotlid, worst_metricx, aligner, segmenter).score([_item(ENG[0], FRA[0])])
    assert s.language_ok and s.qe == -25.0 and s.align_f1 > 0  # F1 computed...
    assert not s.align_bonus and s.reward == -25.0  # ...but not added: QE is not > -25
    # The comparison is strict, at whatever penalty: QE equal to it gets nothing added.
    qe = float(metricx.score([ENG[0]], [FRA[0]])[0])
    (at,) = _scorer(glotlid, metricx, aligner, segmenter, penalty=qe).score(
        [_item(ENG[0], FRA[0])])
    assert not at.align_bonus and at.reward == pytest.approx(qe, abs=1e-5)
    (above,) = _scorer(glotlid, metricx, aligner, segmenter, penalty=qe - 1e-3).score(
        [_item(ENG[0], FRA[0])])
    assert above.align_bonus and above.reward == pytest.approx(qe + 20 * above.align_f1, 1e-5)


def test_newlines_are_deleted_and_the_whole_response_is_scored(scorer, glotlid, metricx):
    """WALAR strips the response and deletes its newlines (no space put in their place)
    before the gate, QE and MaskLID; text after a blank line is scored like the rest."""
    head, tail = FRA[0][:40], FRA[0][40:]
    hyp = f"  {head}\n{tail}\n\n{FRA[1]}\n"
    seen = f"{head}{tail}{FRA[1]}"
    (s,) = scorer.score([_item(ENG[0], hyp)])
    qe_seen = metricx.score([ENG[0]], [seen])[0]
    assert s.qe == pytest.approx(qe_seen, abs=1e-5)
    assert qe_seen != pytest.approx(metricx.score([ENG[0]], [f"{head} {tail} {FRA[1]}"])[0],
                                    abs=1e-5)  # a space instead would be another text
    kept, _ = MaskLID(glotlid, SCALED, labels=WALAR_MASKLID_LABELS).target_part(
        seen, resolve("fra_Latn"))
    assert s.masked_hypothesis == kept and "\n" not in kept
    assert set(FRA[1].split()[-3:]) & set(kept.split())  # after the blank line: scored
    assert s.detected_lang == glotlid.predict([seen])[0][0].removeprefix("__label__")


def test_masklid_share_gate_only_when_asked(glotlid, metricx, aligner, segmenter):
    kept_share = MaskLID(glotlid, SCALED, labels=WALAR_MASKLID_LABELS).target_part(
        MIXED, resolve("fra_Latn"))[1]
    assert 0.3 < kept_share < 0.9
    (walar,) = _scorer(glotlid, metricx, aligner, segmenter).score([_item(ENG[0], MIXED)])
    assert walar.language_ok and walar.reward == pytest.approx(
        walar.qe + 20 * walar.align_f1, abs=1e-6)
    (gated,) = _scorer(glotlid, metricx, aligner, segmenter, min_share=0.94).score(
        [_item(ENG[0], MIXED)])
    assert not gated.language_ok and gated.reward == -25.0 and gated.align_f1 is None
    assert gated.masklid_share == pytest.approx(kept_share)
    (low,) = _scorer(glotlid, metricx, aligner, segmenter, min_share=kept_share - 0.01).score(
        [_item(ENG[0], MIXED)])
    assert low.language_ok and low.reward == pytest.approx(walar.reward, abs=1e-6)


def test_gate_skipped_when_identifier_cannot_label_target(lid176, embed_qe, aligner, segmenter):
    scorer = RewardScorer(config=RewardConfig(alpha=20.0, penalty=-1.0), lid=lid176,
                          masklid=MaskLID(lid176), qe=embed_qe, aligner=aligner,
                          segmenter=segmenter)
    wol = flores_lines("devtest", "wol_Latn", 1)[0]
    (s,) = scorer.score([_item(ENG[0], wol, tgt="wol_Latn")])
    assert s.gate_skipped and s.language_ok and s.status == "OK"
    assert s.masked_hypothesis == wol and s.masklid_share is None  # MaskLID skipped too
    assert s.reward == pytest.approx(s.qe + 20.0 * s.align_f1)


def test_bad_items_get_status_and_penalty_without_touching_the_rest(scorer):
    good = _item(ENG[0], FRA[0])
    (alone,) = scorer.score([good])
    bad = [
        RawItem(ENG[0].encode(), b" \n\n ", "eng_Latn", "fra_Latn"),  # empty once stripped
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
    assert s.qe is None and s.align_bonus and s.reward == pytest.approx(20.0 * s.align_f1)
    qe_only = RewardScorer(config=RewardConfig(), lid=glotlid, masklid=None, qe=metricx)
    (s,) = qe_only.score([_item(ENG[0], FRA[0])])
    assert s.align_f1 is None and s.reward == s.qe
    comet = RewardScorer(config=RewardConfig(penalty=0.0), lid=glotlid, masklid=None,
                         qe=CometQE(xcomet_dir, device="cpu"), aligner=aligner,
                         segmenter=segmenter)
    right, wrong = comet.score([_item(ENG[0], FRA[0]), _item(ENG[0], SWH[0])])
    # The tiny random xCOMET scores this pair just below 0, COMET's penalty: as in WALAR,
    # the item keeps its score and gets no alignment bonus.
    assert right.language_ok and right.align_f1 > 0 and right.qe < 0
    assert not right.align_bonus and right.reward == right.qe
    assert wrong.reward == 0.0 and not wrong.language_ok


def test_batch_metrics_by_hand(scorer):
    scores = scorer.score([_item(ENG[0], FRA[0]), _item(ENG[0], SWH[0]),
                           RawItem(b"x", b"", "en", "fr"), _item(ENG[1], FRA[1]),
                           _item("我喜欢吃米饭。", FRA[2], src_lang="zho_Hans")])
    m = batch_metrics(scores)
    qe = [scores[i].qe for i in (0, 1, 3, 4)]
    f1 = [scores[i].align_f1 for i in (0, 3, 4)]
    assert m["n_items"] == 5 and m["n_bad_items"] == 1 and m["n_gate_skipped"] == 0
    assert m["n_qe"] == 4 and m["mean_qe"] == pytest.approx(np.mean(qe))
    assert m["gate_penalised_share"] == 0.2
    assert m["n_align_f1"] == 3 and m["mean_align_f1"] == pytest.approx(np.mean(f1))
    assert m["n_align_bonus"] == 3
    assert m["n_jieba_fallback"] == 1  # the Chinese source, segmented without HanLP
    assert math.isnan(batch_metrics([scores[2]])["mean_qe"])

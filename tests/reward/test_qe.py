import numpy as np
import pytest
import torch
import transformers

from reward.qe import MetricXQE, build_qe

SRC = ["The cat sat on the mat.", "He was born in 1990 in a small village.", "Hello."]
HYP = ["Le chat était assis sur le tapis.", "Il est né en 1990 dans un petit village.", "Salut."]


@pytest.fixture(scope="module")
def metricx(metricx_dirs):
    return MetricXQE(*metricx_dirs, device="cpu", batch_size=2)


def test_metricx_input_is_source_candidate_without_eos(metricx):
    assert MetricXQE.make_input("S", "H") == "source: S candidate: H"
    assert MetricXQE.make_input("S", "H", "R") == "source: S candidate: H reference: R"
    full = metricx.tokenizer(["source: S candidate: H"])["input_ids"][0]
    assert full[-1] == metricx.tokenizer.eos_token_id
    assert metricx.encode(["source: S candidate: H"])[0] == full[:-1]


def test_metricx_score_is_minus_clipped_regression_logit(metricx, metricx_dirs):
    """Recomputed by hand with the plain mT5 seq2seq model on the same weights: the logit
    of the score token at the first decoder step (pad as decoder input), clipped, negated."""
    plain = transformers.MT5ForConditionalGeneration.from_pretrained(metricx_dirs[0]).eval()
    token = plain.config.metricx_score_token
    expected = []
    for s, h in zip(SRC, HYP):
        ids = torch.tensor([metricx.encode([f"source: {s} candidate: {h}"])[0]])
        with torch.no_grad():
            logit = plain(input_ids=ids, decoder_input_ids=torch.zeros((1, 1), dtype=torch.long)
                          ).logits[0, 0, token].item()
        expected.append(-min(max(logit, 0.0), 25.0))
    got = metricx.score(SRC, HYP)  # padded, length-sorted micro-batches of 2
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert all(-25 < v < 0 for v in got)  # this random model lands inside the range


def test_metricx_clips_to_0_25(metricx):
    row = metricx.model.lm_head.weight.data[metricx.model.config.metricx_score_token]
    saved = row.clone()
    try:
        row.mul_(50.0)
        assert metricx.score(SRC[:1], HYP[:1])[0] == -25.0
        row.mul_(-1.0)
        assert metricx.score(SRC[:1], HYP[:1])[0] == 0.0
    finally:
        row.copy_(saved)


def test_xcomet_qe_and_reference_mode(xcomet_dir):
    from comet import load_from_checkpoint

    qe = build_qe("comet", xcomet_dir, tokenizer=None, device="cpu", batch_size=2,
                  max_length=512)
    scores = qe.score(SRC, HYP, [None, HYP[1], None])
    direct = load_from_checkpoint(f"{xcomet_dir}/checkpoints/model.ckpt", reload_hparams=True)
    qe_only = direct.predict([{"src": s, "mt": h} for s, h in zip(SRC, HYP)], batch_size=2,
                             gpus=0, progress_bar=False).scores
    with_ref = direct.predict([{"src": SRC[1], "mt": HYP[1], "ref": HYP[1]}], gpus=0,
                              progress_bar=False).scores
    np.testing.assert_allclose(scores[[0, 2]], [qe_only[0], qe_only[2]], atol=1e-5)
    assert scores[1] == pytest.approx(with_ref[0], abs=1e-5)
    assert scores[1] != pytest.approx(qe_only[1], abs=1e-6)  # the reference was used
    assert np.all(np.isfinite(scores))


def test_embed_qe_is_cosine(embed_qe):
    got = embed_qe.score(SRC, HYP)
    emb = embed_qe.model.encode(SRC + HYP, convert_to_numpy=True)
    a, b = emb[:3], emb[3:]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    np.testing.assert_allclose(got, cos, atol=1e-5)


def test_build_qe_errors_name_the_missing_flag():
    with pytest.raises(ValueError, match="--qe_tokenizer"):
        build_qe("metricx", "m", tokenizer=None, device="cpu", batch_size=1, max_length=8)
    with pytest.raises(ValueError, match="unknown --qe 'bleu'"):
        build_qe("bleu", None, tokenizer=None, device="cpu", batch_size=1, max_length=8)
    assert build_qe("none", None, tokenizer=None, device="cpu", batch_size=1,
                    max_length=8) is None

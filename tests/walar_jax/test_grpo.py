"""GRPO pieces against straightforward numpy references."""

import numpy as np
import pytest

from walar_jax.rl import grpo

rng = np.random.default_rng(0)


def test_group_advantages_normalise_within_groups():
    r = rng.normal(size=(4, 8)).astype(np.float32) * 5 + np.arange(4)[:, None] * 10
    got = np.asarray(grpo.group_advantages(r.reshape(-1), 8))
    ref = (r - r.mean(1, keepdims=True)) / (r.std(1, ddof=1, keepdims=True) + 1e-9)
    np.testing.assert_allclose(got, ref.reshape(-1), rtol=1e-5, atol=1e-5)
    # Dr.GRPO: centred, not scaled
    got = np.asarray(grpo.group_advantages(r.reshape(-1), 8, scale_by_std=False))
    np.testing.assert_allclose(got, (r - r.mean(1, keepdims=True)).reshape(-1), atol=1e-5)


def test_identical_rewards_give_zero_advantage():
    assert np.all(np.asarray(grpo.group_advantages(np.full(8, -25.0), 8)) == 0)


def test_ppo_clip_loss_matches_numpy():
    S, T = 5, 7
    logp, old = rng.normal(-2, 0.3, (S, T)), rng.normal(-2, 0.3, (S, T))
    adv = rng.normal(size=S)
    loss, clipped = grpo.ppo_clip_loss(logp, old, adv, clip_low=0.2, clip_high=0.28)
    ratio = np.exp(logp - old)
    ref = -np.minimum(ratio * adv[:, None], np.clip(ratio, 0.8, 1.28) * adv[:, None])
    np.testing.assert_allclose(np.asarray(loss), ref, rtol=1e-5)
    # a token is clipped exactly when the clipped branch is the active (smaller) one
    ref_clip = np.clip(ratio, 0.8, 1.28) * adv[:, None] < ratio * adv[:, None]
    assert np.array_equal(np.asarray(clipped).astype(bool), ref_clip)


@pytest.mark.parametrize("est", ["k1", "k2", "k3"])
def test_kl_estimators(est):
    lp, ref = rng.normal(-2, 0.5, (3, 4)), rng.normal(-2, 0.5, (3, 4))
    x = ref - lp
    expect = {"k1": -x, "k2": 0.5 * x**2, "k3": np.exp(x) - 1 - x}[est]
    np.testing.assert_allclose(np.asarray(grpo.kl_penalty(lp, ref, est)), expect, rtol=1e-4, atol=1e-6)


def test_k3_is_unbiased_for_kl():
    # samples from p, KL(p||q) for two categorical distributions
    p = np.array([0.5, 0.3, 0.2])
    q = np.array([0.2, 0.5, 0.3])
    s = rng.choice(3, size=200_000, p=p)
    est = np.asarray(grpo.kl_penalty(np.log(p[s]), np.log(q[s]), "k3")).mean()
    assert abs(est - np.sum(p * np.log(p / q))) < 5e-3


def test_aggregations():
    v = np.array([[1.0, 2.0, 3.0, 0.0], [10.0, 0.0, 0.0, 0.0]])
    m = np.array([[1, 1, 1, 0], [1, 0, 0, 0]])

    def agg(mode, **kw):
        return float((v * np.asarray(grpo.token_weights(m, mode, **kw))).sum())

    assert agg("token_mean") == pytest.approx(16 / 4)
    assert agg("seq_mean_token_mean") == pytest.approx((2 + 10) / 2)
    # one micro-batch per sequence: the mean of the two sequences' token means
    assert agg("microbatch_token_mean", group=1) == pytest.approx((2 + 10) / 2)
    assert agg("microbatch_token_mean", group=2) == pytest.approx(16 / 4)
    with pytest.raises(ValueError, match="bogus"):
        grpo.token_weights(m, "bogus")
    with pytest.raises(ValueError, match="group 3 must divide 2"):
        grpo.token_weights(m, "microbatch_token_mean", group=3)


def test_k3_clamp_is_optional():
    lp, ref = np.array([[0.0]]), np.array([[-30.0]])  # log(ref / pi) = -30
    assert float(grpo.kl_penalty(lp, ref, "k3")[0, 0]) == pytest.approx(np.exp(-30) + 29)
    assert float(grpo.kl_penalty(lp, ref, "k3", clamp=20)[0, 0]) == pytest.approx(np.exp(-20) + 19)


def test_importance_corrections_and_mismatch():
    old, roll = np.log([[0.5, 0.1, 0.3]]), np.log([[0.25, 0.1, 0.3]])
    m = np.array([[1, 1, 0]])
    w, st = grpo.is_weights(old, roll, m, mode="tis", cap=1.5)
    np.testing.assert_allclose(np.asarray(w)[:, :2], [[1.5, 1.0]])
    assert float(st["is_ratio_mean"]) == pytest.approx((2 + 1) / 2)
    assert float(st["is_truncated_share"]) == pytest.approx(0.5)
    w, _ = grpo.is_weights(old, roll, m, mode="none")
    assert np.all(np.asarray(w) == 1)
    # mask: sequence ratio exp(mean(log 2, 0)) = sqrt(2) lies in [0.5, 2], not in [0.5, 1.2]
    two = np.concatenate([old, old]), np.concatenate([roll, old])
    w, st = grpo.is_weights(*two, np.concatenate([m, m]), mode="mask", band=(0.5, 1.2))
    np.testing.assert_array_equal(np.asarray(w), [[0, 0, 0], [1, 1, 1]])
    assert float(st["is_masked_share"]) == pytest.approx(0.5)
    w, _ = grpo.is_weights(*two, np.concatenate([m, m]), mode="mask", band=(0.5, 2.0))
    assert np.all(np.asarray(w) == 1)
    mean, mx = grpo.logprob_mismatch(old[:, :2], roll[:, :2], np.array([[1, 1]]))
    assert float(mx) == pytest.approx(np.log(2)) and float(mean) == pytest.approx(np.log(2) / 2)

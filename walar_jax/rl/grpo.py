"""GRPO math as small pure functions on arrays (jnp or np).

Shapes: rewards/advantages are per sequence [S]; token quantities are [S, T] with a
0/1 `mask` marking response tokens that count.
"""

from __future__ import annotations

import jax.numpy as jnp


def group_advantages(rewards, group_size: int, *, scale_by_std: bool = True, eps: float = 1e-6):
    """(r - mean of its group) / (std of its group + eps); Dr.GRPO drops the division.

    Rewards come grouped: the `group_size` samples of one prompt are contiguous.
    """
    r = jnp.asarray(rewards, jnp.float32).reshape(-1, group_size)
    adv = r - r.mean(axis=1, keepdims=True)
    if scale_by_std:
        adv = adv / (r.std(axis=1, ddof=1, keepdims=True) + eps) if group_size > 1 else adv
    return adv.reshape(-1)


def ppo_clip_loss(logp, old_logp, advantages, *, clip_low: float, clip_high: float):
    """Per-token clipped surrogate loss and whether each token was clipped.

    `advantages` is per sequence [S] and broadcast over tokens.
    """
    ratio = jnp.exp(logp - old_logp)
    adv = advantages[:, None]
    unclipped = ratio * adv
    clipped = jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high) * adv
    loss = -jnp.minimum(unclipped, clipped)
    return loss, (clipped < unclipped).astype(jnp.float32)


def kl_penalty(logp, ref_logp, estimator: str = "k3"):
    """Per-token KL(pi || ref) estimate from samples of pi (Schulman's k1/k2/k3)."""
    log_ratio = ref_logp - logp  # log(ref / pi)
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        # exp(x) - 1 - x >= 0; clamp x for numerical safety as OpenRLHF/verl do
        x = jnp.clip(log_ratio, -20.0, 20.0)
        return jnp.exp(x) - 1.0 - x
    raise ValueError(f"unknown KL estimator {estimator!r} (k1, k2, k3)")


def aggregate(values, mask, mode: str = "token_mean"):
    """token_mean: mean over every counted token of the batch; seq_mean_token_mean:
    mean within each sequence, then over sequences."""
    mask = mask.astype(jnp.float32)
    if mode == "token_mean":
        return (values * mask).sum() / jnp.maximum(mask.sum(), 1.0)
    if mode == "seq_mean_token_mean":
        per_seq = (values * mask).sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1.0)
        has = (mask.sum(axis=1) > 0).astype(jnp.float32)
        return (per_seq * has).sum() / jnp.maximum(has.sum(), 1.0)
    raise ValueError(f"unknown loss aggregation {mode!r} (token_mean, seq_mean_token_mean)")


def truncated_is_weights(old_logp, rollout_logp, cap: float):
    """Truncated importance weights min(pi_old / pi_rollout, cap) that correct for the
    sampler's numerics differing from the trainer's (off when cap <= 0)."""
    if cap <= 0:
        return jnp.ones_like(old_logp)
    return jnp.minimum(jnp.exp(old_logp - rollout_logp), cap)


def logprob_mismatch(trainer_logp, rollout_logp, mask):
    """Mean |trainer - rollout| log-prob over counted tokens, and the max."""
    diff = jnp.abs(trainer_logp - rollout_logp) * mask
    return diff.sum() / jnp.maximum(mask.sum(), 1.0), diff.max()

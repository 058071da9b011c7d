"""GRPO math as small pure functions on arrays (jnp or np).

Shapes: rewards/advantages are per sequence [S]; token quantities are [S, T] with a
0/1 `mask` marking response tokens that count.
"""

from __future__ import annotations

import jax.numpy as jnp


def group_advantages(rewards, group_size: int, *, scale_by_std: bool = True, eps: float = 1e-9):
    """(r - mean of its group) / (std of its group + eps); Dr.GRPO drops the division.

    Rewards come grouped: the `group_size` samples of one prompt are contiguous. The std
    is the unbiased one and eps 1e-9, as OpenRLHF's `group_norm` (WALAR's estimator).
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


def kl_penalty(logp, ref_logp, estimator: str = "k3", *, clamp: float = 0.0):
    """Per-token KL(pi || ref) estimate from samples of pi (Schulman's k1/k2/k3).

    `clamp` > 0 bounds log(ref / pi) to [-clamp, clamp] before k3's exp (verl uses 20);
    0 leaves it unbounded, as WALAR's OpenRLHF does.
    """
    log_ratio = ref_logp - logp  # log(ref / pi)
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        x = jnp.clip(log_ratio, -clamp, clamp) if clamp > 0 else log_ratio
        return jnp.exp(x) - 1.0 - x
    raise ValueError(f"unknown KL estimator {estimator!r} (k1, k2, k3)")


def token_weights(mask, mode: str = "token_mean", *, group: int = 0, order=None):
    """Weight of each token in the loss of one train batch [S, T]; weights sum to 1, so
    `sum(values * w)` is the batch's aggregate and summing it over any split of the
    sequences (micro-batches, shards) gives exactly the same number.

    token_mean: every counted token of the batch alike. seq_mean_token_mean: mean within
    each sequence, then over sequences. microbatch_token_mean: OpenRLHF's (WALAR's) loss:
    a token mean within each micro-batch of `group` sequences, averaged over micro-batches;
    `order` (a permutation of the sequences, as OpenRLHF's shuffled DataLoader draws
    them) decides which sequences share a micro-batch, contiguous when None.
    """
    mask = jnp.asarray(mask, jnp.float32)
    if mode == "token_mean":
        return mask / jnp.maximum(mask.sum(), 1.0)
    if mode == "seq_mean_token_mean":
        per_seq = mask.sum(axis=1, keepdims=True)
        has = (per_seq > 0).astype(jnp.float32)
        return mask / jnp.maximum(per_seq, 1.0) * has / jnp.maximum(has.sum(), 1.0)
    if mode == "microbatch_token_mean":
        S = mask.shape[0]
        if group <= 0 or S % group:
            raise ValueError(f"microbatch_token_mean: group {group} must divide {S} sequences")
        order = jnp.arange(S) if order is None else jnp.asarray(order)
        tokens = mask.sum(axis=1)[order].reshape(S // group, group).sum(axis=1)
        per_group = 1.0 / jnp.maximum(tokens, 1.0) / jnp.maximum((tokens > 0).sum(), 1)
        slot = jnp.zeros(S, jnp.int32).at[order].set(jnp.arange(S) // group)
        return mask * per_group[slot][:, None] * (tokens[slot] > 0)[:, None]
    raise ValueError(f"unknown loss aggregation {mode!r} "
                     "(token_mean, seq_mean_token_mean, microbatch_token_mean)")


def is_weights(old_logp, rollout_logp, mask, *, mode: str = "none", cap: float = 2.0,
               band: tuple[float, float] = (0.5, 2.0)):
    """Per-token weights [S, T] on the policy-gradient term that correct for the sampler
    (behaviour policy, `rollout_logp`) differing from the trainer's old policy: through
    stale weights (max_staleness > 0) or numerics.

    none: 1. tis: truncated importance sampling, min(pi_old / pi_sampler, cap) per token.
    mask: a sequence whose length-normalised ratio exp(mean log(pi_old / pi_sampler))
    leaves `band` gets weight 0, every other token 1. Returns (weights, metrics).
    """
    mask = jnp.asarray(mask, jnp.float32)
    log_ratio = (jnp.asarray(old_logp) - jnp.asarray(rollout_logp)) * mask
    n_tok = jnp.maximum(mask.sum(), 1.0)
    stats = {"is_ratio_mean": (jnp.exp(log_ratio) * mask).sum() / n_tok}
    if mode == "none":
        return jnp.ones_like(mask), {**stats, "is_masked_share": jnp.zeros(())}
    if mode == "tis":
        w = jnp.minimum(jnp.exp(log_ratio), cap)
        return w, {**stats, "is_truncated_share": ((jnp.exp(log_ratio) > cap) * mask).sum() / n_tok,
                   "is_masked_share": jnp.zeros(())}
    if mode == "mask":
        has = mask.sum(axis=1) > 0
        seq = jnp.exp(log_ratio.sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1.0))
        keep = (seq >= band[0]) & (seq <= band[1])
        share = (has & ~keep).sum() / jnp.maximum(has.sum(), 1)
        return jnp.broadcast_to(keep[:, None], mask.shape).astype(jnp.float32), {
            **stats, "is_masked_share": share}
    raise ValueError(f"unknown importance correction {mode!r} (none, tis, mask)")


def logprob_mismatch(trainer_logp, rollout_logp, mask):
    """Mean |trainer - rollout| log-prob over counted tokens, and the max."""
    diff = jnp.abs(trainer_logp - rollout_logp) * mask
    return diff.sum() / jnp.maximum(mask.sum(), 1.0), diff.max()

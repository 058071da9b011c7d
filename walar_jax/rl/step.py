"""The jitted, sharded GRPO update and the log-prob pass, as pure functions of
(params, optimizer state, batch). Params are the pure-dict state of the NNX policy.

Batch arrays are [M, B, T]: M micro-batches of B sequences; gradients accumulate over
M inside one jitted call, so one call is one optimizer step on a whole train batch.
`w` [M, B, T] holds each token's weight in the train batch's loss (grpo.token_weights),
which makes the aggregation exact whatever M and the sharding.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from walar_jax.models.transformer import add_micro_grads
from walar_jax.rl import grpo


@dataclasses.dataclass(frozen=True)
class LossConfig:
    clip_low: float = 0.2
    clip_high: float = 0.2
    kl_coef: float = 0.01
    kl_estimator: str = "k3"
    kl_clamp: float = 0.0
    entropy_coef: float = 0.0
    logprob_chunk: int = 256


def make_optimizer(lr: float, total_steps: int, *, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0,
                   warmup_frac=0.03, min_lr_ratio=0.1, clip_norm=1.0):
    """AdamW on a warmup + cosine schedule with a floor, after global-norm clipping."""
    warmup = max(1, int(round(warmup_frac * total_steps)))
    base = optax.warmup_cosine_decay_schedule(
        0.0, lr, warmup_steps=warmup, decay_steps=max(total_steps, warmup + 1),
        end_value=lr * min_lr_ratio)

    def schedule(count):  # step k uses the rate after k+1 warmup steps: never 0
        return base(count + 1)
    tx = optax.chain(clip_by_global_norm(clip_norm),
                     optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))
    return tx, schedule


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """optax.clip_by_global_norm as one multiply by min(1, max_norm / norm): XLA fuses it
    into Adam's update, where optax's select between two trees made XLA:CPU keep one more
    fp32 copy of the gradients per device (bench/aot_memory.py)."""
    def update(updates, state, params=None):
        del params
        scale = jnp.minimum(1.0, max_norm / jnp.maximum(optax.tree.norm(updates), 1e-30))
        return jax.tree.map(lambda g: g * scale.astype(g.dtype), updates), state
    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def token_logprobs(graphdef, params, ids, seg, chunk, grad_acc=None, entropy_grad=True):
    model = nnx.merge(graphdef, params)
    return model.token_logprobs(ids, jnp.roll(ids, -1, axis=1), segment_ids=seg, chunk=chunk,
                                with_entropy=True, entropy_grad=entropy_grad,
                                grad_acc=grad_acc)


def logprob_pass(graphdef, params, batch, *, chunk: int):
    """Log-probs [M, B, T] of every next token (old policy or reference), no gradient."""
    def one(mb):
        return token_logprobs(graphdef, params, mb["ids"], mb["seg"], chunk)[0]
    return jax.lax.map(one, {"ids": batch["ids"], "seg": batch["seg"]})


def _micro_loss(params, graphdef, mb, cfg: LossConfig, grad_acc=None):
    """This micro-batch's share of the train batch's loss: per-token terms weighted by
    `mb["w"]` (grpo.token_weights over the whole train batch, so shares add up exactly)."""
    logp, ent = token_logprobs(graphdef, params, mb["ids"], mb["seg"], cfg.logprob_chunk,
                               grad_acc, entropy_grad=bool(cfg.entropy_coef))
    w = mb["w"]
    pg, clipped = grpo.ppo_clip_loss(logp, mb["old_logp"], mb["adv"],
                                     clip_low=cfg.clip_low, clip_high=cfg.clip_high)
    pg = pg * mb["is_w"]  # importance correction for the sampler (grpo.is_weights)

    def agg(x):
        return jnp.sum(x * w)

    loss = agg(pg)
    kl = (agg(grpo.kl_penalty(logp, mb["ref_logp"], cfg.kl_estimator, clamp=cfg.kl_clamp))
          if cfg.kl_coef else jnp.zeros((), jnp.float32))
    entropy = agg(ent)
    total = loss + cfg.kl_coef * kl - cfg.entropy_coef * entropy
    parts = {"pg_loss": loss, "kl": kl, "entropy": entropy, "clip_frac": agg(clipped),
             "ratio_mean": agg(jnp.exp(logp - mb["old_logp"]))}
    return total, parts


def train_step(graphdef, tx, cfg: LossConfig, params, opt_state, batch, *, param_shardings=None):
    """One optimizer step on batch [M, B, T]; returns (params, opt_state, metrics).

    `param_shardings` keeps the fp32 gradient accumulator sharded like the parameters
    (left to propagation, XLA may replicate it: a full fp32 copy of the model per device).
    """
    grad_fn = jax.value_and_grad(_micro_loss, has_aux=True)

    def shard_like_params(tree):
        if param_shardings is None:
            return tree
        return jax.tree.map(jax.lax.with_sharding_constraint, tree, param_shardings)

    model = nnx.merge(graphdef, params)

    def body(acc, mb):
        grads, sums = acc
        # scanned layers add their gradients into grads["layers"] in place (no second copy)
        layer_acc = grads["layers"] if model.fuses_grad_accumulation else None
        (loss, parts), g = grad_fn(params, graphdef, mb, cfg, layer_acc)
        grads = shard_like_params(add_micro_grads(model, grads, g))
        sums = jax.tree.map(jnp.add, sums, {"loss": loss, **parts})
        return (grads, sums), None

    zeros = shard_like_params(jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params))
    keys = ("loss", "pg_loss", "kl", "entropy", "clip_frac", "ratio_mean")
    init = (zeros, {k: jnp.zeros((), jnp.float32) for k in keys})
    (grads, sums), _ = jax.lax.scan(body, init, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    metrics = dict(sums, grad_norm=optax.tree.norm(grads), update_norm=optax.tree.norm(updates),
                   param_norm=optax.tree.norm(new_params))
    return new_params, opt_state, metrics

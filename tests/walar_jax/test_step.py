"""The jitted update: gradient accumulation over micro-batches is exact, the loss is the
GRPO objective computed by hand, and a sharded step equals a single-device one."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from walar_jax import models, sharding
from walar_jax.models.tiny import tiny_config
from walar_jax.rl import grpo
from walar_jax.rl.step import LossConfig, make_optimizer, train_step


def batch(M, B, T=24, seed=0, agg="token_mean", group=0):
    rng = np.random.default_rng(seed)
    mask = np.zeros((M, B, T), np.float32)
    for m in range(M):
        for b in range(B):
            start, n = rng.integers(4, 10), rng.integers(3, 12)
            mask[m, b, start:start + n] = 1
    lp = rng.normal(-3, 0.2, (M, B, T)).astype(np.float32)
    w = np.asarray(grpo.token_weights(mask.reshape(M * B, T), agg, group=group)).reshape(M, B, T)
    return {"w": w, "is_w": np.ones((M, B, T), np.float32),"ids": rng.integers(0, 384, (M, B, T)).astype(np.int32),
            "seg": np.ones((M, B, T), np.int32), "mask": mask,
            "adv": rng.normal(size=(M, B)).astype(np.float32),
            "old_logp": lp, "ref_logp": lp - 0.05, "rollout_logp": lp + 0.01}


def setup(adam=False):
    """Plain SGD by default, so parameters after a step compare gradients directly (Adam's
    first step, g / (|g| + eps), magnifies rounding in near-zero gradients)."""
    model = models.init_random(tiny_config(), seed=0)
    graphdef, state = nnx.split(model)
    tx = make_optimizer(1e-3, 10)[0] if adam else optax.sgd(1.0)
    cfg = LossConfig(logprob_chunk=8)
    return graphdef, nnx.to_pure_dict(state), tx, cfg


@pytest.mark.parametrize("agg,group", [("token_mean", 0), ("seq_mean_token_mean", 0),
                                       ("microbatch_token_mean", 2)])
def test_accumulated_micro_batches_equal_one_big_batch(agg, group):
    graphdef, params, tx, cfg = setup()
    two = batch(2, 4, agg=agg, group=group)
    one = {k: v.reshape(1, 8, *v.shape[2:]) for k, v in two.items()}
    step = jax.jit(functools.partial(train_step, graphdef, tx, cfg))
    p1, _, m1 = step(params, tx.init(params), jax.tree.map(jnp.asarray, one))
    p2, _, m2 = step(params, tx.init(params), jax.tree.map(jnp.asarray, two))
    np.testing.assert_allclose(float(m1["loss"]), float(m2["loss"]), rtol=1e-5)
    np.testing.assert_allclose(float(m1["grad_norm"]), float(m2["grad_norm"]), rtol=1e-4)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def _objective_by_hand(graphdef, params, b, per_token_weight):
    model = nnx.merge(graphdef, params)
    ids = jnp.asarray(b["ids"][0])
    logp = np.asarray(model.token_logprobs(ids, jnp.roll(ids, -1, 1),
                                           segment_ids=jnp.asarray(b["seg"][0])))
    adv, old, ref = b["adv"][0], b["old_logp"][0], b["ref_logp"][0]
    ratio = np.exp(logp - old)
    pg = -np.minimum(ratio * adv[:, None], np.clip(ratio, 0.8, 1.2) * adv[:, None])
    x = ref - logp
    kl = np.exp(x) - 1 - x
    return ((pg + 0.01 * kl) * per_token_weight).sum()


@pytest.mark.parametrize("agg", ["token_mean", "microbatch_token_mean"])
def test_loss_is_the_grpo_objective_by_hand(agg):
    graphdef, params, tx, cfg = setup(adam=True)
    b = batch(1, 4, agg=agg, group=2)
    _, _, m = train_step(graphdef, tx, cfg, params, tx.init(params), jax.tree.map(jnp.asarray, b))
    mask = b["mask"][0]
    if agg == "token_mean":
        weight = mask / mask.sum()
    else:  # OpenRLHF: token mean of each micro-batch of 2 sequences, mean over the two
        weight = np.concatenate([mask[:2] / mask[:2].sum(), mask[2:] / mask[2:].sum()]) / 2
    np.testing.assert_allclose(float(m["loss"]), _objective_by_hand(graphdef, params, b, weight),
                               rtol=1e-4)
    assert float(m["grad_norm"]) > 0 and float(m["update_norm"]) > 0


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean", "microbatch_token_mean"])
def test_token_weights_sum_to_one_and_follow_the_groups(agg):
    mask = batch(3, 2)["mask"].reshape(6, -1)
    mask[4] = 0  # an empty sequence carries no weight
    order = np.array([5, 0, 3, 1, 4, 2])
    w = np.asarray(grpo.token_weights(mask, agg, group=3, order=order))
    assert np.isclose(w.sum(), 1.0) and np.all(w[mask == 0] == 0) and np.all(w[mask > 0] > 0)
    if agg == "microbatch_token_mean":  # micro-batches {5, 0, 3} and {1, 4, 2}
        for members in ([5, 0, 3], [1, 4, 2]):
            np.testing.assert_allclose(w[members].sum(), 0.5, rtol=1e-6)
            np.testing.assert_allclose(w[members][mask[members] > 0],
                                       0.5 / mask[members].sum(), rtol=1e-6)


def test_sharded_step_equals_single_device():
    graphdef, params, tx, cfg = setup()
    b = jax.tree.map(jnp.asarray, batch(2, 8))
    ref_p, _, ref_m = jax.jit(functools.partial(train_step, graphdef, tx, cfg))(
        params, tx.init(params), b)
    mesh = sharding.make_mesh((2, 2, 2))
    model = models.init_random(tiny_config(), seed=0, mesh=mesh)
    g2, state = nnx.split(model)
    sp = nnx.to_pure_dict(state)
    p_sh = models.sharding_tree(model, mesh)
    opt = tx.init(sp)
    o_sh = sharding.optimizer_shardings(opt, sp, p_sh, mesh)
    b_sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, ("data", "fsdp")))
    step = jax.jit(functools.partial(train_step, g2, tx, cfg, param_shardings=p_sh),
                   in_shardings=(p_sh, o_sh, b_sh), out_shardings=(p_sh, o_sh, None))
    with sharding.use_sharding(sharding.ShardingCtx(mesh)):
        got_p, _, got_m = step(sp, opt, b)
        jax.block_until_ready(got_p)
    np.testing.assert_allclose(float(got_m["loss"]), float(ref_m["loss"]), rtol=1e-5)
    for a, c in zip(jax.tree.leaves(got_p), jax.tree.leaves(ref_p)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(c), atol=2e-6)

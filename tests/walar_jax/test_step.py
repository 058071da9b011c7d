"""The jitted update: gradient accumulation over micro-batches is exact, the loss is the
GRPO objective computed by hand, and a sharded step equals a single-device one; scanned
layers (with in-place gradient accumulation) give the listed layers' step, and their
compiled step never holds a whole layer stack on one device."""

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


def stacked(params: dict, n_layers: int) -> dict:
    """A listed model's pure-dict parameters in the scanned layout (layers stacked)."""
    layers = [params["layers"][i] for i in range(n_layers)]
    return {**params, "layers": jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}


def setup(adam=False, **options):
    """Plain SGD by default, so parameters after a step compare gradients directly (Adam's
    first step, g / (|g| + eps), magnifies rounding in near-zero gradients)."""
    model = models.init_random(tiny_config(), seed=0, **options)
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


@pytest.mark.parametrize("remat", ["nothing_saveable", "dots_saveable", "none"])
def test_scanned_step_equals_listed_step(remat):
    """Scanned layers (nothing_saveable: their gradients added into the accumulator in
    place by the model's own backward) take the same optimizer step as listed layers."""
    graphdef, params, tx, cfg = setup()
    scan_def, _, _, _ = setup(remat=remat, scan_layers=True)
    assert nnx.merge(scan_def, stacked(params, 2)).fuses_grad_accumulation == (
        remat == "nothing_saveable")
    b = jax.tree.map(jnp.asarray, batch(3, 4))
    ref_p, _, ref_m = jax.jit(functools.partial(train_step, graphdef, tx, cfg))(
        params, tx.init(params), b)
    sp = stacked(params, 2)
    got_p, _, got_m = jax.jit(functools.partial(train_step, scan_def, tx, cfg))(
        sp, tx.init(sp), b)
    for k in ("loss", "grad_norm", "update_norm", "kl", "clip_frac"):
        np.testing.assert_allclose(float(got_m[k]), float(ref_m[k]), rtol=1e-5, err_msg=k)
    for a, c in zip(jax.tree.leaves(got_p), jax.tree.leaves(stacked(ref_p, 2)), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(c), atol=1e-6)


@pytest.mark.parametrize("scan", [False, True])
def test_sharded_step_equals_single_device(scan):
    opts = dict(scan_layers=scan, remat="nothing_saveable" if scan else "none")
    graphdef, params, tx, cfg = setup(**opts)
    b = jax.tree.map(jnp.asarray, batch(2, 8))
    ref_p, _, ref_m = jax.jit(functools.partial(train_step, graphdef, tx, cfg))(
        params, tx.init(params), b)
    jax.block_until_ready(ref_p)
    mesh = sharding.make_mesh((2, 2, 2))
    model = models.init_random(tiny_config(), seed=0, mesh=mesh, **opts)
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


def test_scanned_step_never_holds_a_whole_layer_stack_on_one_device():
    """AOT-compile the update for 32 scanned layers on an fsdp mesh of the 8 fake devices:
    each device's peak temporaries stay below the fp32 gradient accumulator (its share of
    the parameters) plus one unsharded copy of the largest layer stack. Gathering any
    whole stack (or, as XLA:CPU does with listed layers, every layer's weights) breaks it."""
    from flax import nnx as _nnx
    from jax.sharding import NamedSharding, PartitionSpec as P

    cfg = tiny_config(d_model=128, n_layers=32, n_heads=4, n_kv_heads=2, head_dim=32,
                      ffn_dim=512, vocab_size=256)
    mesh = sharding.make_mesh((1, 8, 1))
    abstract = models.abstract_model(cfg, dtype=jnp.bfloat16, remat="nothing_saveable",
                                     scan_layers=True, attention="xla")
    graphdef, state = _nnx.split(abstract)
    params = _nnx.to_pure_dict(state)
    p_sh = models.sharding_tree(abstract, mesh)
    tx = make_optimizer(1e-3, 10)[0]
    opt = jax.eval_shape(tx.init, params)
    o_sh = sharding.optimizer_shardings(opt, params, p_sh, mesh)
    spec = {k: jax.ShapeDtypeStruct((2, 8, 32), v.dtype) for k, v in batch(1, 1).items()
            if k != "adv"} | {"adv": jax.ShapeDtypeStruct((2, 8), jnp.float32)}
    step = jax.jit(functools.partial(train_step, graphdef, tx, LossConfig(logprob_chunk=16),
                                     param_shardings=p_sh),
                   in_shardings=(p_sh, o_sh, NamedSharding(mesh, P(None, ("data", "fsdp")))),
                   out_shardings=(p_sh, o_sh, None), donate_argnums=(0, 1))
    with sharding.use_sharding(sharding.ShardingCtx(mesh)):
        mem = step.lower(params, opt, spec).compile().memory_analysis()
    leaves = jax.tree.leaves(params)
    per_device = sum(x.size * 4 for x in leaves) / 8
    largest_stack = max(x.size * 4 for x in jax.tree.leaves(params["layers"]))
    assert largest_stack > 0.2 * 8 * per_device  # a stack is a big share of the model
    assert mem.temp_size_in_bytes < per_device + largest_stack, (
        mem.temp_size_in_bytes, per_device, largest_stack)


def test_entropy_bonus_follows_the_entropy_gradient():
    """With entropy_coef c the step follows d(loss - c * entropy) (the model stops the
    entropy's gradient only when c is 0, where it is a metric)."""
    graphdef, params, tx, cfg = setup()
    b = jax.tree.map(jnp.asarray, batch(1, 4))
    mb = jax.tree.map(lambda x: x[0], b)
    model = nnx.merge(graphdef, params)

    def entropy(p):
        m = nnx.merge(graphdef, p)
        ids = mb["ids"]
        _, ent = m.token_logprobs(ids, jnp.roll(ids, -1, 1), segment_ids=mb["seg"], chunk=8,
                                  with_entropy=True)
        return (ent * mb["mask"]).sum() / mb["mask"].sum()

    g_ent = jax.grad(entropy)(params)
    assert model.remat == "none"
    for coef in (0.0, 0.5):
        c = LossConfig(logprob_chunk=8, entropy_coef=coef)
        base = jax.jit(functools.partial(train_step, graphdef, tx, cfg))(params, tx.init(params), b)
        got = jax.jit(functools.partial(train_step, graphdef, tx, c))(params, tx.init(params), b)
        # SGD(1.0): params - grad, so the difference of the two steps is coef * d(entropy)
        for p0, p1, ge in zip(jax.tree.leaves(base[0]), jax.tree.leaves(got[0]),
                              jax.tree.leaves(g_ent), strict=True):
            np.testing.assert_allclose(np.asarray(p1 - p0), coef * np.asarray(ge), atol=1e-5)

"""Ahead-of-time compile (abstract shapes, no weights) of a full update step —
forward + backward + AdamW — for a paper-size policy on an N-device fsdp mesh, and the
bytes per device it needs: parameters, optimizer state, and XLA's peak temporaries.

Runs on fake CPU devices, so it tells on a laptop whether a config fits a GPU.
Usage: ./walar bench bench/aot_memory.py [--model qwen3_8b] [--devices 8] [--batch 8 --seq 1024]
"""

import argparse
import json
import os
import time

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="qwen3_8b")
ap.add_argument("--devices", type=int, default=8)
ap.add_argument("--batch", type=int, default=8, help="sequences per micro-batch (all devices)")
ap.add_argument("--seq", type=int, default=1024, help="prompt + response tokens")
ap.add_argument("--dtype", default="bfloat16")
ap.add_argument("--no_remat", action="store_true")
args = ap.parse_args()
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from walar_jax import models, sharding as shd  # noqa: E402



def named_config(name):
    for fam in models.FAMILIES.values():
        if hasattr(fam, name):
            return getattr(fam, name)()
    raise SystemExit(f"unknown model constructor {name}")


def main():
    cfg = named_config(args.model)
    mesh = shd.make_mesh((1, args.devices, 1))
    abstract = models.abstract_model(cfg, dtype=jnp.dtype(args.dtype), param_dtype=jnp.float32,
                                     remat=not args.no_remat)
    graphdef, state = nnx.split(abstract)
    params = nnx.to_pure_dict(state)
    p_shard = models.sharding_tree(abstract, mesh)
    opt = optax.adamw(5e-7, b1=0.9, b2=0.95)
    opt_state = jax.eval_shape(opt.init, params)
    o_shard = shd.optimizer_shardings(opt_state, params, p_shard, mesh)
    batch_sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
    ids = jax.ShapeDtypeStruct((args.batch, args.seq), jnp.int32, sharding=batch_sh)

    def step(params, opt_state, ids):
        def loss(p):
            m = nnx.merge(graphdef, p)
            return -m.token_logprobs(ids, jnp.roll(ids, -1, 1), chunk=256).mean()
        val, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, val

    ctx = shd.ShardingCtx(mesh)
    jitted = jax.jit(step, in_shardings=(p_shard, o_shard, batch_sh),
                     out_shardings=(p_shard, o_shard, None), donate_argnums=(0, 1))
    t0 = time.perf_counter()
    with shd.use_sharding(ctx):
        compiled = jitted.lower(params, opt_state, ids).compile()
    mem = compiled.memory_analysis()
    param_bytes = sum(_shard_bytes(x, s) for x, s in zip(jax.tree.leaves(params), jax.tree.leaves(p_shard)))
    opt_bytes = sum(_shard_bytes(x, s) for x, s in zip(jax.tree.leaves(opt_state), jax.tree.leaves(o_shard)))
    gib = 1 << 30
    print(json.dumps({
        "model": args.model, "params": cfg.num_params, "devices": args.devices,
        "mesh": dict(mesh.shape), "batch": args.batch, "seq": args.seq, "dtype": args.dtype,
        "remat": not args.no_remat,
        "param_gib_per_device": round(param_bytes / gib, 3),
        "opt_state_gib_per_device": round(opt_bytes / gib, 3),
        "peak_temp_gib_per_device": round(mem.temp_size_in_bytes / gib, 3),
        "argument_gib_per_device": round(mem.argument_size_in_bytes / gib, 3),
        "total_gib_per_device": round((mem.argument_size_in_bytes + mem.temp_size_in_bytes) / gib, 3),
        "compile_s": round(time.perf_counter() - t0, 1),
    }))


def _shard_bytes(x, sharding):
    shape = sharding.shard_shape(x.shape)
    n = 1
    for d in shape:
        n *= d
    return n * x.dtype.itemsize


if __name__ == "__main__":
    main()

"""Ahead-of-time compile (abstract shapes, no weights) of walar_jax's GRPO update step —
forward + backward + AdamW, the same jitted function the trainer runs — for the paper's
policies on an N-device fsdp mesh, and the bytes per device: parameters, optimizer state,
and XLA's peak temporaries. Runs on fake CPU devices, so a laptop tells whether a config
fits a GPU.

Usage: ./walar bench bench/aot_memory.py [--models qwen3_8b,llama3_8b,translategemma_4b]
       [--devices 8] [--batch 8 --seq 1024]
"""

import argparse
import functools
import json
import os
import time

ap = argparse.ArgumentParser()
ap.add_argument("--models", default="qwen3_8b,llama3_8b,translategemma_4b")
ap.add_argument("--devices", type=int, default=8)
ap.add_argument("--batch", type=int, default=8, help="sequences per micro-batch (all devices)")
ap.add_argument("--micro", type=int, default=1, help="micro-batches per optimizer step")
ap.add_argument("--seq", type=int, default=1024, help="prompt + response tokens")
ap.add_argument("--dtype", default="bfloat16")
ap.add_argument("--no_remat", action="store_true")
args = ap.parse_args()
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from walar_jax import models, sharding as shd  # noqa: E402
from walar_jax.rl.step import LossConfig, make_optimizer, train_step  # noqa: E402


def named_config(name):
    for fam in set(models.FAMILIES.values()):
        if hasattr(fam, name):
            return getattr(fam, name)()
    raise SystemExit(f"unknown model constructor {name}")


def shard_bytes(x, sharding):
    n = 1
    for d in sharding.shard_shape(x.shape):
        n *= d
    return n * x.dtype.itemsize


def measure(name):
    cfg = named_config(name)
    mesh = shd.make_mesh((1, args.devices, 1))
    abstract = models.abstract_model(cfg, dtype=jnp.dtype(args.dtype), param_dtype=jnp.float32,
                                     remat=not args.no_remat)
    graphdef, state = nnx.split(abstract)
    params = nnx.to_pure_dict(state)
    p_shard = models.sharding_tree(abstract, mesh)
    tx, _ = make_optimizer(5e-7, 1000)
    opt_state = jax.eval_shape(tx.init, params)
    o_shard = shd.optimizer_shardings(opt_state, params, p_shard, mesh)
    b_shard = NamedSharding(mesh, P(None, ("data", "fsdp")))
    M, B, T = args.micro, args.batch, args.seq
    f32, i32 = jnp.float32, jnp.int32
    batch = {k: jax.ShapeDtypeStruct((M, B, T), dt) for k, dt in
             [("ids", i32), ("seg", i32), ("mask", f32), ("old_logp", f32), ("ref_logp", f32),
              ("rollout_logp", f32)]}
    batch["adv"] = jax.ShapeDtypeStruct((M, B), f32)
    step = functools.partial(train_step, graphdef, tx, LossConfig(), param_shardings=p_shard)
    jitted = jax.jit(step, in_shardings=(p_shard, o_shard, b_shard),
                     out_shardings=(p_shard, o_shard, None), donate_argnums=(0, 1))
    t0 = time.perf_counter()
    with shd.use_sharding(shd.ShardingCtx(mesh)):
        mem = jitted.lower(params, opt_state, batch).compile().memory_analysis()
    gib = 1 << 30
    pb = sum(shard_bytes(x, s) for x, s in zip(jax.tree.leaves(params), jax.tree.leaves(p_shard)))
    ob = sum(shard_bytes(x, s) for x, s in zip(jax.tree.leaves(opt_state), jax.tree.leaves(o_shard)))
    return {
        "model": name, "params": cfg.num_params, "devices": args.devices, "mesh": dict(mesh.shape),
        "micro_batches": M, "batch": B, "seq": T, "dtype": args.dtype, "remat": not args.no_remat,
        "param_gib_per_device": round(pb / gib, 2), "opt_state_gib_per_device": round(ob / gib, 2),
        "peak_temp_gib_per_device": round(mem.temp_size_in_bytes / gib, 2),
        "total_gib_per_device": round((mem.argument_size_in_bytes + mem.temp_size_in_bytes) / gib, 2),
        "compile_s": round(time.perf_counter() - t0, 1),
    }


if __name__ == "__main__":
    for name in args.models.split(","):
        print(json.dumps(measure(name)), flush=True)

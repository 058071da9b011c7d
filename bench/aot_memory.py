"""Ahead-of-time compile (abstract shapes, no weights) of walar_jax's GRPO update step —
forward + backward + AdamW, the same jitted function the trainer runs — for the paper's
policies on N-device fsdp meshes, and the bytes per device: parameters, optimizer state,
XLA's peak temporaries and their sum. Runs on fake CPU devices, so a laptop tells
whether a config fits a GPU (XLA:GPU schedules differently; this is XLA:CPU's figure).

Usage: ./walar bench bench/aot_memory.py [--models qwen3_8b,llama3_8b,translategemma_4b]
       [--devices 8,4] [--scan on,off] [--batch 8 --seq 1024] [--remat nothing_saveable]
Prints one JSON object per (model, devices, scan).
"""

import argparse
import functools
import json
import os
import time

ap = argparse.ArgumentParser()
ap.add_argument("--models", default="qwen3_8b,llama3_8b,translategemma_4b")
ap.add_argument("--devices", default="8,4", help="fsdp sizes (each a mesh of that many devices)")
ap.add_argument("--scan", default="on,off", help="scan_layers settings to compile")
ap.add_argument("--batch", type=int, default=8, help="sequences per micro-batch (all devices)")
ap.add_argument("--micro", type=int, default=2, help="micro-batches per optimizer step")
ap.add_argument("--seq", type=int, default=1024, help="prompt + response tokens")
ap.add_argument("--dtype", default="bfloat16")
ap.add_argument("--remat", default="nothing_saveable")
ap.add_argument("--attention", default="xla")
ap.add_argument("--logprob_chunk", type=int, default=256)
args = ap.parse_args()
n_dev = max(int(d) for d in args.devices.split(","))
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n_dev}"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from walar_jax import models, sharding as shd  # noqa: E402
from walar_jax.rl.step import LossConfig, make_optimizer, train_step  # noqa: E402

GIB = 1 << 30


def shard_bytes(tree, shardings) -> int:
    total = 0
    for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
        n = 1
        for d in s.shard_shape(x.shape):
            n *= d
        total += n * x.dtype.itemsize
    return total


def compile_step(cfg, devices: int, scan: bool):
    """The compiled update step and the per-device bytes of its parameters and state."""
    mesh = shd.make_mesh((1, devices, 1), jax.devices()[:devices])
    abstract = models.abstract_model(cfg, dtype=jnp.dtype(args.dtype), param_dtype=jnp.float32,
                                     remat=args.remat, scan_layers=scan, attention=args.attention)
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
              ("rollout_logp", f32), ("w", f32), ("is_w", f32)]}
    batch["adv"] = jax.ShapeDtypeStruct((M, B), f32)
    loss_cfg = LossConfig(logprob_chunk=args.logprob_chunk)
    step = functools.partial(train_step, graphdef, tx, loss_cfg, param_shardings=p_shard)
    jitted = jax.jit(step, in_shardings=(p_shard, o_shard, b_shard),
                     out_shardings=(p_shard, o_shard, None), donate_argnums=(0, 1))
    with shd.use_sharding(shd.ShardingCtx(mesh)):
        compiled = jitted.lower(params, opt_state, batch).compile()
    return compiled, shard_bytes(params, p_shard), shard_bytes(opt_state, o_shard)


def measure(name: str, devices: int, scan: bool) -> dict:
    cfg = models.named_config(name)
    t0 = time.perf_counter()
    compiled, pb, ob = compile_step(cfg, devices, scan)
    mem = compiled.memory_analysis()
    return {
        "model": name, "params": cfg.num_params, "fsdp": devices, "scan_layers": scan,
        "micro_batches": args.micro, "batch": args.batch, "seq": args.seq, "dtype": args.dtype,
        "remat": args.remat, "attention": args.attention,
        "param_gib_per_device": round(pb / GIB, 2), "opt_state_gib_per_device": round(ob / GIB, 2),
        "peak_temp_gib_per_device": round(mem.temp_size_in_bytes / GIB, 2),
        "total_gib_per_device": round((mem.argument_size_in_bytes + mem.temp_size_in_bytes
                                       + mem.output_size_in_bytes - mem.alias_size_in_bytes)
                                      / GIB, 2),
        "compile_s": round(time.perf_counter() - t0, 1),
    }


if __name__ == "__main__":
    for name in args.models.split(","):
        for devices in (int(d) for d in args.devices.split(",")):
            for scan in (s == "on" for s in args.scan.split(",")):
                print(json.dumps(measure(name, devices, scan)), flush=True)

"""The trainer's own jitted GRPO update (walar_jax/rl/step.py `train_step`: PPO clip + k3
KL, token-mean, AdamW, global-norm clip, gradient accumulation) on one accelerator, for
Qwen3-shaped policies with random weights: bf16 compute over fp32 master weights,
micro-batches of 1024-token sequences, scanned layers with remat.

Prints one JSON object per size: tokens/s, model FLOP/s (6 x params x tokens / step time,
attention FLOPs not counted), MFU against the device's peak dense bf16 FLOP/s (a table by
device kind, or --peak_tflops) and peak device memory. Needs only jax, flax, optax, numpy
and this repository (no ml_collections, orbax, torch or tokenizers).

GPU:  python bench/gpu_update.py                      (0.6b, 1.7b, 4b; cudnn attention)
CPU:  python bench/gpu_update.py --sizes tiny --steps 2 --seq 128 --batch 2
"""

import argparse
import functools
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from walar_jax.models import named_config
from walar_jax.models.shardings import init_random
from walar_jax.models.tiny import tiny_config
from walar_jax.rl.step import LossConfig, make_optimizer, train_step

SIZES = {"0.6b": "qwen3_0p6b", "1.7b": "qwen3_1p7b", "4b": "qwen3_4b", "8b": "qwen3_8b"}
# Peak dense bf16 FLOP/s by device kind (substring of jax's device_kind), no sparsity.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "GH200": 989e12, "H800": 989e12,
             "A100": 312e12, "A800": 312e12, "L40S": 362e12, "L4": 121e12, "B200": 2250e12}
FOREIGN = ("torch", "ml_collections", "orbax", "tokenizers", "transformers")


def peak_flops(device, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    for kind, flops in sorted(PEAK_BF16.items(), key=lambda kv: -len(kv[0])):
        if kind in device.device_kind:
            return flops
    return None


def make_batch(rng, vocab: int, micro: int, batch: int, seq: int) -> dict:
    """Prompt in the first half, response in the second (counted in the loss)."""
    shape = (micro, batch, seq)
    mask = np.zeros(shape, np.float32)
    mask[..., seq // 2:-1] = 1.0
    logp = np.full(shape, -np.log(vocab), np.float32)  # a random policy's log-prob
    return {"ids": rng.integers(0, vocab, shape).astype(np.int32),
            "seg": np.ones(shape, np.int32), "mask": mask,
            "adv": rng.normal(size=(micro, batch)).astype(np.float32),
            "old_logp": logp, "ref_logp": logp - 0.01, "rollout_logp": logp,
            "w": mask / mask.sum(), "is_w": np.ones_like(mask)}  # token_mean weights


def peak_memory(device, compiled) -> tuple[float | None, str]:
    stats = device.memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**30, "device peak_bytes_in_use"
    mem = compiled.memory_analysis()  # CPU: the compiler's figure instead
    total = mem.argument_size_in_bytes + mem.temp_size_in_bytes
    return total / 2**30, "compiled memory_analysis (arguments + temporaries)"


def measure(size: str, args) -> dict:
    cfg = tiny_config() if size == "tiny" else named_config(SIZES[size])
    model = init_random(cfg, seed=0, dtype=jnp.bfloat16, param_dtype=jnp.float32,
                        remat=args.remat, scan_layers=True, attention=args.attention)
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    del model, state
    tx, _ = make_optimizer(1e-6, 1000)
    opt = tx.init(params)
    batch = jax.tree.map(jnp.asarray, make_batch(np.random.default_rng(0), cfg.vocab_size,
                                                 args.micro, args.batch, args.seq))
    loss_cfg = LossConfig(logprob_chunk=args.logprob_chunk)
    step = jax.jit(functools.partial(train_step, graphdef, tx, loss_cfg), donate_argnums=(0, 1))
    t0 = time.perf_counter()
    compiled = step.lower(params, opt, batch).compile()
    compile_s = time.perf_counter() - t0
    for _ in range(2):  # the second call sees committed optimizer counts
        params, opt, m = compiled(params, opt, batch)
        jax.block_until_ready(params)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        params, opt, m = compiled(params, opt, batch)
        jax.block_until_ready(params)
    dt = (time.perf_counter() - t0) / args.steps
    tokens = args.micro * args.batch * args.seq
    dev = jax.devices()[0]
    flops = 6 * cfg.num_params * tokens / dt
    peak = peak_flops(dev, args.peak_tflops)
    mem_gib, mem_source = peak_memory(dev, compiled)
    return {
        "size": size, "params": cfg.num_params, "device": dev.device_kind,
        "backend": jax.default_backend(), "micro_batches": args.micro, "batch": args.batch,
        "seq": args.seq, "tokens_per_step": tokens, "remat": args.remat,
        "attention": args.attention, "step_s": round(dt, 4),
        "tokens_per_s": round(tokens / dt, 1), "model_tflops_per_s": round(flops / 1e12, 3),
        "peak_bf16_tflops": peak and round(peak / 1e12, 1),
        "mfu": peak and round(flops / peak, 4), "peak_memory_gib": round(mem_gib, 2),
        "memory_source": mem_source, "compile_s": round(compile_s, 1),
        "loss": round(float(m["loss"]), 4),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="0.6b,1.7b,4b", help=f"of {sorted(SIZES)} or tiny")
    ap.add_argument("--steps", type=int, default=5, help="timed steps (after 2 warm-up)")
    ap.add_argument("--micro", type=int, default=2, help="micro-batches per optimizer step")
    ap.add_argument("--batch", type=int, default=8, help="sequences per micro-batch")
    ap.add_argument("--seq", type=int, default=1024, help="tokens per sequence")
    ap.add_argument("--remat", default="nothing_saveable")
    ap.add_argument("--attention", default=None, help="default: cudnn on GPU, else xla")
    ap.add_argument("--logprob_chunk", type=int, default=256)
    ap.add_argument("--peak_tflops", type=float, default=None,
                    help="peak dense bf16 TFLOP/s of the device (default: by device kind)")
    args = ap.parse_args()
    if args.attention is None:
        args.attention = "cudnn" if jax.default_backend() == "gpu" else "xla"
    for size in args.sizes.split(","):
        try:
            row = measure(size, args)
        except Exception as e:  # e.g. out of memory: report it and go on to the next size
            row = {"size": size, "error": f"{type(e).__name__}: {str(e)[:500]}"}
        row["foreign_modules"] = sorted({m.split(".")[0] for m in sys.modules} & set(FOREIGN))
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()

"""Forward+backward tokens/s of the policy on this machine's CPU (or whatever JAX sees).

Prints one JSON object per config: tiny (the embedded default) and a ~100M-parameter
Qwen3-shaped model. Usage: ./walar bench bench/model_throughput.py [--steps N]
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from walar_jax import models
from walar_jax.models.tiny import tiny_config

CONFIGS = {
    "tiny": (tiny_config(), 8, 128),
    "qwen3_100m": (tiny_config(vocab_size=32_000, d_model=768, n_layers=12, n_heads=12,
                               n_kv_heads=4, head_dim=64, ffn_dim=2048), 2, 256),
}


def measure(name, cfg, batch, seq, steps):
    model = models.init_random(cfg, seed=0)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, seq)))

    @nnx.jit
    def fwd_bwd(m, ids):
        def loss(m):
            return -m.token_logprobs(ids, jnp.roll(ids, -1, 1), chunk=128).mean()
        return nnx.value_and_grad(loss)(m)

    t0 = time.perf_counter()
    jax.block_until_ready(fwd_bwd(model, ids))
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        jax.block_until_ready(fwd_bwd(model, ids))
    dt = (time.perf_counter() - t0) / steps
    n = cfg.num_params
    return {"config": name, "params": n, "batch": batch, "seq": seq, "step_s": round(dt, 4),
            "tokens_per_s": round(batch * seq / dt, 1), "compile_s": round(compile_s, 2),
            "model_tflops_per_s": round(6 * n * batch * seq / dt / 1e12, 4),
            "backend": jax.default_backend(), "devices": jax.device_count()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    args = ap.parse_args()
    for name in args.configs.split(","):
        cfg, batch, seq = CONFIGS[name]
        print(json.dumps(measure(name, cfg, batch, seq, args.steps)), flush=True)


if __name__ == "__main__":
    main()

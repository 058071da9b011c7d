"""Shared pieces of the rollout benchmarks: checkpoints and a sidecar on this machine."""

from __future__ import annotations

import os
import shutil

from walar_jax import launch, models
from walar_jax.models.tiny import make_tiny_checkpoint, tiny_config, write_byte_tokenizer

# Same ~100M Qwen3 shape as bench/model_throughput.py.
CONFIG_100M = tiny_config(vocab_size=32_000, d_model=768, n_layers=12, n_heads=12,
                          n_kv_heads=4, head_dim=64, ffn_dim=2048, max_position_embeddings=4096)


def checkpoint(name: str, root: str = "runs/bench") -> str:
    """runs/bench/<name>: "tiny" or "qwen3_100m" (random weights), built once."""
    out = os.path.join(root, name)
    if os.path.exists(os.path.join(out, "config.json")):
        return out
    if name == "tiny":
        return make_tiny_checkpoint(out, seed=0)
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    write_byte_tokenizer(tmp, CONFIG_100M.vocab_size)
    models.save_pretrained(models.init_random(CONFIG_100M, seed=0), tmp)
    os.replace(tmp, out)
    return out


def sidecar(model_dir: str, *flags: str, log: str = "runs/bench/rollout.log") -> launch.Service:
    """The real sidecar in the rollout env (`with` starts and stops it); fp32, eager and a
    2 GiB KV cache on CPU."""
    argv = [launch.env_python("rollout"), "rollout_server.py", "--model", model_dir,
            "--dtype", "float32", "--max_model_len", "1024", *flags]
    if shutil.which("nvidia-smi") is None:
        argv += ["--enforce_eager", "--kv_cache_gib", "2"]
    return launch.Service("rollout", argv, log_path=log)

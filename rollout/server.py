"""Command line and lifecycle of the rollout sidecar (`python rollout_server.py ...`).

A setting the sidecar or vLLM would refuse ends the process at once with one line
(`rollout_server.py: error: --flag value: reason`) and exit code 2, before the model
loads; so does a model that loads but cannot run (checked by a one-token warm-up).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys

from protos import service
from rollout.config import DEFAULT_CPU_KV_CACHE_GIB, EngineConfig, StartupError, check_flags

log = logging.getLogger("rollout")
PROG = "rollout_server.py"
D = EngineConfig(model="")  # the defaults, stated once in EngineConfig


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = _Parser(prog=PROG, description="vLLM rollout sidecar for the walar-jax trainer")
    p.add_argument("--model", required=True, help="HF directory (trainer export) or hub id")
    p.add_argument("--dtype", default=D.dtype, help="auto | float32 | bfloat16 | float16")
    p.add_argument("--max_model_len", type=int, default=D.max_model_len,
                   help="tokens per sequence; 0 (default): the model's limit, lowered to "
                        "what the KV cache holds")
    p.add_argument("--kv_cache_gib", type=float, default=D.kv_cache_gib,
                   help=f"KV cache size; 0 (default): {DEFAULT_CPU_KV_CACHE_GIB:g} GiB on CPU, "
                        "on GPU what --gpu_memory_utilization leaves")
    p.add_argument("--gpu_memory_utilization", type=float, default=D.gpu_memory_utilization)
    p.add_argument("--tensor_parallel_size", type=int, default=D.tensor_parallel_size)
    p.add_argument("--enable_prefix_caching", action=argparse.BooleanOptionalAction,
                   default=D.enable_prefix_caching)
    p.add_argument("--seed", type=int, default=D.seed)
    p.add_argument("--enforce_eager", action="store_true", default=D.enforce_eager,
                   help="no CUDA graphs / compile")
    p.add_argument("--max_num_seqs", type=int, default=D.max_num_seqs)
    p.add_argument("--weights_version", type=int, default=D.weights_version,
                   help="version number of the starting checkpoint (e.g. the trainer's step)")
    p.add_argument("--enable_sleep_mode", action=argparse.BooleanOptionalAction,
                   default=D.enable_sleep_mode,
                   help="serve Sleep/WakeUp (vLLM sleep mode: the weights and KV cache leave "
                        "the GPU while the trainer updates on it); CUDA/ROCm/XPU only")
    p.add_argument("--weight_install", default=D.weight_install,
                   help="direct (default): updates copied into the parameters by the "
                        "model's loaders; reload: vLLM's generic in-place reload")
    p.add_argument("--delta_sync", action=argparse.BooleanOptionalAction,
                   default=D.delta_sync,
                   help="accept delta updates (keeps one more copy of the weights in /dev/shm)")
    p.add_argument("--chunked_prefill", default=D.chunked_prefill,
                   help="auto (default): off on CPU, where vLLM cannot rewind a seeded "
                        "request's generator after splitting its prompt; vLLM's default "
                        "elsewhere | on | off")
    service.add_server_flags(p)
    return p.parse_args(argv)


def engine_config(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(EngineConfig)})


def _refuse(err: BaseException) -> None:
    print(f"{PROG}: error: {err}", file=sys.stderr, flush=True)
    logging.shutdown()
    os._exit(2)  # vLLM may have started non-daemon threads already


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.exit_with_parent:
        service.die_with_parent()  # also while the model loads
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = engine_config(args)
    try:
        check_flags(cfg)
        token = service.resolve_token(args)
        # Bind first so that a bad --host fails before minutes of model loading.
        server, port = service.make_server(
            args.host, args.port, token=token, allow_remote=args.allow_remote,
            tls_cert=args.tls_cert, tls_key=args.tls_key,
        )
    except (StartupError, ValueError, OSError) as err:  # make_server: ValueError, OSError
        _refuse(err)
    # Imported late: vLLM reads its environment variables at import time.
    from protos import rollout_pb2_grpc
    from rollout.engine import Engine
    from rollout.servicer import RolloutServicer

    try:
        servicer = RolloutServicer(Engine(cfg), token=token)
    except StartupError as err:
        _refuse(err)
    rollout_pb2_grpc.add_RolloutServicer_to_server(servicer, server)
    server.start()
    log.info("rollout sidecar serving %s on %s:%d (weights version %d)",
             args.model, args.host, port, servicer.engine.version)
    service.serve_until_signalled(server, port, args.port_file, args.exit_with_parent)
    servicer.close()
    logging.shutdown()
    # vLLM's in-process engine leaves non-daemon threads that would keep the process
    # alive after main() returns; everything of ours is closed by now.
    os._exit(0)

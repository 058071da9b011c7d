"""Command line and lifecycle of the rollout sidecar (`python rollout_server.py ...`)."""

from __future__ import annotations

import argparse
import logging
import os

from protos import service

log = logging.getLogger("rollout")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="vLLM rollout sidecar for the walar-jax trainer")
    p.add_argument("--model", required=True, help="HF directory (trainer export) or hub id")
    p.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")
    p.add_argument("--max_model_len", type=int, default=2048)
    p.add_argument("--gpu_memory_utilization", type=float, default=0.85)
    p.add_argument("--tensor_parallel_size", type=int, default=1)
    p.add_argument("--enable_prefix_caching", action=argparse.BooleanOptionalAction,
                   default=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--enforce_eager", action="store_true", help="no CUDA graphs / compile")
    p.add_argument("--max_num_seqs", type=int, default=256)
    p.add_argument("--weights_version", type=int, default=0,
                   help="version number of the starting checkpoint (e.g. the trainer's step)")
    p.add_argument("--kv_cache_gib", type=int, default=None,
                   help="CPU only: KV cache size (sets VLLM_CPU_KVCACHE_SPACE)")
    service.add_server_flags(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.kv_cache_gib is not None:
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(args.kv_cache_gib)
    # Imported late: vLLM reads its environment variables at import time.
    from protos import rollout_pb2_grpc
    from rollout.engine import Engine, EngineConfig
    from rollout.servicer import RolloutServicer

    # Bind first so that a bad --host fails before minutes of model loading.
    server, port = service.make_server(
        args.host, args.port, token=args.token, allow_remote=args.allow_remote,
        tls_cert=args.tls_cert, tls_key=args.tls_key,
    )
    cfg = EngineConfig(
        model=args.model, dtype=args.dtype, max_model_len=args.max_model_len,
        gpu_memory_utilization=args.gpu_memory_utilization,
        tensor_parallel_size=args.tensor_parallel_size,
        enable_prefix_caching=args.enable_prefix_caching, seed=args.seed,
        enforce_eager=args.enforce_eager, max_num_seqs=args.max_num_seqs,
        weights_version=args.weights_version,
    )
    servicer = RolloutServicer(Engine(cfg))
    rollout_pb2_grpc.add_RolloutServicer_to_server(servicer, server)
    server.start()
    log.info("rollout sidecar serving %s on %s:%d (weights version %d)",
             args.model, args.host, port, servicer.engine.version)
    service.serve_until_signalled(server, port, args.port_file)
    servicer.close()
    logging.shutdown()
    # vLLM's in-process engine leaves non-daemon threads that would keep the process
    # alive after main() returns; everything of ours is closed by now.
    os._exit(0)

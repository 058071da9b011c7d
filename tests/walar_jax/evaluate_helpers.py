"""Shared by the evaluate tests: where FLORES is, vLLM's own OpenAI-compatible server
for the LLM judge's end-to-end test, and a loopback stand-in for such an endpoint (for
the fast unit tests of retries and caching)."""

import collections
import contextlib
import glob
import http.server
import json
import re
import threading
from typing import ClassVar

import pytest

from walar_jax import launch

FLORES = launch.REPO_ROOT.parent / "shared" / "data" / "flores200"
needs_flores = pytest.mark.skipif(not FLORES.is_dir(),
                                  reason=f"FLORES-200 not found at {FLORES} (../shared/data)")


class FakeOpenAI(http.server.BaseHTTPRequestHandler):
    """Loopback stand-in for a chat-completions endpoint: scripted status codes first."""

    script: ClassVar[list] = []  # (status, content) answers still to give
    seen: ClassVar[list] = []    # (path, Authorization header, JSON body) per request

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append((self.path, self.headers.get("Authorization"), body))
        status, content = type(self).script.pop(0) if type(self).script else (200, "Score: 73")
        payload = (json.dumps({"choices": [{"message": {"content": content}}]})
                   if status == 200 else '{"error": "busy"}').encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve_fake_openai():
    """Serves FakeOpenAI on a free loopback port; yields the base URL (…/v1)."""
    FakeOpenAI.script, FakeOpenAI.seen = [], []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()
    thread.join(5)


JUDGE_MODEL = "tiny-judge"  # the name vLLM serves the judge model under
_CHAT_ANSWERED = re.compile(r'"POST /v1/chat/completions HTTP/[\d.]+" (\d{3})')


@contextlib.contextmanager
def serve_vllm_judge(model_dir: str, log_path: str, api_key: str, timeout_s: float = 600):
    """vLLM's OpenAI-compatible server (rollout env, `judge_server.py`) serving `model_dir`
    as JUDGE_MODEL on loopback, requiring `api_key`; yields the started `launch.Service`
    (base URL `http://{address}/v1`). The server is stopped on exit, whatever happened."""
    argv = [launch.env_python("rollout"), "-m", "tests.walar_jax.judge_server",
            "--model", model_dir, "--served-model-name", JUDGE_MODEL, "--dtype", "float32",
            "--max-model-len", "2048", "--max-num-seqs", "8", "--enforce-eager"]
    # the key and the KV cache size by environment: nothing secret in `ps`, 1 GiB of RAM
    env = {"VLLM_API_KEY": api_key, "VLLM_CPU_KVCACHE_SPACE": "1"}
    svc = launch.Service("vllm-judge", argv, log_path=log_path, env=env)
    try:
        svc.start(timeout_s)
        yield svc
    finally:
        svc.stop()


def live_in_group(pgid: int) -> list[int]:
    """Processes of process group `pgid` that still run (zombies excluded)."""
    pids = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # (state, ppid, pgrp, ...)
            pids.append(int(stat.split("/")[2]))
    return pids


def chat_requests(log_path: str) -> collections.Counter:
    """HTTP status -> chat-completions requests the server answered, from uvicorn's access
    log (written before the response is sent, so it is complete when the caller has it)."""
    with open(log_path, encoding="utf-8", errors="replace") as f:
        return collections.Counter(int(m.group(1)) for m in _CHAT_ANSWERED.finditer(f.read()))

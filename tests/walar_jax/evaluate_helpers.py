"""Shared by the evaluate tests: where FLORES is, and a loopback stand-in for an
OpenAI-compatible chat-completions endpoint (the LLM judge's)."""

import contextlib
import http.server
import json
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



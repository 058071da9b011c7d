"""Server-side helpers shared by the reward service and the rollout sidecar.

Only depends on grpcio, so it imports in every environment. Both services bind
127.0.0.1 unless told otherwise; a wider bind requires a token that every call must
carry as `authorization: Bearer <token>` metadata.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import signal
import threading
from concurrent import futures

import grpc

TOKEN_METADATA_KEY = "authorization"
MAX_MESSAGE_BYTES = 1 << 30

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class TokenInterceptor(grpc.ServerInterceptor):
    """Rejects every call whose metadata lacks the expected bearer token."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

        self._deny = grpc.unary_unary_rpc_method_handler(deny)
        self._deny_stream = grpc.stream_unary_rpc_method_handler(deny)

    def intercept_service(self, continuation, handler_call_details):
        meta = dict(handler_call_details.invocation_metadata or ())
        got = meta.get(TOKEN_METADATA_KEY, "")
        got = got.encode() if isinstance(got, str) else got
        if hmac.compare_digest(got, self._expected):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is not None and handler.request_streaming:
            return self._deny_stream
        return self._deny


def make_server(
    host: str,
    port: int,
    *,
    token: str | None = None,
    allow_remote: bool = False,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    max_workers: int = 8,
) -> tuple[grpc.Server, int]:
    """Builds a gRPC server bound to host:port; returns it (not started) and the port.

    A non-loopback host needs both `allow_remote` and a token: an open reward or
    weight-update endpoint on a cluster network is an easy way to poison a run.
    """
    if not is_loopback(host):
        if not allow_remote:
            raise ValueError(
                f"refusing to bind {host!r}: only loopback is allowed without --allow_remote"
            )
        if not token:
            raise ValueError(f"binding {host!r} requires --token (checked on every call)")
    interceptors = [TokenInterceptor(token)] if token else []
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        interceptors=interceptors,
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    address = f"{host}:{port}"
    if tls_cert and tls_key:
        with open(tls_cert, "rb") as f_cert, open(tls_key, "rb") as f_key:
            creds = grpc.ssl_server_credentials([(f_key.read(), f_cert.read())])
        bound = server.add_secure_port(address, creds)
    else:
        bound = server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"could not bind {address}")
    log.info("listening on %s:%d%s", host, bound, " (token required)" if token else "")
    return server, bound


def add_server_flags(parser) -> None:
    """The bind/auth flags both services share (argparse)."""
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
    parser.add_argument("--port", type=int, default=0, help="port; 0 picks a free one")
    parser.add_argument("--token", default=None, help="bearer token required on every call")
    parser.add_argument(
        "--allow_remote", action="store_true", help="allow a non-loopback --host (needs --token)"
    )
    parser.add_argument("--tls_cert", default=None, help="PEM certificate for TLS (optional)")
    parser.add_argument("--tls_key", default=None, help="PEM private key for TLS (optional)")
    parser.add_argument(
        "--port_file", default=None, help="write the bound port here once serving (for launchers)"
    )


def write_port_file(path: str, port: int) -> None:
    """Written whole then renamed, so a launcher polling the file never reads half of it."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(str(port))
    os.replace(tmp, path)


def serve_until_signalled(server: grpc.Server, port: int, port_file: str | None) -> None:
    """Announces the port (once the caller is ready to serve) and blocks until SIGTERM or
    SIGINT, then stops the server with a short grace period."""
    if port_file:
        write_port_file(port_file, port)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    log.info("shutting down")
    server.stop(grace=5).wait()

"""gRPC plumbing of both services and their clients: limits, auth, servers, channels.

Only depends on grpcio, so it imports in every environment (the servers and the
trainer's clients all take their limits and metadata from here). Both services bind
127.0.0.1 unless told otherwise; a wider bind requires a token that every call must
carry as `authorization: Bearer <token>` metadata.

Retries: unary calls are retried by the client (`walar_jax.clients.common`); streamed
requests by gRPC itself, through the retry policy that `make_channel` puts in the
channel's service config for the methods it is given. gRPC keeps the first
`retry_buffer_bytes` of a call's request so that it can replay them; a stream that
outgrows that is committed and never retried, which is right for a weight stream the
sender cannot produce twice.
"""

from __future__ import annotations

import ctypes
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import signal
import threading
from collections.abc import Sequence
from concurrent import futures

import grpc

TOKEN_METADATA_KEY = "authorization"
TOKEN_ENV = "WALAR_SERVICE_TOKEN"  # how a launcher hands a service its token
MAX_MESSAGE_BYTES = 1 << 30
MESSAGE_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
# The only status a retry can cure: the server was unreachable or going away. gRPC
# itself caps a retry policy at 5 attempts.
RETRYABLE_CODES = ("UNAVAILABLE",)
GRPC_MAX_ATTEMPTS = 5
RETRY_BUFFER_BYTES = 64 << 20

log = logging.getLogger(__name__)
_PARENT = os.getppid()  # the process that started this one (read at import, at start-up)


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
    if bool(tls_cert) != bool(tls_key):
        raise ValueError("--tls_cert and --tls_key go together: half a TLS configuration "
                         "would serve plaintext")
    if not is_loopback(host):
        if not allow_remote:
            raise ValueError(
                f"refusing to bind {host!r}: only loopback is allowed without --allow_remote"
            )
        if not token:
            raise ValueError(f"binding {host!r} requires a token (--token_file or "
                             f"${TOKEN_ENV}; checked on every call)")
        if not tls_cert:
            log.warning("binding %s without TLS: the token and every request cross the "
                        "network in plaintext (--tls_cert/--tls_key)", host)
    interceptors = [TokenInterceptor(token)] if token else []
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        interceptors=interceptors,
        options=MESSAGE_OPTIONS,
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


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries `token` (what `TokenInterceptor` checks)."""
    return ((TOKEN_METADATA_KEY, f"Bearer {token}"),) if token else ()


def retry_service_config(methods: Sequence[str], *, max_attempts: int,
                         initial_backoff_s: float, max_backoff_s: float) -> str:
    """A service config (JSON) with gRPC's retry policy for `methods`
    ("package.Service/Method"): RETRYABLE_CODES only, exponential backoff with jitter,
    all attempts inside the call's one deadline."""
    policy = {
        "maxAttempts": min(max_attempts, GRPC_MAX_ATTEMPTS),
        "initialBackoff": f"{initial_backoff_s:.3f}s",
        "maxBackoff": f"{max_backoff_s:.3f}s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": list(RETRYABLE_CODES),
    }
    names = [dict(zip(("service", "method"), m.rsplit("/", 1))) for m in methods]
    return json.dumps({"methodConfig": [{"name": names, "retryPolicy": policy}]})


def make_channel(
    address: str,
    *,
    tls_root_cert: str | None = None,
    retry_methods: Sequence[str] = (),
    max_attempts: int = GRPC_MAX_ATTEMPTS,
    initial_backoff_s: float = 0.5,
    max_backoff_s: float = 30.0,
    retry_buffer_bytes: int = RETRY_BUFFER_BYTES,
) -> grpc.Channel:
    """A client channel with the services' message limits; with TLS when a root
    certificate is given. `retry_methods` get gRPC's retry policy (see above)."""
    options = [*MESSAGE_OPTIONS, ("grpc.per_rpc_retry_buffer_size", retry_buffer_bytes)]
    if retry_methods and max_attempts > 1:
        config = retry_service_config(retry_methods, max_attempts=max_attempts,
                                      initial_backoff_s=initial_backoff_s,
                                      max_backoff_s=max_backoff_s)
        options += [("grpc.enable_retries", 1), ("grpc.service_config", config)]
    if tls_root_cert:
        with open(tls_root_cert, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        return grpc.secure_channel(address, creds, options=options)
    return grpc.insecure_channel(address, options=options)


def add_server_flags(parser) -> None:
    """The bind/auth flags both services share (argparse)."""
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
    parser.add_argument("--port", type=int, default=0, help="port; 0 picks a free one")
    parser.add_argument("--token", default=None,
                        help=f"bearer token required on every call; prefer --token_file or "
                             f"${TOKEN_ENV}: a command line is visible to every user (ps)")
    parser.add_argument("--token_file", default=None,
                        help="file holding the token (yours, mode 0600 or stricter)")
    parser.add_argument("--exit_with_parent", action="store_true",
                        help="stop when the process that started this one dies (launchers)")
    parser.add_argument(
        "--allow_remote", action="store_true", help="allow a non-loopback --host (needs --token)"
    )
    parser.add_argument("--tls_cert", default=None, help="PEM certificate for TLS (optional)")
    parser.add_argument("--tls_key", default=None, help="PEM private key for TLS (optional)")
    parser.add_argument(
        "--port_file", default=None, help="write the bound port here once serving (for launchers)"
    )


def resolve_token(args) -> str | None:
    """The token from --token_file, else $WALAR_SERVICE_TOKEN, else --token (warned)."""
    if getattr(args, "token_file", None):
        st = os.stat(args.token_file)
        if st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise ValueError(f"--token_file {args.token_file} must be yours and readable by "
                             f"you alone (mode 0600), is {oct(st.st_mode & 0o777)}")
        with open(args.token_file) as f:
            return f.read().strip() or None
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV]
    if getattr(args, "token", None):
        log.warning("--token on the command line is visible to every local user (ps); "
                    "use --token_file or $%s", TOKEN_ENV)
    return getattr(args, "token", None) or None


def identity_proof(token: str | None, nonce: str) -> str:
    """What a service answers to a health check's nonce: HMAC-SHA256(token, nonce). Only
    a process that holds the token can give it, so a launcher knows it reached the
    service it started and not whatever else took the port."""
    return hmac.new((token or "").encode(), nonce.encode(), hashlib.sha256).hexdigest()


def write_port_file(path: str, port: int) -> None:
    """Written whole then renamed, so a launcher polling the file never reads half of it."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(str(port))
    os.replace(tmp, path)


def die_with_parent() -> None:
    """SIGTERM to this process when the one that started it dies (Linux prctl
    PR_SET_PDEATHSIG); `serve_until_signalled` also watches the parent, everywhere."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):  # no prctl here: the watch alone applies
        pass


def serve_until_signalled(server: grpc.Server, port: int, port_file: str | None,
                          exit_with_parent: bool = False) -> None:
    """Announces the port (once the caller is ready to serve) and blocks until SIGTERM or
    SIGINT (or, with `exit_with_parent`, until the parent process is gone), then stops
    the server with a short grace period."""
    parent = _PARENT  # as at start-up: the launcher may have died while we loaded models
    if exit_with_parent:
        die_with_parent()
    if port_file:
        write_port_file(port_file, port)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    while not done.wait(1.0):
        if exit_with_parent and os.getppid() != parent:
            log.error("the parent process %d is gone: stopping", parent)
            break
    log.info("shutting down")
    server.stop(grace=5).wait()

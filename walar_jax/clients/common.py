"""gRPC plumbing shared by the reward and rollout clients: channels, deadlines,
retries with jittered backoff, and typed errors. A failed call raises; nothing here
ever invents a result."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

import grpc

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
MAX_MESSAGE_BYTES = 1 << 30


class ServiceError(RuntimeError):
    """A service call failed; `code` is the gRPC status, `address` the server."""

    def __init__(self, message: str, *, code: grpc.StatusCode | None = None, address: str = ""):
        super().__init__(message)
        self.code = code
        self.address = address


class InvalidRequestError(ServiceError):
    """The server rejected the request (INVALID_ARGUMENT): retrying cannot help."""


class ServiceUnavailableError(ServiceError):
    """The server could not be reached or kept timing out after every retry."""


class AuthenticationError(ServiceError):
    """The server refused the token."""


def make_channel(address: str, *, tls_root_cert: str | None = None) -> grpc.Channel:
    options = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]
    if tls_root_cert:
        with open(tls_root_cert, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        return grpc.secure_channel(address, creds, options=options)
    return grpc.insecure_channel(address, options=options)


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


def call_with_retries(
    fn: Callable[[], T],
    *,
    address: str,
    what: str,
    max_attempts: int = 5,
    base_delay_s: float = 0.5,
    max_delay_s: float = 30.0,
    rng: random.Random | None = None,
) -> T:
    """Runs `fn` (one RPC), retrying only transient failures with full-jitter backoff.

    INVALID_ARGUMENT and every other non-transient status fail at once with a typed
    error that carries the server's reason.
    """
    rng = rng or random.Random()
    for attempt in range(1, max_attempts + 1):
        try:
            return fn()
        except grpc.RpcError as err:
            code = err.code() if hasattr(err, "code") else None
            detail = err.details() if hasattr(err, "details") else str(err)
            msg = f"{what} on {address} failed: {code.name if code else 'UNKNOWN'}: {detail}"
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidRequestError(msg, code=code, address=address) from err
            if code == grpc.StatusCode.UNAUTHENTICATED:
                raise AuthenticationError(msg, code=code, address=address) from err
            if code not in RETRYABLE:
                raise ServiceError(msg, code=code, address=address) from err
            if attempt == max_attempts:
                raise ServiceUnavailableError(
                    f"{msg} (gave up after {max_attempts} attempts)", code=code, address=address
                ) from err
            delay = rng.uniform(0, min(max_delay_s, base_delay_s * 2 ** (attempt - 1)))
            log.warning("%s; retry %d/%d in %.2fs", msg, attempt, max_attempts - 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")

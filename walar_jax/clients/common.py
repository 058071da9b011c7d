"""What the reward and rollout clients share: one deadline per call, retries of
transient failures only, typed errors. A failed call raises; nothing here ever invents
a result. Channels, limits and auth metadata are `protos/service.py`'s (the servers use
the same module).

Retry rules (`call_with_retries`):
- Only UNAVAILABLE is retried (server unreachable, restarting or going away), with
  full-jitter exponential backoff. INVALID_ARGUMENT, UNAUTHENTICATED, FAILED_PRECONDITION,
  INTERNAL, RESOURCE_EXHAUSTED (a message over the size limit) and every other status
  fail at once: sending the same request again cannot change the answer.
- With a deadline, every attempt runs with the time the whole call has left, backoff
  never sleeps past it, and no attempt starts after it. So DEADLINE_EXCEEDED is never
  retried: when an attempt hits it, the call's time is spent. (Giving each attempt the
  full timeout is what let a Generate take 5 x 1800 s to fail.)
- Streamed requests (UpdateWeights) are made with one client attempt; gRPC's own retry
  policy on the channel replays them (see `protos.service.make_channel`).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

import grpc

# Re-exported: the clients build channels and metadata with the servers' own plumbing.
from protos.service import MAX_MESSAGE_BYTES, make_channel
from protos.service import bearer_metadata as auth_metadata

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})
__all__ = [
    "MAX_MESSAGE_BYTES", "AuthenticationError", "Deadline", "DeadlineExceededError",
    "InvalidRequestError", "ServiceError", "ServiceUnavailableError", "auth_metadata",
    "call_with_retries", "make_channel",
]


class ServiceError(RuntimeError):
    """A service call failed; `code` is the gRPC status, `address` the server."""

    def __init__(self, message: str, *, code: grpc.StatusCode | None = None, address: str = ""):
        super().__init__(message)
        self.code = code
        self.address = address


class InvalidRequestError(ServiceError):
    """The server rejected the request (INVALID_ARGUMENT): retrying cannot help."""


class ServiceUnavailableError(ServiceError):
    """The server could not be reached, or the call ran out of time."""


class DeadlineExceededError(ServiceUnavailableError):
    """The call's deadline passed (over all its attempts)."""


class AuthenticationError(ServiceError):
    """The server refused the token."""


class Deadline:
    """One point in time shared by every attempt of a call (and by several calls, such
    as a fail-over to another server). `Deadline(None)` never expires."""

    def __init__(self, timeout_s: float | None):
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"a deadline needs a positive timeout, got {timeout_s}")
        self.timeout_s = timeout_s
        self.at = None if timeout_s is None else time.monotonic() + timeout_s

    def remaining(self) -> float | None:
        """Seconds left (<= 0 once passed), or None without a deadline."""
        return None if self.at is None else self.at - time.monotonic()


def _error(err: grpc.RpcError, msg: str, address: str) -> ServiceError:
    code = err.code() if hasattr(err, "code") else None
    kinds = {
        grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
        grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
        grpc.StatusCode.UNAVAILABLE: ServiceUnavailableError,
        grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    }
    return kinds.get(code, ServiceError)(msg, code=code, address=address)


def call_with_retries(
    fn: Callable[..., T],
    *,
    address: str,
    what: str,
    max_attempts: int = 5,
    base_delay_s: float = 0.5,
    max_delay_s: float = 30.0,
    rng: random.Random | None = None,
    deadline: Deadline | float | None = None,
) -> T:
    """Runs `fn` (one RPC) and retries it on UNAVAILABLE (see the module docstring).

    `deadline` (seconds from now, or a `Deadline` shared with other calls) bounds all
    attempts together; `fn` is then called with the seconds left, to pass as the RPC's
    `timeout`. Without it `fn()` takes no argument and each attempt carries whatever
    timeout `fn` sets itself (DEADLINE_EXCEEDED is still not retried).
    """
    rng = rng or random.Random()
    if deadline is not None and not isinstance(deadline, Deadline):
        deadline = Deadline(deadline)
    last = ""
    for attempt in range(1, max_attempts + 1):
        left = None if deadline is None else deadline.remaining()
        if left is not None and left <= 0:
            raise DeadlineExceededError(
                f"{what} on {address}: the {deadline.timeout_s:g}s deadline passed after "
                f"{attempt - 1} attempts{last}", code=grpc.StatusCode.DEADLINE_EXCEEDED,
                address=address)
        try:
            return fn() if deadline is None else fn(left)
        except grpc.RpcError as err:
            code = err.code() if hasattr(err, "code") else None
            detail = err.details() if hasattr(err, "details") else str(err)
            msg = f"{what} on {address} failed: {code.name if code else 'UNKNOWN'}: {detail}"
            if code not in RETRYABLE:
                raise _error(err, msg, address) from err
            if attempt == max_attempts:
                raise _error(err, f"{msg} (gave up after {max_attempts} attempts)",
                             address) from err
            delay = rng.uniform(0, min(max_delay_s, base_delay_s * 2 ** (attempt - 1)))
            left = None if deadline is None else deadline.remaining()
            if left is not None:
                delay = min(delay, max(left, 0.0))
            log.warning("%s; retry %d/%d in %.2fs", msg, attempt, max_attempts - 1, delay)
            time.sleep(delay)
            last = f" (last: {code.name}: {detail})"
    raise AssertionError("unreachable")

"""Deadlines and retries of the clients against a real loopback gRPC server (a scripted
Rollout servicer built with the services' own `protos.service.make_server`)."""

from __future__ import annotations

import logging
import random
import threading
import time

import grpc
import ml_dtypes
import numpy as np
import pytest

from protos import rollout_pb2 as pb
from protos import rollout_pb2_grpc as pb_grpc
from protos import service
from walar_jax.clients.common import (
    AuthenticationError,
    Deadline,
    DeadlineExceededError,
    InvalidRequestError,
    ServiceError,
    ServiceUnavailableError,
    call_with_retries,
)
from walar_jax.clients.rollout import STREAMED, RolloutClient

TOKEN = "t0ken"


class MaxJitter(random.Random):
    """Backoff without jitter: every delay is its upper bound."""

    def uniform(self, a: float, b: float) -> float:
        return b


class Scripted(pb_grpc.RolloutServicer):
    """Fails each call with the next code of `fail` (None: succeed); records what it saw."""

    def __init__(self):
        self.fail: list[grpc.StatusCode | None] = []
        self.block = False  # hold every call until its deadline passes
        self.seen: list[dict] = []

    def _enter(self, context, **extra) -> None:
        self.seen.append({"at": time.monotonic(), "left": context.time_remaining(), **extra})
        if self.block:
            done = threading.Event()
            context.add_callback(done.set)  # runs when the call ends (its deadline)
            done.wait()
        code = self.fail.pop(0) if self.fail else None
        if code is not None:
            context.abort(code, f"scripted {code.name}")

    def Info(self, request, context):
        self._enter(context)
        return pb.InfoResponse(model="scripted", dtype="bfloat16")

    def Generate(self, request, context):
        self._enter(context, min_tokens=request.sampling.min_tokens)
        return pb.GenerateResponse(weights_version=7)

    def UpdateWeights(self, request_iterator, context):
        got = sum(len(c.data) for m in request_iterator for c in m.batch.chunks)
        self._enter(context, bytes=got)
        return pb.UpdateWeightsResponse(num_bytes=got)


@pytest.fixture
def server():
    scripted = Scripted()
    srv, port = service.make_server("127.0.0.1", 0, token=TOKEN)
    pb_grpc.add_RolloutServicer_to_server(scripted, srv)
    srv.start()
    scripted.address = f"127.0.0.1:{port}"
    yield scripted
    srv.stop(0)


def _info(server, **kw):
    channel = service.make_channel(server.address)
    stub = pb_grpc.RolloutStub(channel)
    meta = service.bearer_metadata(TOKEN)
    try:
        return call_with_retries(
            lambda left=None: stub.Info(pb.InfoRequest(), metadata=meta, timeout=left),
            address=server.address, what="Info", **kw)
    finally:
        channel.close()


def test_unavailable_is_retried_until_it_succeeds(server, caplog):
    server.fail = [grpc.StatusCode.UNAVAILABLE] * 2
    with caplog.at_level(logging.WARNING):
        assert _info(server, base_delay_s=0.01, deadline=30).model == "scripted"
    assert len(server.seen) == 3 and caplog.text.count("retry") == 2


@pytest.mark.parametrize("code, kind", [
    (grpc.StatusCode.INVALID_ARGUMENT, InvalidRequestError),
    (grpc.StatusCode.UNAUTHENTICATED, AuthenticationError),
    (grpc.StatusCode.INTERNAL, ServiceError),
    (grpc.StatusCode.FAILED_PRECONDITION, ServiceError),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, ServiceError),
])
def test_non_transient_codes_fail_at_once(server, code, kind):
    server.fail = [code] * 5
    with pytest.raises(kind, match=f"{code.name}: scripted") as err:
        _info(server, base_delay_s=0.01, deadline=30)
    assert not isinstance(err.value, ServiceUnavailableError) and err.value.code == code
    assert len(server.seen) == 1


def test_one_deadline_covers_every_attempt(server):
    """Each attempt carries the time the call has left: the absolute deadline the server
    sees is the same on every attempt, although the attempts are seconds apart, and the
    deadline, not the attempt count, ends the call."""
    server.fail = [grpc.StatusCode.UNAVAILABLE] * 50
    with pytest.raises(DeadlineExceededError, match="1.5s deadline passed after 3 attempts"):
        _info(server, max_attempts=50, base_delay_s=0.3, rng=MaxJitter(), deadline=1.5)
    # Backoff 0.3 then 0.6 s: attempts at ~0, 0.3, 0.9 s; the next (2.1 s) would be late.
    ends = [s["at"] + s["left"] for s in server.seen]
    assert len(server.seen) == 3 and server.seen[-1]["at"] - server.seen[0]["at"] >= 0.9
    assert max(ends) - min(ends) < 0.15  # a per-attempt timeout would move it by 0.3-0.9 s


def test_deadline_exceeded_is_not_retried(server):
    server.block = True
    with pytest.raises(DeadlineExceededError, match="DEADLINE_EXCEEDED"):
        _info(server, max_attempts=5, base_delay_s=0.01, deadline=0.5)
    assert len(server.seen) == 1
    # Without `deadline` (a caller that sets its own per-attempt timeout) the same holds.
    channel = service.make_channel(server.address)
    stub = pb_grpc.RolloutStub(channel)
    with pytest.raises(DeadlineExceededError):
        call_with_retries(lambda: stub.Info(pb.InfoRequest(), timeout=0.3,
                                            metadata=service.bearer_metadata(TOKEN)),
                          address=server.address, what="Info", base_delay_s=0.01)
    channel.close()
    assert len(server.seen) == 2


def test_a_shared_deadline_spans_calls(server):
    """A fail-over to another server continues the same deadline instead of a fresh one."""
    server.block = True
    deadline = Deadline(0.4)
    with pytest.raises(DeadlineExceededError):
        _info(server, deadline=deadline)
    with pytest.raises(DeadlineExceededError, match="deadline passed after 0 attempts"):
        _info(server, deadline=deadline)
    assert len(server.seen) == 1  # the second call never reached the server


def test_wrong_token_is_refused_by_the_shared_interceptor_and_not_retried(server):
    with RolloutClient(server.address, token="wrong") as c, pytest.raises(AuthenticationError):
        c.info()
    with RolloutClient(server.address, token=TOKEN) as c:
        assert c.info().model == "scripted"
    assert len(server.seen) == 1  # the refused call never reached the servicer


def _tensors(n_floats: int):
    return [("model.norm.weight", np.arange(n_floats, dtype=np.float32))]


def test_grpc_retry_policy_replays_a_failed_weight_stream(server):
    """The stream is produced once; gRPC's policy replays its buffered bytes."""
    server.fail = [grpc.StatusCode.UNAVAILABLE]
    with RolloutClient(server.address, token=TOKEN, base_delay_s=0.01) as c:
        res = c.update_weights(_tensors(300_000), transport="grpc", timeout=60)
    assert res.num_bytes == 1_200_000
    assert [s["bytes"] for s in server.seen] == [1_200_000, 1_200_000]


def test_a_stream_past_the_retry_buffer_is_not_retried(server):
    server.fail = [grpc.StatusCode.UNAVAILABLE]
    channel = service.make_channel(server.address, retry_methods=STREAMED,
                                   initial_backoff_s=0.01, retry_buffer_bytes=1 << 16)
    from walar_jax.weight_sync import GrpcTransport

    stream = GrpcTransport(chunk_bytes=1 << 15).messages(iter(_tensors(300_000)), None)
    with pytest.raises(grpc.RpcError) as err:
        pb_grpc.RolloutStub(channel).UpdateWeights(
            stream, metadata=service.bearer_metadata(TOKEN), timeout=60)
    channel.close()
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and len(server.seen) == 1


def test_rollout_client_api(server):
    with RolloutClient(server.address, token=TOKEN) as c:
        assert c.engine_dtype() == np.dtype(ml_dtypes.bfloat16)
        assert c.generate([[1, 2]], min_tokens=3) == []
        assert server.seen[-1]["min_tokens"] == 3
        with pytest.raises(TypeError, match="hf_tensors"):
            c.update_weights(object())
        bad = [("model.norm.weight", np.arange(4, dtype=np.int64))]
        for transport in ("shm", "grpc"):  # the sender's own error, not a bare CANCELLED
            with pytest.raises(TypeError, match="int64"):
                c.update_weights(iter(bad), transport=transport)


def test_rollout_client_imports_neither_jax_nor_the_models():
    """The trainer turns the model into tensors; the client only turns tensors into bytes."""
    import subprocess
    import sys

    code = ("import sys, walar_jax.clients.rollout\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'torch')"
            " or m.startswith('walar_jax.models'))\n"
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr

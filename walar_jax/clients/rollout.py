"""Typed client of the rollout sidecar (rollout_server.py): generation and weight sync.

No JAX and no torch: the trainer turns its model into (HF name, host array) pairs
(`walar_jax.models.hf_tensors(model, client.engine_dtype())`), this client turns those
into bytes (`walar_jax.weight_sync`) and sends them.
"""

from __future__ import annotations

import dataclasses
import hmac
import secrets
from collections.abc import Iterator, Sequence

import grpc
import numpy as np

from protos import rollout_pb2 as pb
from protos import rollout_pb2_grpc as pb_grpc
from protos import safetensors
from walar_jax import weight_sync
from protos.service import identity_proof
from walar_jax.clients.common import (
    AuthenticationError,
    InvalidRequestError,
    ServiceError,
    auth_metadata,
    call_with_retries,
    make_channel,
)

# gRPC's retry policy replays this streamed method (the client loop cannot: the stream
# is produced once); unary methods are retried by `call_with_retries`.
STREAMED = ("walar.rollout.v1.Rollout/UpdateWeights",)


@dataclasses.dataclass(frozen=True)
class Completion:
    token_ids: list[int]
    text: str
    logprobs: list[float]  # raw policy (temperature 1) log-prob of each token
    finish_reason: str     # "stop" | "length"
    weights_version: int


@dataclasses.dataclass(frozen=True)
class PromptResult:
    """The n completions of one prompt, and the prompt's token ids as the model saw them."""

    prompt_token_ids: list[int]
    completions: list[Completion]

    def __len__(self) -> int:
        return len(self.completions)

    def __iter__(self) -> Iterator[Completion]:
        return iter(self.completions)

    def __getitem__(self, i: int) -> Completion:
        return self.completions[i]


@dataclasses.dataclass(frozen=True)
class UpdateResult:
    version: int
    changed: bool
    num_tensors: int
    num_bytes: int
    receive_s: float
    install_s: float
    digest: str
    digest_s: float
    check_s: float = 0.0        # the sidecar's NaN/Inf scan
    load_s: float = 0.0         # copying into the engine's parameters
    pack_s: float = 0.0         # the engine's post-processing (CPU: packing)
    write_s: float = 0.0        # this side, before the call: the iterator (the gather) and
    #                             writing the segment (with a delta: finding the changes)
    delta: bool = False         # sent as a delta
    delta_elements: int = 0
    fell_back: str = ""         # why a delta became a full update ("" if it did not)


def _result(resp: pb.UpdateWeightsResponse, **kw) -> UpdateResult:
    return UpdateResult(resp.version, resp.changed, resp.num_tensors, resp.num_bytes,
                        resp.receive_s, resp.install_s, resp.digest, resp.digest_s,
                        resp.check_s, resp.load_s, resp.pack_s, delta=resp.delta,
                        delta_elements=resp.delta_elements, **kw)


class SleepModeUnavailable(InvalidRequestError):
    """The sidecar has no sleep mode (started without --enable_sleep_mode): asking again
    cannot help, so the trainer's recovery does not retry it."""


class _Stream:
    """An iterator that remembers the exception it ended with."""

    def __init__(self, it: Iterator):
        self.it, self.error = it, None

    def __iter__(self) -> Iterator:
        try:
            yield from self.it
        except Exception as err:
            self.error = err
            raise


def _header_msg(path: str, version: int | None, content_id: str, specs,
                base_version: int | None) -> pb.WeightUpdateMessage:
    h = pb.WeightUpdateHeader(transport="shm", shm_path=path, tensors=specs,
                              content_id=content_id)
    if version is not None:
        h.version = version
    if base_version is not None:
        h.base_version = base_version
    return pb.WeightUpdateMessage(header=h)


def _prompt(p: str | Sequence[int]) -> pb.Prompt:
    if isinstance(p, str):
        return pb.Prompt(text=p)
    return pb.Prompt(token_ids=pb.TokenIds(ids=[int(t) for t in p]))


class RolloutClient:
    """`RolloutClient("127.0.0.1:PORT")`; every failed call raises a typed ServiceError.

    Each call has one deadline (`timeout`, seconds) over all its attempts; `None`
    waits as long as the attempts take. Only UNAVAILABLE is retried, up to
    `max_attempts` times (see `walar_jax.clients.common`).
    """

    def __init__(self, address: str, *, token: str | None = None,
                 tls_root_cert: str | None = None, max_attempts: int = 5,
                 base_delay_s: float = 0.5):
        self.address = address
        self.max_attempts = max_attempts
        self.base_delay_s = base_delay_s
        self.channel = make_channel(address, tls_root_cert=tls_root_cert,
                                    retry_methods=STREAMED, max_attempts=max_attempts,
                                    initial_backoff_s=base_delay_s)
        self.stub = pb_grpc.RolloutStub(self.channel)
        self.metadata = auth_metadata(token)
        self.token = token
        self._transports: dict[str, weight_sync.Transport] = {}
        self._engine_dtype: np.dtype | None = None
        self._delta_base = weight_sync.DeltaBase()

    def _call(self, what: str, method, request, timeout: float | None, attempts: int = 0):
        return call_with_retries(
            lambda left=None: method(request, metadata=self.metadata, timeout=left),
            address=self.address, what=what, max_attempts=attempts or self.max_attempts,
            base_delay_s=self.base_delay_s, deadline=timeout)

    def info(self, timeout: float | None = 30.0, nonce: str = "") -> pb.InfoResponse:
        return self._call("Info", self.stub.Info, pb.InfoRequest(nonce=nonce), timeout)

    def verify_identity(self, timeout: float | None = 30.0) -> None:
        """Raises unless the server proves it holds this client's token (a random nonce
        answered with HMAC(token, nonce)): it is the service this process started."""
        nonce = secrets.token_hex(16)
        got = self.info(timeout, nonce=nonce).proof
        if not hmac.compare_digest(got, identity_proof(self.token, nonce)):
            raise AuthenticationError(f"the server at {self.address} is not the rollout "
                                      "sidecar that was started with this token",
                                      address=self.address)

    def engine_dtype(self) -> np.dtype:
        """numpy dtype of the engine's weights (bfloat16 through ml_dtypes): what
        `update_weights` should be given, to send no more bytes than the engine keeps."""
        if self._engine_dtype is None:
            self._engine_dtype = safetensors.numpy_dtype(self.info().dtype)
        return self._engine_dtype

    def generate(
        self,
        prompts: Sequence[str | Sequence[int]],
        *,
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        max_tokens: int = 16,
        min_tokens: int = 0,
        stop: Sequence[str] = (),
        stop_token_ids: Sequence[int] = (),
        seed: int | None = None,
        apply_chat_template: bool = False,
        enable_thinking: bool | None = None,
        expected_version: int | None = None,
        timeout: float | None = None,
    ) -> list[PromptResult]:
        """n completions per prompt; prompts are token-id lists or strings (tokenized by
        the server, wrapped in the chat template when `apply_chat_template`). EOS and
        `stop_token_ids` cannot end a completion before `min_tokens` tokens."""
        sp = pb.SamplingParams(n=n, temperature=temperature, top_p=top_p, top_k=top_k,
                               max_tokens=max_tokens, min_tokens=min_tokens, stop=list(stop),
                               stop_token_ids=list(stop_token_ids))
        if seed is not None:
            sp.seed = seed
        req = pb.GenerateRequest(prompts=[_prompt(p) for p in prompts], sampling=sp,
                                 apply_chat_template=apply_chat_template)
        if enable_thinking is not None:
            req.enable_thinking = enable_thinking
        if expected_version is not None:
            req.expected_version = expected_version
        resp = self._call("Generate", self.stub.Generate, req, timeout)
        v = resp.weights_version
        return [
            PromptResult(list(r.prompt_token_ids), [
                Completion(list(c.token_ids), c.text, list(c.logprobs), c.finish_reason, v)
                for c in r.completions
            ])
            for r in resp.results
        ]

    def update_weights(self, tensors: weight_sync.Tensors, *, version: int | None = None,
                       transport: str = "shm", timeout: float | None = None,
                       content_id: str = "", delta: bool = False,
                       delta_max_fraction: float = 0.05) -> UpdateResult:
        """Sends (HF name, host numpy array) pairs, taken one at a time, and returns once
        the sidecar serves them. The manifest must cover exactly the checkpoint's tensors
        (else InvalidRequestError, old weights stay live); identical bytes leave the
        version unchanged (`changed=False`). Give arrays in `engine_dtype()`.
        `content_id` and `delta` (shm only): see `update_weights_shm`."""
        if content_id or delta:
            if transport != "shm":
                raise ValueError(f"content_id and delta need the shm transport, not {transport}")
            return self.update_weights_shm(tensors, version=version, content_id=content_id,
                                           delta=delta, delta_max_fraction=delta_max_fraction,
                                           timeout=timeout)
        try:
            pairs = iter(tensors)
        except TypeError:
            raise TypeError(
                "update_weights takes (HF name, host array) pairs, e.g. "
                "walar_jax.models.hf_tensors(model, client.engine_dtype()), "
                f"not a {type(tensors).__name__}") from None
        if transport not in self._transports:
            self._transports[transport] = weight_sync.make_transport(transport)
        t = self._transports[transport]
        # shm: the segment is written here, before the call, so a bad tensor raises here.
        stream = _Stream(t.messages(pairs, version))
        messages = iter(list(stream)) if t.name == "shm" else iter(stream)
        try:
            # One client attempt: gRPC's retry policy replays a failed stream.
            resp = self._call("UpdateWeights", self.stub.UpdateWeights, messages, timeout, 1)
        except ServiceError:
            if stream.error is not None:  # gRPC reports a failing request iterator as
                raise stream.error from None  # a bare CANCELLED; say what failed
            raise
        return _result(resp)

    def update_weights_shm(self, tensors: weight_sync.Tensors, *, version: int | None = None,
                           content_id: str = "", delta: bool = False,
                           delta_max_fraction: float = 0.05,
                           timeout: float | None = None) -> UpdateResult:
        """The shm update of `update_weights` with the fast path's options.

        `content_id` names the content (e.g. run and step) so the sidecar skips hashing
        it. `delta`: once a full update went through, send only the elements whose bits
        changed since (indices + values), against the version it installed; a delta
        touching more than `delta_max_fraction` of the elements, or one the sidecar
        refuses for its base (FAILED_PRECONDITION: another version is live), is sent as
        a full update instead, from the copy this client keeps (no second gather).
        """
        import time

        t = self._transports.get("shm") or self._transports.setdefault(
            "shm", weight_sync.make_transport("shm"))
        base = self._delta_base if delta else None
        t0, fell_back = time.perf_counter(), ""
        if base is not None and base.usable():
            out = t.write_delta(iter(tensors), base, delta_max_fraction)
            if out is not None:
                msg = _header_msg(t.path, version, content_id, out[0], base.version)
                written = time.perf_counter() - t0
                try:
                    resp = self._send_shm(msg, timeout, base)
                    return _result(resp, write_s=written)
                except ServiceError as err:
                    if err.code != grpc.StatusCode.FAILED_PRECONDITION:
                        raise
                    fell_back = str(err)
            else:
                fell_back = f"more than {delta_max_fraction:g} of the elements changed"
            tensors = base.items()  # the new weights in full, kept by write_delta
        specs = t.write(iter(tensors), keep=base)
        msg = _header_msg(t.path, version, content_id, specs, None)
        written = time.perf_counter() - t0
        resp = self._send_shm(msg, timeout, base)
        return _result(resp, write_s=written, fell_back=fell_back)

    def _send_shm(self, msg: pb.WeightUpdateMessage, timeout: float | None,
                  base: weight_sync.DeltaBase | None) -> pb.UpdateWeightsResponse:
        try:
            resp = self._call("UpdateWeights", self.stub.UpdateWeights, iter([msg]), timeout, 1)
        except ServiceError as err:
            if base is not None and err.code != grpc.StatusCode.FAILED_PRECONDITION:
                base.drop()  # unknown outcome: the next update is a full one
            raise
        if base is not None:
            base.version = resp.version
        return resp

    def sleep(self, level: int = 1, timeout: float | None = 120.0) -> int:
        """Puts the engine to sleep (vLLM sleep mode, see protos/rollout.proto): its GPU
        memory is free until `wake_up`; Generate and UpdateWeights are refused meanwhile.
        Returns the level it sleeps at."""
        return self._sleep_call("Sleep", self.stub.Sleep, pb.SleepRequest(level=level),
                                timeout)

    def wake_up(self, timeout: float | None = 120.0) -> None:
        """Brings the engine's weights and KV cache back (a no-op when awake)."""
        self._sleep_call("WakeUp", self.stub.WakeUp, pb.WakeUpRequest(), timeout)

    def _sleep_call(self, what: str, method, request, timeout: float | None) -> int:
        import grpc

        try:
            return self._call(what, method, request, timeout).sleep_level
        except ServiceError as err:
            if err.code == grpc.StatusCode.FAILED_PRECONDITION:
                raise SleepModeUnavailable(str(err), code=err.code,
                                           address=err.address) from err
            raise

    def close(self) -> None:
        for t in self._transports.values():
            t.close()
        self._transports.clear()
        self.channel.close()

    def __enter__(self) -> RolloutClient:  # noqa: PYI034 - py3.10 has no typing.Self
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["Completion", "PromptResult", "RolloutClient", "SleepModeUnavailable",
           "UpdateResult"]

"""Typed client of the rollout sidecar (rollout_server.py): generation and weight sync."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

from protos import rollout_pb2 as pb
from protos import rollout_pb2_grpc as pb_grpc
from walar_jax import weight_sync
from walar_jax.clients.common import auth_metadata, call_with_retries, make_channel


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


def _prompt(p: str | Sequence[int]) -> pb.Prompt:
    if isinstance(p, str):
        return pb.Prompt(text=p)
    return pb.Prompt(token_ids=pb.TokenIds(ids=[int(t) for t in p]))


class RolloutClient:
    """`RolloutClient("127.0.0.1:PORT")`; every failed call raises a typed ServiceError."""

    def __init__(self, address: str, *, token: str | None = None,
                 tls_root_cert: str | None = None, max_attempts: int = 5):
        self.address = address
        self.channel = make_channel(address, tls_root_cert=tls_root_cert)
        self.stub = pb_grpc.RolloutStub(self.channel)
        self.metadata = auth_metadata(token)
        self.max_attempts = max_attempts
        self._transports: dict[str, weight_sync.Transport] = {}

    def _call(self, what: str, fn, attempts: int | None = None):
        return call_with_retries(fn, address=self.address, what=what,
                                 max_attempts=attempts or self.max_attempts)

    def info(self, timeout: float = 30.0) -> pb.InfoResponse:
        return self._call("Info", lambda: self.stub.Info(
            pb.InfoRequest(), metadata=self.metadata, timeout=timeout))

    def generate(
        self,
        prompts: Sequence[str | Sequence[int]],
        *,
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        max_tokens: int = 16,
        stop: Sequence[str] = (),
        stop_token_ids: Sequence[int] = (),
        seed: int | None = None,
        apply_chat_template: bool = False,
        enable_thinking: bool | None = None,
        expected_version: int | None = None,
        timeout: float | None = None,
    ) -> list[PromptResult]:
        """n completions per prompt; prompts are token-id lists or strings (tokenized by
        the server, wrapped in the chat template when `apply_chat_template`)."""
        sp = pb.SamplingParams(n=n, temperature=temperature, top_p=top_p, top_k=top_k,
                               max_tokens=max_tokens, stop=list(stop),
                               stop_token_ids=list(stop_token_ids))
        if seed is not None:
            sp.seed = seed
        req = pb.GenerateRequest(prompts=[_prompt(p) for p in prompts], sampling=sp,
                                 apply_chat_template=apply_chat_template)
        if enable_thinking is not None:
            req.enable_thinking = enable_thinking
        if expected_version is not None:
            req.expected_version = expected_version
        resp = self._call("Generate", lambda: self.stub.Generate(
            req, metadata=self.metadata, timeout=timeout))
        v = resp.weights_version
        return [
            PromptResult(list(r.prompt_token_ids), [
                Completion(list(c.token_ids), c.text, list(c.logprobs), c.finish_reason, v)
                for c in r.completions
            ])
            for r in resp.results
        ]

    def update_weights(self, model, *, version: int | None = None, transport: str = "shm",
                       dtype=None, timeout: float | None = None) -> UpdateResult:
        """Sends the policy's weights (HF names, one tensor at a time) and returns once
        the sidecar serves them. `dtype` defaults to the sidecar's engine dtype."""
        from walar_jax import models  # JAX is only needed here, not to generate

        dtype = dtype or self._engine_dtype()
        return self.send_tensors(models.hf_tensors(model, dtype), version=version,
                                 transport=transport, timeout=timeout)

    def send_tensors(self, tensors: weight_sync.Tensors, *, version: int | None = None,
                     transport: str = "shm", timeout: float | None = None) -> UpdateResult:
        """Like `update_weights`, from (HF name, host array) pairs."""
        if transport not in self._transports:
            self._transports[transport] = weight_sync.make_transport(transport)
        t = self._transports[transport]
        if t.name == "shm":
            # The segment is written once; resending its manifest is idempotent (same
            # digest -> unchanged), so transient failures may retry.
            msgs = list(t.messages(tensors, version))
            resp = self._call("UpdateWeights", lambda: self.stub.UpdateWeights(
                iter(msgs), metadata=self.metadata, timeout=timeout))
        else:  # the tensor stream is consumed by the first attempt
            resp = self._call("UpdateWeights", lambda: self.stub.UpdateWeights(
                t.messages(tensors, version), metadata=self.metadata, timeout=timeout), 1)
        return UpdateResult(resp.version, resp.changed, resp.num_tensors, resp.num_bytes,
                            resp.receive_s, resp.install_s, resp.digest, resp.digest_s)

    def _engine_dtype(self):
        import numpy as np

        name = self.info().dtype
        if name == "bfloat16":
            import ml_dtypes

            return np.dtype(ml_dtypes.bfloat16)
        return np.dtype(name)

    def close(self) -> None:
        for t in self._transports.values():
            t.close()
        self._transports.clear()
        self.channel.close()

    def __enter__(self) -> RolloutClient:  # noqa: PYI034 - py3.10 has no typing.Self
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["Completion", "PromptResult", "RolloutClient", "UpdateResult"]

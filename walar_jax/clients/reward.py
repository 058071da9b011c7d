"""Client of the reward service (reward/server.py) for the trainer and evaluate.py.

`RewardClient(["host:port", ...]).score(items)` splits a batch across the servers, calls
them in parallel with deadlines and retries (transient failures only, with jittered
backoff, and failover to another server), and returns every item's reward and its parts.
It raises a typed error instead of ever returning a reward the server did not compute.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import secrets
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from protos import languages, reward_metrics, reward_pb2, reward_pb2_grpc
from protos.service import identity_proof
from walar_jax.clients.common import (
    AuthenticationError,
    Deadline,
    ServiceError,
    ServiceUnavailableError,
    auth_metadata,
    call_with_retries,
    make_channel,
)

log = logging.getLogger(__name__)

REQUIRED = ("source", "hypothesis", "src_lang", "tgt_lang")


@dataclasses.dataclass(frozen=True)
class ItemReward:
    """One item's reward and the parts it was made of (see protos/reward.proto)."""

    reward: float
    status: str  # OK, EMPTY_TEXT, INVALID_TEXT, TOO_LONG, ITEM_ERROR
    status_detail: str
    language_ok: bool
    detected_lang: str
    gate_skipped: bool
    qe: float | None
    align_f1: float | None
    masked_hypothesis: str
    masklid_share: float | None = None
    align_bonus: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "OK"


@dataclasses.dataclass(frozen=True)
class RewardBatch:
    """Every item's reward and the batch metrics under the service's own names
    (protos/reward_metrics.py), merged exactly when the batch was split across servers."""

    items: list[ItemReward]
    metrics: dict[str, float]

    @property
    def rewards(self) -> list[float]:
        return [it.reward for it in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> ItemReward:
        return self.items[i]


def _to_proto(i: int, item: Mapping) -> reward_pb2.Item:
    if not isinstance(item, Mapping):
        raise TypeError(f"item {i} is a {type(item).__name__}, expected a dict")
    for key in REQUIRED:
        if key not in item:
            raise ValueError(f"item {i} has no {key!r} (needs {', '.join(REQUIRED)})")
        if not isinstance(item[key], str):
            raise TypeError(f"item {i} {key!r} is a {type(item[key]).__name__}, expected str")
    ref = item.get("reference")
    if ref is not None and not isinstance(ref, str):
        raise TypeError(f"item {i} 'reference' is a {type(ref).__name__}, expected str")

    # surrogatepass: text that is not valid Unicode reaches the server, which reports it
    # as that item's INVALID_TEXT instead of the whole batch failing to serialise here.
    def enc(s: str) -> bytes:
        return s.encode("utf-8", "surrogatepass")

    msg = reward_pb2.Item(source=enc(item["source"]), hypothesis=enc(item["hypothesis"]),
                          src_lang=item["src_lang"], tgt_lang=item["tgt_lang"])
    if ref is not None:
        msg.reference = enc(ref)
    return msg


def _from_proto(r: reward_pb2.ItemResult, address: str) -> ItemReward:
    if r.status == reward_pb2.ITEM_STATUS_UNSPECIFIED:
        raise ServiceError(f"{address} returned an item without a status", address=address)
    return ItemReward(
        reward=r.reward, status=reward_pb2.ItemStatus.Name(r.status),
        status_detail=r.status_detail, language_ok=r.language_ok,
        detected_lang=r.detected_lang, gate_skipped=r.gate_skipped,
        qe=r.qe if r.HasField("qe") else None,
        align_f1=r.align_f1 if r.HasField("align_f1") else None,
        masked_hypothesis=r.masked_hypothesis,
        masklid_share=r.masklid_share if r.HasField("masklid_share") else None,
        align_bonus=r.align_bonus)


def _metrics(m: reward_pb2.BatchMetrics) -> dict[str, float]:
    return {name: getattr(m, name) for name in reward_metrics.NAMES}


class RewardClient:
    """Scores batches on one or more reward servers."""

    def __init__(self, addresses: Sequence[str] | str, *, token: str | None = None,
                 timeout_s: float = 300.0, max_attempts: int = 5, base_delay_s: float = 0.5,
                 tls_root_cert: str | None = None):
        addresses = [addresses] if isinstance(addresses, str) else list(addresses)
        if not addresses:
            raise ValueError("RewardClient needs at least one address")
        self.addresses = addresses
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.base_delay_s = base_delay_s
        self._metadata = auth_metadata(token)
        self.token = token
        self._channels = [make_channel(a, tls_root_cert=tls_root_cert) for a in addresses]
        self._stubs = [reward_pb2_grpc.RewardStub(c) for c in self._channels]
        self._pool = ThreadPoolExecutor(max_workers=len(addresses))

    def _call(self, k: int, method: str, request, deadline: Deadline | float | None):
        stub = self._stubs[k]
        return call_with_retries(
            lambda left: getattr(stub, method)(request, timeout=left, metadata=self._metadata),
            address=self.addresses[k], what=f"Reward.{method}",
            max_attempts=self.max_attempts, base_delay_s=self.base_delay_s, deadline=deadline)

    def _score_chunk(self, k: int, items: list[reward_pb2.Item], deadline: Deadline
                     ) -> tuple[list[ItemReward], dict[str, float]]:
        """Scores on server k; if it stays unreachable, fails over to the others (all
        within the call's one deadline)."""
        request = reward_pb2.ScoreRequest(items=items)
        errors = []
        for j in [k, *[j for j in range(len(self.addresses)) if j != k]]:
            try:
                response = self._call(j, "Score", request, deadline)
            except ServiceUnavailableError as err:
                errors.append(str(err))
                log.warning("%s; failing over", err)
                continue
            address = self.addresses[j]
            if len(response.results) != len(items):
                raise ServiceError(f"{address} returned {len(response.results)} results for "
                                   f"{len(items)} items", address=address)
            if response.metrics.n_items != len(items):
                raise ServiceError(f"{address} returned metrics of {response.metrics.n_items} "
                                   f"items for {len(items)}", address=address)
            return ([_from_proto(r, address) for r in response.results],
                    _metrics(response.metrics))
        raise ServiceUnavailableError("no reward server could score the batch: "
                                      + " | ".join(errors))

    def score(self, items: Sequence[Mapping]) -> RewardBatch:
        """Rewards for dicts with source, hypothesis, src_lang, tgt_lang (and optionally
        reference). Raises InvalidRequestError, AuthenticationError,
        ServiceUnavailableError or ServiceError; never returns invented rewards."""
        if not items:
            raise ValueError("score() needs at least one item")
        protos = [_to_proto(i, it) for i, it in enumerate(items)]
        n_chunks = min(len(self.addresses), len(protos))
        bounds = [len(protos) * c // n_chunks for c in range(n_chunks + 1)]
        deadline = Deadline(self.timeout_s)  # one for the whole call, fail-overs included
        futures = [self._pool.submit(self._score_chunk, c, protos[bounds[c]:bounds[c + 1]],
                                     deadline) for c in range(n_chunks)]
        chunks = [f.result() for f in futures]
        return RewardBatch(items=[r for items, _ in chunks for r in items],
                           metrics=reward_metrics.merge(m for _, m in chunks))

    def health(self, timeout: float | None = 30.0) -> list[dict]:
        """Each server's health response as a dict (raises if one is unreachable)."""
        out = []
        for k in range(len(self.addresses)):
            h = self._call(k, "Health", reward_pb2.HealthRequest(), timeout)
            out.append({f.name: getattr(h, f.name) for f in h.DESCRIPTOR.fields})
        return out

    def ungated(self, codes: Sequence[str], timeout: float | None = 30.0) -> list[str]:
        """The targets among `codes` (FLORES-200 codes) whose language gate some server
        cannot check (`Health.gated_langs`: its identifier has no label for them, or it
        runs without one), in the order given, each once. Scoring them skips the gate, so
        "1234567890 ..." would pass as a translation: refuse them unless that is wanted.
        Raises ValueError naming a code that is not FLORES-200."""
        unknown = [c for c in codes if c not in languages.by_code()]
        if unknown:
            raise ValueError(f"not FLORES-200 codes: {unknown} (see {languages.TABLE.name})")
        gated: set[str] | None = None
        for k in range(len(self.addresses)):
            h = self._call(k, "Health", reward_pb2.HealthRequest(), timeout)
            gated = set(h.gated_langs) if gated is None else gated & set(h.gated_langs)
        return [c for c in dict.fromkeys(codes) if c not in gated]

    def verify_identity(self, timeout: float | None = 30.0) -> None:
        """Raises unless every server proves it holds this client's token (a random
        nonce answered with HMAC(token, nonce)): they are the services this process
        started, not whatever else took their ports."""
        for k, address in enumerate(self.addresses):
            nonce = secrets.token_hex(16)
            got = self._call(k, "Health", reward_pb2.HealthRequest(nonce=nonce), timeout).proof
            if not hmac.compare_digest(got, identity_proof(self.token, nonce)):
                raise AuthenticationError(f"the server at {address} is not the reward "
                                          "service that was started with this token",
                                          address=address)

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        for c in self._channels:
            c.close()

    def __enter__(self) -> "RewardClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

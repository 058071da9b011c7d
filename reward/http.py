"""The reward service over HTTP, for trainers that call a remote reward model that way.

- OpenRLHF (`--remote_rm_url http://HOST:P/get_reward`): `POST /get_reward` with
  `{"query": [...], "prompts": [...], "labels": [...]}`, each query the decoded prompt +
  response with special tokens (OpenRLHF's `make_experience` decodes the sequences with
  `skip_special_tokens=False`; `request_api_wrapper` posts them as JSON). Reply:
  `{"rewards": [...], "scores": [...], "extra_logs": {...}, "items": [...]}`: scores equal
  rewards (as WALAR's server sends them); extra_logs holds the batch metrics of
  protos/reward_metrics.py, each repeated once per query, because OpenRLHF concatenates
  every extra_logs value across calls and splits it per sample; items holds each query's
  parsed direction, status and reward parts.
- slime (`--rm-type remote_rm --rm-url http://HOST:P/reward --reward-key reward`):
  `POST /reward` with `{"prompt", "response", "label"}` (slime's `remote_rm`), or a list of
  them; reply `{"reward": r, ...parts}` (or a list), slime keeps the whole reply as the
  sample's reward and reads `reward` from it.
- `GET /health`: what the gRPC Health reports, as JSON.

Each query's direction and source text come from its prompt (protos/prompt_parse.py: the
formats walar_jax.prompts writes, WALAR's and ours), its response without chat markup is
the hypothesis, and the batch is scored by the same ChunkedScorer as gRPC Score. A query
that cannot be read (no known prompt, an unknown language name) fails the whole request
with HTTP 400 naming every bad item: there is no right reward to give it, and a made-up
one would train the policy. So does a target the identifier cannot label, unless the
server runs with --http_allow_ungated (its gate would be skipped; trainers that use the
gRPC port check `Health.gated_langs` at start-up instead). A bad *response* (empty, not
valid Unicode, too long) gets its status and the penalty, as over gRPC.

Bind and token rules are the gRPC port's: loopback unless --allow_remote, which needs a
token; with a token every request needs `Authorization: Bearer <token>`; --tls_cert/key
serve HTTPS. Standard library only (http.server).
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import math
import ssl
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from protos import reward_metrics
from protos.prompt_parse import PromptParseError, clean_response, parse_prompt, parse_query
from protos.service import is_loopback
from reward.batching import ChunkedScorer
from reward.languages import UnknownLanguageError
from reward.scorer import RawItem

log = logging.getLogger("reward.http")

LABEL_MODES = ("ignore", "reference")
MAX_LISTED = 20  # bad items named in one error reply (the count is always given)


class HttpError(Exception):
    """An HTTP error reply: status, message and the items it is about."""

    def __init__(self, status: HTTPStatus, message: str, bad_items: list[dict] | None = None):
        super().__init__(message)
        self.status, self.message, self.bad_items = status, message, bad_items or []

    def body(self) -> dict:
        out: dict[str, Any] = {"error": self.message}
        if self.bad_items:
            out["n_bad_items"] = len(self.bad_items)
            out["bad_items"] = self.bad_items[:MAX_LISTED]
        return out


def _bad(message: str, bad_items: list[dict] | None = None) -> HttpError:
    return HttpError(HTTPStatus.BAD_REQUEST, message, bad_items)


@dataclasses.dataclass(frozen=True)
class HttpOptions:
    max_batch: int = 8192
    allow_ungated: bool = False
    labels: str = "ignore"  # "reference": a string label is the item's reference


def _text(value: str) -> bytes:
    # A lone surrogate (JSON "\ud800") reaches the scorer as bytes that are not UTF-8,
    # which it reports as that item's INVALID_TEXT.
    return value.encode("utf-8", "surrogatepass")


def _list_field(body: dict, key: str, n: int | None, *, required: bool) -> list | None:
    value = body.get(key)
    if value is None:
        if required:
            raise _bad(f"missing field {key!r} (a list)")
        return None
    if not isinstance(value, list):
        raise _bad(f"field {key!r} must be a list, got {type(value).__name__}")
    if n is not None and len(value) != n:
        raise _bad(f"field {key!r} has {len(value)} entries for {n} queries")
    return value


class RewardApp:
    """The endpoints' logic, apart from sockets (tested directly and through a server)."""

    def __init__(self, chunked: ChunkedScorer, options: HttpOptions,
                 health: Callable[[], dict]):
        self.chunked, self.options, self._health = chunked, options, health

    # -- OpenRLHF ------------------------------------------------------------------------
    def get_reward(self, body: Any) -> dict:
        if not isinstance(body, dict):
            raise _bad(f"the body must be a JSON object, got {type(body).__name__}")
        queries = _list_field(body, "query", None, required=True)
        self._check_size(len(queries))
        prompts = _list_field(body, "prompts", len(queries), required=False)
        labels = _list_field(body, "labels", len(queries), required=False)
        parsed, bad = [], []
        for i, query in enumerate(queries):
            prompt = prompts[i] if prompts is not None else None
            try:
                if prompt is not None and not isinstance(prompt, str):
                    raise PromptParseError(f"prompts[{i}] is a {type(prompt).__name__}, "
                                           "not a string")
                parsed.append(parse_query(query, prompt))
            except PromptParseError as err:
                bad.append({"index": i, "field": "query", "error": str(err)})
        if bad:
            raise _bad(f"{len(bad)} of {len(queries)} queries could not be read", bad)
        rows = [(p.source, p.response, p.src_lang, p.tgt_lang, p.format) for p in parsed]
        results, metrics = self._score(rows, labels)
        rewards = [r["reward"] for r in results]
        extra = {name: [metrics[name]] * len(rows) for name in reward_metrics.NAMES}
        return {"rewards": rewards, "scores": rewards, "extra_logs": extra, "items": results}

    # -- slime ---------------------------------------------------------------------------
    def reward(self, body: Any) -> dict | list:
        samples = body if isinstance(body, list) else [body]
        if isinstance(body, list):
            self._check_size(len(body))
        rows, labels, bad = [], [], []
        for i, sample in enumerate(samples):
            try:
                rows.append(self._slime_row(sample))
                labels.append(sample.get("label"))
            except PromptParseError as err:
                bad.append({"index": i, "field": "prompt", "error": str(err)})
            except ValueError as err:
                bad.append({"index": i, "field": "sample", "error": str(err)})
        if bad:
            raise _bad(f"{len(bad)} of {len(samples)} samples could not be read", bad)
        results, _ = self._score(rows, labels)
        return results if isinstance(body, list) else results[0]

    @staticmethod
    def _slime_row(sample: Any) -> tuple:
        if not isinstance(sample, dict):
            raise ValueError(f"a sample must be a JSON object, got {type(sample).__name__}")
        for key in ("prompt", "response"):
            if key not in sample:
                raise ValueError(f"missing field {key!r}")
        prompt, response = sample["prompt"], sample["response"]
        if isinstance(prompt, list):  # chat messages: the last user turn is the prompt
            users = [m.get("content") for m in prompt if isinstance(m, dict)
                     and m.get("role") == "user"]
            if not users:
                raise ValueError("'prompt' is a list of messages without a user turn")
            prompt = users[-1]
        if not isinstance(prompt, str) or not isinstance(response, str):
            raise ValueError("'prompt' (a string or chat messages) and 'response' (a string) "
                             f"expected, got {type(prompt).__name__} and "
                             f"{type(response).__name__}")
        p = parse_prompt(prompt)
        return p.source, clean_response(response), p.src_lang, p.tgt_lang, p.format

    # -- shared --------------------------------------------------------------------------
    def _check_size(self, n: int) -> None:
        if n == 0:
            raise _bad("the batch is empty")
        if n > self.options.max_batch:
            raise _bad(f"{n} items > --max_batch {self.options.max_batch}: split the batch")

    def _score(self, rows: list[tuple], labels: list | None) -> tuple[list[dict], dict]:
        self._check_gated(rows)
        items = []
        for i, (src, hyp, src_lang, tgt_lang, _) in enumerate(rows):
            label = labels[i] if labels is not None else None
            ref = label if self.options.labels == "reference" and isinstance(label, str) \
                else None
            items.append(RawItem(_text(src), _text(hyp), src_lang, tgt_lang,
                                 None if ref is None else _text(ref)))
        try:
            scores, metrics = self.chunked.score(items)
        except UnknownLanguageError as err:
            raise _bad(str(err)) from None
        results = [_item_json(s, row) for s, row in zip(scores, rows)]
        return results, metrics

    def _check_gated(self, rows: list[tuple]) -> None:
        scorer = self.chunked.scorer
        if self.options.allow_ungated or scorer.lid is None:
            return  # no identifier loaded (--no_lid): the gate is off by request
        gated = scorer.gated_languages()
        bad = [{"index": i, "field": "target", "error": f"the language identifier cannot label "
                f"{row[3]}: its gate would be skipped (--http_allow_ungated to accept)"}
               for i, row in enumerate(rows) if row[3] not in gated]
        if bad:
            targets = sorted({rows[b["index"]][3] for b in bad})
            raise _bad(f"{len(bad)} items have targets the gate cannot check: "
                       f"{', '.join(targets)}", bad)

    def health(self) -> dict:
        return self._health()


def _num(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _item_json(s, row: tuple) -> dict:
    return {"reward": s.reward, "status": s.status, "status_detail": s.detail,
            "format": row[4], "src_lang": row[2], "tgt_lang": row[3],
            "language_ok": s.language_ok, "detected_lang": s.detected_lang,
            "gate_skipped": s.gate_skipped, "qe": _num(s.qe), "align_f1": _num(s.align_f1),
            "align_bonus": s.align_bonus, "masklid_share": _num(s.masklid_share)}


# -- the server ----------------------------------------------------------------------------
ROUTES = {"/get_reward": "get_reward", "/reward": "reward"}


def check_bind(host: str, *, token: str | None, allow_remote: bool,
               tls_cert: str | None, tls_key: str | None) -> None:
    """The gRPC port's bind rules (protos.service.make_server), for the HTTP port."""
    if bool(tls_cert) != bool(tls_key):
        raise ValueError("--tls_cert and --tls_key go together: half a TLS configuration "
                         "would serve plaintext")
    if is_loopback(host):
        return
    if not allow_remote:
        raise ValueError(f"refusing to bind {host!r}: only loopback is allowed without "
                         "--allow_remote")
    if not token:
        raise ValueError(f"binding {host!r} requires a token (--token_file or "
                         "$WALAR_SERVICE_TOKEN; checked on every request)")
    if not tls_cert:
        log.warning("HTTP on %s without TLS: the token and every request cross the network "
                    "in plaintext (--tls_cert/--tls_key)", host)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as requests and aiohttp use it
    timeout = 120  # seconds a client may take to send a request (no slow-loris threads)
    server: "RewardHTTPServer"

    def log_message(self, fmt, *args) -> None:  # http.server writes to stderr otherwise
        log.debug("%s " + fmt, self.address_string(), *args)

    def _reply(self, status: HTTPStatus, body: Any, *, close: bool = False) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == HTTPStatus.UNAUTHORIZED:
            self.send_header("WWW-Authenticate", 'Bearer realm="walar-reward"')
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def send_error(self, code, message=None, explain=None) -> None:
        """http.server's own errors (bad request line, unknown method) as JSON too, with a
        status line even when the request line was garbage (it would send bare HTML)."""
        if self.request_version == "HTTP/0.9":
            self.request_version = "HTTP/1.0"
        text = message or HTTPStatus(code).phrase
        self._reply(HTTPStatus(code), {"error": f"{code} {text}"
                                       + (f": {explain}" if explain else "")}, close=True)

    def _authorised(self) -> bool:
        token = self.server.token
        if not token:
            return True
        got = self.headers.get("Authorization", "").encode("latin-1", "replace")
        return hmac.compare_digest(got, f"Bearer {token}".encode())

    def _refuse(self, err: HttpError) -> None:
        # The body was not read: the connection cannot carry another request.
        self._reply(err.status, err.body(), close=True)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if not self._authorised():
            return self._refuse(HttpError(HTTPStatus.UNAUTHORIZED, "missing or wrong bearer "
                                          "token (Authorization: Bearer <token>)"))
        if self.path.split("?")[0] != "/health":
            status = HTTPStatus.METHOD_NOT_ALLOWED if self.path in ROUTES else \
                HTTPStatus.NOT_FOUND
            return self._reply(status, {"error": f"GET {self.path}: use POST /get_reward, "
                                        "POST /reward or GET /health"})
        self._reply(HTTPStatus.OK, self.server.app.health())

    def do_POST(self) -> None:  # noqa: N802
        try:
            body = self._read_body()
        except HttpError as err:
            return self._refuse(err)
        try:
            route = ROUTES.get(self.path.split("?")[0])
            if route is None:
                raise HttpError(HTTPStatus.NOT_FOUND, f"no endpoint {self.path}: POST "
                                "/get_reward (OpenRLHF) or /reward (slime)")
            out = getattr(self.server.app, route)(self._decode(body))
        except HttpError as err:
            return self._reply(err.status, err.body())
        except Exception as err:  # noqa: BLE001 - report it; the server keeps serving
            log.exception("HTTP %s failed", self.path)
            return self._reply(HTTPStatus.INTERNAL_SERVER_ERROR,
                               {"error": f"{type(err).__name__}: {err}"})
        self._reply(HTTPStatus.OK, out)

    def _read_body(self) -> bytes:
        if not self._authorised():
            raise HttpError(HTTPStatus.UNAUTHORIZED, "missing or wrong bearer token "
                            "(Authorization: Bearer <token>)")
        if self.headers.get("Transfer-Encoding"):
            raise HttpError(HTTPStatus.LENGTH_REQUIRED, "chunked bodies are not accepted: "
                            "send Content-Length")
        length = self.headers.get("Content-Length")
        if length is None or not length.strip().isdigit():
            raise HttpError(HTTPStatus.LENGTH_REQUIRED, "a POST needs a Content-Length")
        n = int(length)
        if n > self.server.max_body_bytes:
            raise HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                            f"{n} bytes > --http_max_bytes {self.server.max_body_bytes}")
        data = self.rfile.read(n)
        if len(data) != n:
            raise HttpError(HTTPStatus.BAD_REQUEST, f"body ended after {len(data)} of {n} bytes")
        return data

    @staticmethod
    def _decode(data: bytes) -> Any:
        try:
            return json.loads(data)
        except (UnicodeDecodeError, ValueError, RecursionError) as err:
            raise _bad(f"the body is not JSON: {type(err).__name__}: {str(err)[:200]}") \
                from None


class RewardHTTPServer(ThreadingHTTPServer):
    """One thread per connection, at most `max_connections` at once (the rest are told
    503 and closed), each reading at most `max_body_bytes`."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, app: RewardApp, *, token: str | None,
                 max_body_bytes: int, max_connections: int):
        self.app, self.token, self.max_body_bytes = app, token, max_body_bytes
        self._slots = threading.BoundedSemaphore(max_connections)
        self.max_connections = max_connections
        super().__init__(address, _Handler)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            self._busy(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _busy(self, request) -> None:
        data = json.dumps({"error": f"{self.max_connections} connections are open "
                           "(--http_max_connections): retry later"}).encode()
        try:
            request.settimeout(5)
            request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: "
                            b"application/json\r\nConnection: close\r\nContent-Length: "
                            + str(len(data)).encode() + b"\r\n\r\n" + data)
        except OSError:
            pass
        self.shutdown_request(request)


def start_http(app: RewardApp, host: str, port: int, *, token: str | None,
               allow_remote: bool = False, tls_cert: str | None = None,
               tls_key: str | None = None, max_body_bytes: int = 64 << 20,
               max_connections: int = 64) -> tuple[RewardHTTPServer, int]:
    """Binds and serves the endpoints on a daemon thread; returns the server and its
    port. Stop with `server.shutdown(); server.server_close()`."""
    check_bind(host, token=token, allow_remote=allow_remote, tls_cert=tls_cert,
               tls_key=tls_key)
    server = RewardHTTPServer((host, port), app, token=token, max_body_bytes=max_body_bytes,
                              max_connections=max_connections)
    if tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(tls_cert, tls_key)
        # The handshake happens in the connection's thread, not in the accept loop.
        server.socket = ctx.wrap_socket(server.socket, server_side=True,
                                        do_handshake_on_connect=False)
    bound = server.server_address[1]
    threading.Thread(target=server.serve_forever, name="reward-http", daemon=True).start()
    log.info("HTTP reward endpoints on %s://%s:%d (POST /get_reward: OpenRLHF, POST /reward: "
             "slime, GET /health)%s", "https" if tls_cert else "http", host, bound,
             " (token required)" if token else "")
    return server, bound

"""Fuzzing the real server (embedded default): thousands of generated Score items and HTTP
requests. The server stays up, every item gets the status its text calls for (or the
batch a clear INVALID_ARGUMENT / HTTP 4xx naming the bad field, where that is the
contract), memory stays bounded (the server's RSS from /proc), and a normal batch gets
the same rewards afterwards as before. Seeded: every run sends the same inputs."""

import json
import math
import random
import socket
import time

import grpc
import pytest

from protos import reward_pb2, reward_pb2_grpc
from protos.languages import languages
from remote_rm_helpers import openrlhf_post
from tiny_models import flores_lines

MAX_CHARS = 20000  # the server's --max_chars default
PENALTY = -1.0  # embed QE
RSS_BOUND_MIB = 1500  # generous: fuzzing must not grow the server by more than this
CODES = [lang.code for lang in languages()]
FLORES_LANGS = ("eng_Latn", "fra_Latn", "deu_Latn", "zho_Hans", "arb_Arab", "hin_Deva",
                "jpn_Jpan", "swh_Latn", "rus_Cyrl", "tha_Thai")
BAD_LANGS = ["", " ", "xx_Yyyy", "Elvish", "\x00", "q" * 10000, "__label__en", "fra-Latn-FR",
             "123", "zho_Hans_Hant", "\u200bfra_Latn"]


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


class Texts:
    """Generated texts as bytes, each from one family of hostile input."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.sentences = [s for code in FLORES_LANGS for s in flores_lines("dev", code, 30)]

    def random_unicode(self, n: int) -> str:
        out = []
        while len(out) < n:
            c = self.rng.randrange(0x110000)
            if not 0xD800 <= c <= 0xDFFF:
                out.append(chr(c))
        return "".join(out)

    def make(self) -> bytes:
        r, kind = self.rng, self.rng.randrange(16)
        s = r.choice(self.sentences)
        text = [
            lambda: s, lambda: "", lambda: " \t\n\r\x0b\x0c " * r.randrange(1, 5),
            lambda: s[: r.randrange(len(s))] + "\ud800" + s[r.randrange(len(s)):],
            lambda: "".join(chr(i) for i in range(32)) * r.randrange(1, 4) + s,
            lambda: "\u200b\u200c\u200d\u2060\ufeff" * r.randrange(1, 30),
            lambda: "\u200b".join(s), lambda: "e\u0301\u0302\u0303" * r.randrange(1, 200),
            lambda: "\u202e" + s + "\u202d", lambda: "x" * r.choice([200_000, MAX_CHARS + 1]),
            lambda: " ".join(r.choice(self.sentences) for _ in range(r.randrange(2, 4))),
            lambda: self.random_unicode(r.randrange(1, 100)), lambda: "\n" * r.randrange(1, 50),
            lambda: "1234567890 " * r.randrange(1, 40), lambda: "😀🇫🇷\U0001F9D1\u200d💻" * 20,
            lambda: None,  # raw bytes, mostly not UTF-8
        ][kind]()
        if text is None:
            return bytes(r.randrange(256) for _ in range(r.randrange(1, 200)))
        return text.encode("utf-8", "surrogatepass")


def expected_status(src: bytes, hyp: bytes) -> str | None:
    """What the documented item contract gives; None: OK (or ITEM_ERROR, counted)."""
    try:
        s, h = src.decode("utf-8"), hyp.decode("utf-8")
    except UnicodeDecodeError:
        return "INVALID_TEXT"
    s, h = s.strip(), h.strip().replace("\n", "")
    if not s or not h:
        return "EMPTY_TEXT"
    if max(len(s), len(h)) > MAX_CHARS:
        return "TOO_LONG"
    return None


@pytest.fixture(scope="module")
def stub(embedded_server):
    svc, _ = embedded_server
    channel = grpc.insecure_channel(svc.address, options=[
        ("grpc.max_send_message_length", 1 << 30), ("grpc.max_receive_message_length", 1 << 30)])
    yield reward_pb2_grpc.RewardStub(channel), (("authorization", f"Bearer {svc.token}"),)
    channel.close()


def _normal_batch():
    eng, fra = flores_lines("devtest", "eng_Latn", 4), flores_lines("devtest", "fra_Latn", 4)
    return reward_pb2.ScoreRequest(items=[
        reward_pb2.Item(source=e.encode(), hypothesis=h.encode(), src_lang="eng_Latn",
                        tgt_lang="fra_Latn") for e, f in zip(eng, fra) for h in (f, e)])


def _check_batch(stub, meta, items, counts) -> None:
    res = stub.Score(reward_pb2.ScoreRequest(items=items), metadata=meta, timeout=600)
    assert len(res.results) == len(items) and res.metrics.n_items == len(items)
    for item, r in zip(items, res.results):
        status = reward_pb2.ItemStatus.Name(r.status)
        want = expected_status(item.source, item.hypothesis)
        if want is None:
            assert status in ("OK", "ITEM_ERROR"), (item, status, r.status_detail)
        else:
            assert status == want, (item.source[:50], item.hypothesis[:50], status)
        assert math.isfinite(r.reward) and (status == "OK" or r.reward == PENALTY)
        counts[status] = counts.get(status, 0) + 1


def test_score_fuzz(embedded_server, stub):
    svc, _ = embedded_server
    stub, meta = stub
    rng, texts = random.Random(0), Texts(random.Random(1))
    before = stub.Score(_normal_batch(), metadata=meta, timeout=600)
    rss0, t0, counts, n_invalid_batches = _rss_mib(svc.proc.pid), time.monotonic(), {}, 0
    for _ in range(20):  # batches of fuzzed texts with valid languages, through the models
        items = [reward_pb2.Item(source=texts.make(), hypothesis=texts.make(),
                                 src_lang=rng.choice(CODES), tgt_lang=rng.choice(CODES))
                 for _ in range(rng.choice([1, 7, 33]))]
        _check_batch(stub, meta, items, counts)
    # one unknown or empty language anywhere fails its batch, naming item and field
    for bad in BAD_LANGS * 4:
        items = [reward_pb2.Item(source=b"a", hypothesis=b"b", src_lang="eng_Latn",
                                 tgt_lang="fra_Latn") for _ in range(rng.randrange(1, 40))]
        pos, field = rng.randrange(len(items)), rng.choice(["src_lang", "tgt_lang"])
        setattr(items[pos], field, bad)
        with pytest.raises(grpc.RpcError) as err:
            stub.Score(reward_pb2.ScoreRequest(items=items), metadata=meta, timeout=60)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"item {pos} {field}" in err.value.details()
        n_invalid_batches += 1
    # the largest batch admitted, of cheap bad items; then one past the limit
    big = [reward_pb2.Item(source=texts.make(), hypothesis=rng.choice([b"", b"\xff", b" \n"]),
                           src_lang="eng_Latn", tgt_lang="fra_Latn") for _ in range(8192)]
    _check_batch(stub, meta, big, counts)
    with pytest.raises(grpc.RpcError) as err:
        stub.Score(reward_pb2.ScoreRequest(items=(big * 3)[:20000]), metadata=meta,
                   timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "20000 items > --max_batch 8192" in err.value.details()
    n_invalid_batches += 1
    rss1, seconds = _rss_mib(svc.proc.pid), time.monotonic() - t0
    n_items = sum(counts.values())
    print(f"\n[fuzz Score] {n_items} items scored ({counts}), {n_invalid_batches} batches "
          f"refused whole (+ a 20000-item batch), {seconds:.1f} s, server RSS "
          f"{rss0:.0f} -> {rss1:.0f} MiB")
    assert n_items >= 8192 + 200 and counts.get("OK", 0) >= 100
    assert rss1 - rss0 < RSS_BOUND_MIB
    after = stub.Score(_normal_batch(), metadata=meta, timeout=600)
    assert [r.reward for r in after.results] == pytest.approx([r.reward for r in
                                                               before.results], abs=1e-6)
    assert all(after.results[k].reward > after.results[k + 1].reward for k in range(0, 8, 2))


def _raw(url: str, request: bytes) -> tuple[int, bytes]:
    """Sends raw bytes to the HTTP port; (status, body) of the reply (0: no reply)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=120) as sock:
        sock.sendall(request)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
            if b"\r\n\r\n" in reply:
                head, _, body = reply.partition(b"\r\n\r\n")
                length = [int(h.split(b":")[1]) for h in head.split(b"\r\n")
                          if h.lower().startswith(b"content-length:")]
                if length and len(body) >= length[0]:
                    break
    if not reply:
        return 0, b""
    return int(reply.split(b" ", 2)[1]), reply.partition(b"\r\n\r\n")[2]


ENG, FRA = flores_lines("devtest", "eng_Latn", 1)[0], flores_lines("devtest", "fra_Latn", 1)[0]


def _query(hyp: str, end: str = "<|im_end|>", marker: str = "") -> str:
    """A Qwen3 query (WALAR's prompt) translating ENG into French as `hyp`."""
    return (f"<|im_start|>user\n{ENG}\nTranslate from English to French:<|im_end|>{marker}\n"
            f"<|im_start|>assistant\n<think>\n\n</think>\n\n{hyp}{end}")


def _wrong_bodies(q: str) -> list[tuple[str, object, str]]:
    """(path, JSON body, what the 400 must name) with wrong types and missing fields."""
    return [("/get_reward", {}, "missing field 'query'"), ("/get_reward", [], "JSON object"),
            ("/get_reward", "q", "JSON object"), ("/get_reward", 3, "JSON object"),
            ("/get_reward", {"query": q}, "a list"),
            ("/get_reward", {"query": {"a": q}}, "a list"), ("/get_reward", {"query": []},
                                                             "empty"),
            ("/get_reward", {"query": [1, 2]}, "not int"), ("/get_reward", {"query": [None]},
                                                             "not NoneType"),
            ("/get_reward", {"query": [[q]]}, "not list"),
            ("/get_reward", {"query": [q], "prompts": [q, q]}, "2 entries for 1"),
            ("/get_reward", {"query": [q], "prompts": "p"}, "'prompts' must be a list"),
            ("/get_reward", {"query": [q], "prompts": [7]}, "prompts[0] is a int"),
            ("/get_reward", {"query": [q], "labels": {"x": 1}}, "'labels' must be a list"),
            ("/get_reward", {"query": [q] * 20000}, "--max_batch 8192"),
            ("/reward", {"prompt": q}, "missing field 'response'"),
            ("/reward", {"response": "x"}, "missing field 'prompt'"), ("/reward", [], "empty"),
            ("/reward", {"prompt": 3, "response": "x"}, "expected"),
            ("/reward", {"prompt": [{"role": "system", "content": "x"}], "response": "x"},
             "without a user turn"), ("/reward", [1, "a"], "must be a JSON object"),
            ("/reward", {"prompt": "hello", "response": "x"}, "no known translation")]


def test_http_fuzz(embedded_server):
    import requests

    svc, url = embedded_server
    auth = f"Authorization: Bearer {svc.token}\r\n".encode()
    q = _query(FRA)
    good = json.dumps({"query": [q, _query(ENG)]}).encode()
    before = openrlhf_post(f"{url}/get_reward", json.loads(good), svc.token).json()["rewards"]
    rss0, t0, statuses, rng = _rss_mib(svc.proc.pid), time.monotonic(), {}, random.Random(2)

    def post(body: bytes, path: str = "/get_reward", extra: bytes = b"") -> int:
        status, reply = _raw(url, b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n" + auth
                             + extra + b"Content-Length: " + str(len(body)).encode()
                             + b"\r\n\r\n" + body)
        assert status in (200, 400), (status, body[:100], reply[:300])  # never 5xx, no hang
        json.loads(reply)  # every reply is JSON
        statuses[status] = statuses.get(status, 0) + 1
        return status

    for _ in range(2000):  # mutated valid bodies: flipped, cut, inserted bytes
        body = bytearray(good)
        for _ in range(rng.randrange(1, 6)):
            k, op = rng.randrange(len(body)), rng.randrange(3)
            if op == 0:
                body[k] = rng.randrange(256)
            elif op == 1:
                del body[k:k + rng.randrange(1, 200)]
            else:
                body[k:k] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 20)))
        post(bytes(body), rng.choice(["/get_reward", "/reward"]))
    for body in (b"", b"{", b"[" * 100_000, b'{"query": ["\xff\xfe"]}', b"\x00" * 1000,
                 b'{"query": ' + b'["' + b"a" * 1000 + b'"' * 3 + b"]}", b"NaN", b"1e999999",
                 b"null"):
        assert post(body) == 400
    for path, body, named in _wrong_bodies(q):
        res = openrlhf_post(f"{url}{path}", body, svc.token)
        assert res.status_code == 400 and named in res.text, (path, body, res.text[:300])
        statuses[400] += 1
    # lone surrogates and 200k characters inside readable queries: per-item statuses
    odd = [_query(FRA + "\ud800"), _query("x" * 200_000), _query("\u200b\u200b" + FRA),
           _query(FRA, end=""), _query(FRA, marker="\x00\x1b[2J\u202e")]
    res = openrlhf_post(f"{url}/get_reward", {"query": odd}, svc.token)
    assert res.status_code == 200, res.text[:300]
    items = res.json()["items"]
    assert [it["status"] for it in items] == ["INVALID_TEXT", "TOO_LONG", "OK", "OK", "OK"]
    assert items[3]["reward"] == pytest.approx(before[0], abs=1e-6)  # no EOS: same text
    assert items[4]["reward"] == pytest.approx(before[0], abs=1e-6)  # junk outside the turn
    # headers: no length, chunked, too large (refused before the body is read), bad routes
    assert _raw(url, b"POST /get_reward HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n")[0] == 411
    assert _raw(url, b"POST /get_reward HTTP/1.1\r\nHost: x\r\n" + auth
                + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")[0] == 411
    assert _raw(url, b"POST /get_reward HTTP/1.1\r\nHost: x\r\n" + auth
                + b"Content-Length: 1073741824\r\n\r\n")[0] == 413
    assert _raw(url, b"POST /get_reward HTTP/1.1\r\nHost: x\r\n" + auth
                + b"Content-Length: -5\r\n\r\n")[0] == 411
    assert _raw(url, b"GET /get_reward HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n")[0] == 405
    assert _raw(url, b"POST /nope HTTP/1.1\r\nHost: x\r\n" + auth
                + b"Content-Length: 2\r\n\r\n{}")[0] == 404
    assert _raw(url, b"PUT /reward HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 501
    assert _raw(url, b"\x16\x03\x01\x02\x00garbage\r\n\r\n")[0] == 400  # TLS hello, no TLS
    assert _raw(url, b"POST /get_reward HTTP/1.1\r\nHost: x\r\n" + auth  # past --http_max_bytes
                + f"Content-Length: {65 << 20}\r\n\r\n".encode() + b"x" * (1 << 20))[0] == 413
    rss1, seconds = _rss_mib(svc.proc.pid), time.monotonic() - t0
    print(f"\n[fuzz HTTP] {sum(statuses.values())} requests ({statuses}) + 9 header cases, "
          f"{seconds:.1f} s, server RSS {rss0:.0f} -> {rss1:.0f} MiB")
    assert rss1 - rss0 < RSS_BOUND_MIB
    after = requests.post(f"{url}/get_reward", data=good, timeout=600,
                          headers={"Authorization": f"Bearer {svc.token}"}).json()["rewards"]
    assert after == pytest.approx(before, abs=1e-6) and after[0] > after[1]

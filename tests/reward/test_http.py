"""The HTTP endpoints of the real server (embedded default), called the way OpenRLHF and
slime call a remote reward model, for Qwen3, LLaMAX and translategemma prompts rendered
by walar_jax.prompts (WALAR's templates and ours): the true FLORES translation outscores
a copy of the source, and the rewards equal gRPC Score's for the same items."""

import asyncio
import importlib.util
import json
import pathlib
import types

import grpc
import pytest

from protos import reward_metrics, reward_pb2, reward_pb2_grpc
from remote_rm_helpers import decoded, openrlhf_post, openrlhf_query, tokenizers
from reward.http import check_bind
from tiny_models import flores_lines
from walar_jax import prompts

REPO = pathlib.Path(__file__).resolve().parents[2]
# tokenizer, template (WALAR's and ours for each family)
FAMILIES = [("qwen3", "walar_qwen"), ("qwen3", "chat"), ("llamax", "walar_llamax"),
            ("llamax", "alpaca"), ("gemma3", "walar_gemma"), ("gemma3", "translategemma")]
TARGETS = ("fra_Latn", "deu_Latn")
N = 2  # FLORES devtest sentences per direction


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
    return tokenizers(tmp_path_factory.mktemp("toks"))


@pytest.fixture(scope="module")
def grpc_stub(embedded_server):
    svc, _ = embedded_server
    channel = grpc.insecure_channel(svc.address)
    yield reward_pb2_grpc.RewardStub(channel), (("authorization", f"Bearer {svc.token}"),)
    channel.close()


def _samples(toks):
    """(tokenizer, prompt, response, kind, source, target) for every family, target and
    sentence: the true translation and a copy of the English source."""
    eng = flores_lines("devtest", "eng_Latn", N)
    out = []
    for tok_name, template in FAMILIES:
        tok = toks[tok_name]
        for tgt in TARGETS:
            for src_text, tgt_text in zip(eng, flores_lines("devtest", tgt, N)):
                prompt = prompts.build_prompt(src_text, "eng_Latn", tgt, template=template,
                                              tokenizer=tok)
                for kind, response in (("true", tgt_text), ("copy", src_text)):
                    out.append((tok, prompt, response, kind, src_text, tgt))
    return out


def test_openrlhf_request_true_translation_beats_copy_and_equals_grpc(embedded_server, toks,
                                                                      grpc_stub):
    svc, url = embedded_server
    samples = _samples(toks)
    data = {"query": [openrlhf_query(tok, p, r) for tok, p, r, *_ in samples],
            "prompts": [p for _, p, *_ in samples], "labels": [None] * len(samples)}
    res = openrlhf_post(f"{url}/get_reward", data, svc.token)
    assert res.status_code == 200, res.text
    body = res.json()
    n = len(samples)
    assert len(body["rewards"]) == n and body["scores"] == body["rewards"]
    assert set(body["extra_logs"]) == set(reward_metrics.NAMES)
    for name, values in body["extra_logs"].items():  # one value per query, OpenRLHF splits
        assert len(values) == n and len(set(map(json.dumps, values))) == 1, name
    assert body["extra_logs"]["n_items"][0] == n
    items = body["items"]
    for k, (_, _, _, kind, src_text, tgt) in enumerate(samples):
        assert (items[k]["src_lang"], items[k]["tgt_lang"]) == ("eng_Latn", tgt)
        assert items[k]["status"] == "OK"
        if kind == "copy":  # lid.176 reads the English copy as English: penalised
            assert not items[k]["language_ok"] and items[k]["detected_lang"] == "eng_Latn"
            assert body["rewards"][k - 1] > body["rewards"][k], samples[k][1][:80]
        else:
            assert items[k]["language_ok"] and items[k]["detected_lang"] == tgt
    # the same items through gRPC Score: the same scorer, the same rewards
    request = reward_pb2.ScoreRequest(items=[
        reward_pb2.Item(source=src.encode(), hypothesis=decoded(tok, resp).encode(),
                        src_lang="eng_Latn", tgt_lang=tgt)
        for tok, _, resp, _, src, tgt in samples])
    stub, meta = grpc_stub
    via_grpc = stub.Score(request, metadata=meta, timeout=600)
    assert [r.reward for r in via_grpc.results] == pytest.approx(body["rewards"], abs=1e-5)
    assert via_grpc.metrics.n_align_bonus == body["extra_logs"]["n_align_bonus"][0]


def test_slime_requests_single_batched_and_as_chat_messages(embedded_server, toks):
    """slime's `remote_rm` (slime/rollout/rm_hub/__init__.py): an aiohttp POST of
    {"prompt", "response", "label"}; the reply is the sample's reward (`--reward-key
    reward`). sglang returns the response text without special tokens."""
    import aiohttp

    svc, url = embedded_server
    eng, fra = flores_lines("devtest", "eng_Latn", 1)[0], flores_lines("devtest", "fra_Latn",
                                                                        1)[0]
    prompt = prompts.build_prompt(eng, "eng_Latn", "fra_Latn", template="walar_qwen",
                                  tokenizer=toks["qwen3"])
    user = prompts.walar.QWEN_USER.format(text=eng, src="English", tgt="French")
    payloads = [{"prompt": prompt, "response": fra, "label": None},
                [{"prompt": prompt, "response": fra, "label": None},
                 {"prompt": prompt, "response": eng, "label": None}],
                {"prompt": [{"role": "user", "content": user}], "response": fra}]

    async def post_all():
        headers = {"Authorization": f"Bearer {svc.token}"}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:
            out = []
            for payload in payloads:
                async with s.post(f"{url}/reward", json=payload, headers=headers) as resp:
                    resp.raise_for_status()
                    out.append(await resp.json())
            return out

    single, batch, messages = asyncio.run(post_all())
    assert single["status"] == "OK" and single["language_ok"] and single["format"] == "walar"
    assert batch[0]["reward"] == pytest.approx(single["reward"], abs=1e-6)
    assert batch[0]["reward"] > batch[1]["reward"] and not batch[1]["language_ok"]
    assert messages["reward"] == pytest.approx(single["reward"], abs=1e-6)


def test_unreadable_queries_fail_the_request_naming_them(embedded_server, toks):
    svc, url = embedded_server
    tok = toks["qwen3"]
    eng, fra = flores_lines("devtest", "eng_Latn", 1)[0], flores_lines("devtest", "fra_Latn",
                                                                        1)[0]
    good = openrlhf_query(tok, prompts.build_prompt(eng, "eng_Latn", "fra_Latn",
                                                    template="walar_qwen", tokenizer=tok), fra)
    queries = [good, "no prompt here", good.replace("to French:", "to Elvish:"), good]
    res = openrlhf_post(f"{url}/get_reward", {"query": queries}, svc.token)
    assert res.status_code == 400
    body = res.json()
    assert body["n_bad_items"] == 2 and "2 of 4 queries" in body["error"]
    assert [b["index"] for b in body["bad_items"]] == [1, 2]
    assert "'Elvish'" in body["bad_items"][1]["error"]
    assert "rewards" not in body  # nothing scored, no reward made up
    res = openrlhf_post(f"{url}/get_reward", {"query": [good]}, svc.token)
    assert res.status_code == 200  # still serving


def test_targets_the_gate_cannot_label_are_reported_and_refused_over_http(
        embedded_server, grpc_stub, toks):
    """lid.176 has no Hausa, Wolof or Zulu label: the gate is skipped for them, so
    "1234567890 ..." or "the the ..." passes as a translation into Hausa. Health lists the
    targets the gate can check (the trainer refuses the rest at start-up); the HTTP
    endpoint, whose callers make no such check, refuses them."""
    svc, url = embedded_server
    stub, meta = grpc_stub
    health = stub.Health(reward_pb2.HealthRequest(), metadata=meta, timeout=60)
    gated = set(health.gated_langs)
    assert {"fra_Latn", "deu_Latn", "swh_Latn", "yor_Latn", "zho_Hans"} <= gated
    assert not {"hau_Latn", "wol_Latn", "zul_Latn"} & gated
    eng = flores_lines("devtest", "eng_Latn", 1)[0]
    hau = flores_lines("devtest", "hau_Latn", 1)[0]
    junk = ["1234567890 " * 8, "the " * 20]
    res = stub.Score(reward_pb2.ScoreRequest(items=[
        reward_pb2.Item(source=eng.encode(), hypothesis=h.encode(), src_lang="eng_Latn",
                        tgt_lang="hau_Latn") for h in [hau, *junk]]), metadata=meta, timeout=600)
    assert all(r.gate_skipped and r.language_ok for r in res.results)  # nothing checked
    tok = toks["qwen3"]
    prompt = prompts.build_prompt(eng, "eng_Latn", "hau_Latn", template="walar_qwen",
                                  tokenizer=tok)
    res = openrlhf_post(f"{url}/get_reward", {"query": [openrlhf_query(tok, prompt, junk[0])]},
                        svc.token)
    assert res.status_code == 400 and "hau_Latn" in res.json()["error"]
    assert "--http_allow_ungated" in res.json()["bad_items"][0]["error"]


def test_token_is_checked_on_every_request(embedded_server):
    import requests

    svc, url = embedded_server
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": svc.token}):
        assert requests.get(f"{url}/health", headers=headers, timeout=60).status_code == 401
        res = requests.post(f"{url}/get_reward", json={"query": ["x"]}, headers=headers,
                            timeout=60)
        assert res.status_code == 401 and res.headers["WWW-Authenticate"].startswith("Bearer")
    health = requests.get(f"{url}/health", headers={"Authorization": f"Bearer {svc.token}"},
                          timeout=60).json()
    assert health["serving"] and health["rule"] == "walar" and "fra_Latn" in health["gated_langs"]
    assert health["http_port"] == int(url.rsplit(":", 1)[1])


def test_bind_rules_are_the_grpc_ports():
    check_bind("127.0.0.1", token=None, allow_remote=False, tls_cert=None, tls_key=None)
    with pytest.raises(ValueError, match="--allow_remote"):
        check_bind("0.0.0.0", token="t", allow_remote=False, tls_cert=None, tls_key=None)
    with pytest.raises(ValueError, match="requires a token"):
        check_bind("0.0.0.0", token=None, allow_remote=True, tls_cert=None, tls_key=None)
    with pytest.raises(ValueError, match="half a TLS"):
        check_bind("127.0.0.1", token=None, allow_remote=False, tls_cert="c", tls_key=None)


def test_reward_functions_for_a_token_protected_service(embedded_server, toks, monkeypatch,
                                                        tmp_path):
    """reward/remote_rm.py, loaded as OpenRLHF loads a `--remote_rm_url` .py file
    (importlib spec_from_file_location, `reward_func`) and called as slime calls a
    `--custom-rm-path` function, with the token from a 0600 file."""
    svc, url = embedded_server
    token_file = tmp_path / "token"
    token_file.write_text(svc.token)
    token_file.chmod(0o600)
    monkeypatch.setenv("WALAR_REWARD_URL", url)
    monkeypatch.setenv("WALAR_REWARD_TOKEN_FILE", str(token_file))
    spec = importlib.util.spec_from_file_location("reward_func",
                                                  REPO / "reward" / "remote_rm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tok = toks["llamax"]
    eng, deu = flores_lines("devtest", "eng_Latn", 1)[0], flores_lines("devtest", "deu_Latn",
                                                                        1)[0]
    prompt = prompts.build_prompt(eng, "eng_Latn", "deu_Latn", template="walar_llamax")
    queries = [openrlhf_query(tok, prompt, deu), openrlhf_query(tok, prompt, eng)]
    out = module.reward_func(queries, [prompt, prompt], [None, None])
    rewards = out["rewards"].tolist()
    assert rewards[0] > rewards[1] and out["scores"].tolist() == rewards
    assert out["extra_logs"]["n_items"].tolist() == [2, 2]
    samples = [types.SimpleNamespace(prompt=prompt, response=r, label=None) for r in (deu, eng)]
    group = asyncio.run(module.slime_rm(None, samples))
    one = asyncio.run(module.slime_rm(None, samples[0]))
    assert group[0] == pytest.approx(one, abs=1e-6) and group[0] > group[1]
    monkeypatch.setenv("WALAR_SERVICE_TOKEN", "wrong")
    monkeypatch.delenv("WALAR_REWARD_TOKEN_FILE")
    with pytest.raises(RuntimeError, match="HTTP 401"):
        module.reward_func(queries, None, None)


@pytest.fixture
def light_http():
    """The endpoints in this process over the real scorer without models (--no_lid
    --no_align --qe none): for what does not need them (TLS, connection limit)."""
    from reward.batching import ChunkedScorer
    from reward.http import HttpOptions, RewardApp, start_http
    from reward.scorer import RewardConfig, RewardScorer

    app = RewardApp(ChunkedScorer(RewardScorer(config=RewardConfig(penalty=0.0))),
                    HttpOptions(), lambda: {"serving": True})
    servers = []

    def start(**kw):
        server, port = start_http(app, "127.0.0.1", 0, token="tok", **kw)
        servers.append(server)
        return port

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


QUERY = ("<|im_start|>user\nGood morning.\nTranslate from English to French:<|im_end|>\n"
         "<|im_start|>assistant\n<think>\n\n</think>\n\nBonjour.<|im_end|>")


def test_https_with_tls_flags(light_http, tmp_path):
    import subprocess

    import requests

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                           "-keyout", str(key), "-out", str(cert), "-days", "1",
                           "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                          capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"openssl could not make a certificate: {made.stderr[-200:]!r}")
    port = light_http(tls_cert=str(cert), tls_key=str(key))
    res = requests.post(f"https://localhost:{port}/get_reward", json={"query": [QUERY]},
                        headers={"Authorization": "Bearer tok"}, verify=str(cert), timeout=60)
    assert res.status_code == 200 and res.json()["items"][0]["format"] == "walar"
    with pytest.raises(requests.ConnectionError):  # plaintext to the TLS port
        requests.post(f"http://localhost:{port}/get_reward", json={"query": [QUERY]},
                      headers={"Authorization": "Bearer tok"}, timeout=60)


def test_connections_past_the_limit_get_503(light_http):
    import socket

    import requests

    port = light_http(max_connections=2)
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    try:
        res = requests.get(f"http://127.0.0.1:{port}/health",
                           headers={"Authorization": "Bearer tok"}, timeout=60)
        assert res.status_code == 503 and "--http_max_connections" in res.json()["error"]
    finally:
        for sock in held:
            sock.close()

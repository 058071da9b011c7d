"""RewardClient (trainer env) against the real reward server (reward env), started the way
the trainer starts it. The server runs the embedded default models."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess

import pytest

from protos import reward_metrics
from walar_jax.clients import (
    AuthenticationError,
    InvalidRequestError,
    RewardClient,
    ServiceUnavailableError,
)
from walar_jax.launch import REPO_ROOT, Service, env_python

TOKEN = "t0ken"
EN = "The committee met on Monday to discuss the new budget for the schools."
FR = "Le comité s'est réuni lundi pour discuter du nouveau budget des écoles."
SW = "Kamati ilikutana Jumatatu kujadili bajeti mpya ya shule."


def _server_argv() -> list[str]:
    return [env_python("reward"), "-m", "reward.server", "--token", TOKEN, "--device", "cpu"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    try:
        env_python("reward")
    except FileNotFoundError as err:
        pytest.skip(str(err))
    log = tmp_path_factory.mktemp("reward") / "server.log"
    with Service("reward", _server_argv(), log_path=str(log)) as svc:
        yield svc


def _item(hyp: str, tgt: str = "fra_Latn", **kw) -> dict:
    return {"source": EN, "hypothesis": hyp, "src_lang": "eng_Latn", "tgt_lang": tgt, **kw}


def test_good_batch_rewards_and_components(server):
    with RewardClient([server.address], token=TOKEN, timeout_s=120) as client:
        batch = client.score([_item(FR), _item(EN), _item(FR, tgt="French")])
    ok, copy, named = batch.items
    assert ok.status == "OK" and ok.language_ok and ok.detected_lang == "fra_Latn"
    assert ok.reward == pytest.approx(ok.qe + 20.0 * ok.align_f1)  # embed QE + alpha * F1
    assert -1.0 <= ok.qe <= 1.0 and 0.0 <= ok.align_f1 <= 1.0
    assert copy.status == "OK" and not copy.language_ok and copy.reward == -1.0  # embed penalty
    assert copy.align_f1 is None and copy.detected_lang == "eng_Latn"
    assert named.reward == pytest.approx(ok.reward)  # "French" resolves like fra_Latn
    assert batch.rewards == [ok.reward, copy.reward, named.reward]
    assert ok.align_bonus and not copy.align_bonus and 0 < ok.masklid_share <= 1
    assert batch.metrics["gate_penalised_share"] == pytest.approx(1 / 3)
    assert batch.metrics["mean_qe"] == pytest.approx((ok.qe + copy.qe + named.qe) / 3)
    # the service's own metric names, nothing renamed or added
    assert set(batch.metrics) == set(reward_metrics.NAMES)
    assert batch.metrics["n_align_bonus"] == 2 and batch.metrics["n_align_f1"] == 2


def test_bad_items_come_back_with_status_and_penalty(server):
    with RewardClient(server.address, token=TOKEN, timeout_s=120) as client:
        batch = client.score([_item(""), _item("chat \ud800"), _item("mot " * 6000), _item(FR)])
    assert [it.status for it in batch.items] == ["EMPTY_TEXT", "INVALID_TEXT", "TOO_LONG", "OK"]
    assert [it.reward for it in batch.items[:3]] == [-1.0, -1.0, -1.0]
    assert batch.metrics["n_bad_items"] == 3


def test_split_across_addresses_keeps_order_and_merges_metrics_exactly(server):
    """Chunks of 2, 2 and 3 items holding 1, 0 and 1 F1 values (lid.176 labels the short
    Swahili sentence Indonesian: penalised): the merged means are count-weighted and skip
    the chunk whose mean is NaN, equal to one server's metrics of the whole batch."""
    items = [_item(FR), _item(EN), _item(EN), _item(EN), _item(SW, tgt="swh_Latn"),
             _item(FR), _item("")]
    with RewardClient([server.address], token=TOKEN, timeout_s=120) as one, \
            RewardClient([server.address] * 3, token=TOKEN, timeout_s=120) as three:
        a, b = one.score(items), three.score(items)
    assert a.rewards == pytest.approx(b.rewards)
    assert a.metrics.keys() == b.metrics.keys() == set(reward_metrics.NAMES)
    for k in a.metrics:
        assert b.metrics[k] == pytest.approx(a.metrics[k], rel=1e-12), k
    f1 = [it.align_f1 for it in a.items if it.align_f1 is not None]
    assert len(f1) == 2 and b.metrics["mean_align_f1"] == pytest.approx(sum(f1) / 2)
    assert b.metrics["n_align_f1"] == 2 and b.metrics["n_qe"] == 6
    assert b.metrics["n_bad_items"] == 1 and b.metrics["n_items"] == 7


def test_invalid_argument_fails_fast_with_the_reason(server, caplog):
    with RewardClient(server.address, token=TOKEN, max_attempts=5) as client:
        with caplog.at_level(logging.WARNING), pytest.raises(InvalidRequestError, match="'Elvish'"):
            client.score([_item(FR), _item(FR, tgt="Elvish")])
    assert "retry" not in caplog.text  # not retried


def test_client_side_validation_names_the_problem(server):
    with RewardClient(server.address, token=TOKEN) as client:
        with pytest.raises(ValueError, match="item 1 has no 'tgt_lang'"):
            client.score([_item(FR), {"source": EN, "hypothesis": FR, "src_lang": "en"}])
        with pytest.raises(TypeError, match="item 0 'hypothesis' is a NoneType"):
            client.score([_item(None)])
        with pytest.raises(ValueError, match="at least one item"):
            client.score([])


def test_ungated_names_the_targets_the_gate_cannot_check(server):
    """The embedded lid.176 has no Hausa, Wolof or Zulu label: for them the gate is
    skipped, so "1234567890 ..." passes as a translation (it scores like one, see
    tests/reward/test_http.py). The trainer asks before it trains."""
    with RewardClient([server.address, server.address], token=TOKEN) as client:
        got = client.ungated(["fra_Latn", "hau_Latn", "swh_Latn", "wol_Latn", "zul_Latn",
                              "hau_Latn", "yor_Latn"])
        assert got == ["hau_Latn", "wol_Latn", "zul_Latn"]
        assert client.ungated(["fra_Latn", "deu_Latn"]) == []
        with pytest.raises(ValueError, match=r"not FLORES-200 codes: \['French', 'xx'\]"):
            client.ungated(["fra_Latn", "French", "xx"])
        batch = client.score([_item("1234567890 " * 8, tgt="hau_Latn")])
    assert batch.items[0].gate_skipped and batch.items[0].language_ok


def test_trainer_refuses_ungated_targets_unless_allowed(server, caplog):
    """train.py's start-up check (services.check_gated) on the real service: Hausa is
    refused by name, allowed (and warned about) with reward.allow_ungated."""
    from walar_jax.rl.plan import ConfigError
    from walar_jax.services import check_gated

    with RewardClient(server.address, token=TOKEN) as client:
        with pytest.raises(ConfigError, match=r"\['hau_Latn'\].*reward.allow_ungated=True"):
            check_gated(client, ("fra_Latn", "hau_Latn"), allow=False)
        assert check_gated(client, ("fra_Latn", "swh_Latn"), allow=False) == []
        with caplog.at_level(logging.WARNING):
            assert check_gated(client, ("hau_Latn", "zul_Latn"), allow=True) == [
                "hau_Latn", "zul_Latn"]
    assert "without a language gate: ['hau_Latn', 'zul_Latn']" in caplog.text


def test_token_auth(server):
    for token in (None, "wrong"):
        with RewardClient(server.address, token=token) as client:
            with pytest.raises(AuthenticationError):
                client.score([_item(FR)])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_raises_and_failover_uses_the_other(server):
    dead = f"127.0.0.1:{_free_port()}"
    with RewardClient([dead], token=TOKEN, max_attempts=2, base_delay_s=0.05) as client:
        with pytest.raises(ServiceUnavailableError):
            client.score([_item(FR)])
    with RewardClient([dead, server.address], token=TOKEN, max_attempts=2,
                      base_delay_s=0.05, timeout_s=120) as client:
        batch = client.score([_item(FR), _item(EN)])  # first half went to `dead`
    assert [it.status for it in batch.items] == ["OK", "OK"]
    assert not batch.items[1].language_ok


def test_killed_and_restarted_server_is_survived_by_retries(tmp_path, caplog):
    try:
        env_python("reward")
    except FileNotFoundError as err:
        pytest.skip(str(err))
    first = Service("reward-a", _server_argv(), log_path=str(tmp_path / "a.log")).start()
    port = first.address.rsplit(":", 1)[1]
    os.killpg(first.proc.pid, signal.SIGKILL)  # crash, no clean shutdown
    first.proc.wait()
    # Restart on the same port right away; the client's first attempts find nothing there.
    second = subprocess.Popen([*_server_argv(), "--port", port], cwd=REPO_ROOT,
                              stdout=open(tmp_path / "b.log", "wb"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        with RewardClient(first.address, token=TOKEN, max_attempts=12, base_delay_s=0.5,
                          timeout_s=120) as client, caplog.at_level(logging.WARNING):
            batch = client.score([_item(FR), _item(EN)])
        assert "UNAVAILABLE" in caplog.text and "retry" in caplog.text  # it did need them
        assert batch.items[0].status == "OK"
        assert batch.items[0].reward == pytest.approx(
            batch.items[0].qe + 20.0 * batch.items[0].align_f1)
        assert not batch.items[1].language_ok
    finally:
        os.killpg(second.pid, signal.SIGTERM)
        second.wait(30)


def test_tls_with_token(tmp_path):
    """--tls_cert/--tls_key on the server, the certificate as the client's root."""
    try:
        env_python("reward")
    except FileNotFoundError as err:
        pytest.skip(str(err))
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                           "-keyout", str(key), "-out", str(cert), "-days", "1",
                           "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                          capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"openssl could not make a certificate: {made.stderr[-200:]!r}")
    argv = [*_server_argv(), "--tls_cert", str(cert), "--tls_key", str(key), "--no-align",
            "--qe", "none"]
    with Service("reward-tls", argv, log_path=str(tmp_path / "tls.log")) as svc:
        address = "localhost:" + svc.address.rsplit(":", 1)[1]
        with RewardClient(address, token=TOKEN, tls_root_cert=str(cert)) as client:
            batch = client.score([_item(FR), _item(EN)])
        assert [it.language_ok for it in batch.items] == [True, False]
        assert batch.rewards == [0.0, 0.0]  # no QE, no alignment: gate only, penalty 0
        with RewardClient(svc.address, token=TOKEN, max_attempts=1) as plain:
            with pytest.raises(ServiceUnavailableError):  # plaintext to a TLS port
                plain.score([_item(FR)])


@pytest.mark.parametrize("name", ["tiny", "qwen3_8b", "llamax3_8b", "translategemma_4b"])
def test_config_reward_flags_start_walars_rule(name):
    """The reward.server section of each config, as the trainer passes it, is accepted by
    the service and resolves to WALAR's published rule (paper configs: its models)."""
    import importlib
    import json

    from walar_jax.services import service_flags

    try:
        python = env_python("reward")
    except FileNotFoundError as err:
        pytest.skip(str(err))
    flags = service_flags(importlib.import_module(f"configs.{name}").get_config().reward.server)
    code = ("import json, sys; from reward.server import parse_args; "
            "a = vars(parse_args(sys.argv[1:])); print(json.dumps(a))")
    out = subprocess.run([python, "-c", code, *flags], cwd=REPO_ROOT, capture_output=True,
                         text=True, check=True)
    a = json.loads(out.stdout.splitlines()[-1])
    assert (a["rule"], a["label_match"], a["segment"], a["masklid_min_share"]) == (
        "walar", "walar", "walar", 0.0)
    assert a["lid"] and a["masklid"] and a["align"] and a["alpha"] == 20.0
    if name == "tiny":  # the embedded default: the bundled flores26 identifier and MiniLM
        assert a["qe"] == "embed" and a["lid_model"] == "flores26" and a["align_model"] is None
        return
    assert (a["qe"], a["qe_model"], a["qe_tokenizer"], a["qe_max_length"]) == (
        "metricx", "google/metricx-24-hybrid-xxl-v2p6-bfloat16", "google/mt5-xl", 512)
    assert (a["lid_labels"], a["masklid_labels"]) == ("glotlid", "flores200")
    assert (a["align_model"], a["align_layer"]) == ("BAAI/bge-m3", 24)
    assert a["hanlp_model"] == "COARSE_ELECTRA_SMALL_ZH"


def test_trainer_side_client_does_not_import_torch():
    import sys

    code = "import sys, walar_jax.clients; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)

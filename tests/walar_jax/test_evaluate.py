"""evaluate.py pieces without services: FLORES layouts, directions, metrics against
sacrebleu itself, report, compare, the LLM-judge client against a loopback HTTP server,
and the on-the-fly export of a training checkpoint."""

import json
import math
import os
import pathlib
import subprocess
import sys
from typing import ClassVar

import numpy as np
import pytest
import sacrebleu

from walar_jax import config as cfglib
from walar_jax import launch, services
from walar_jax.clients.reward import ItemReward, RewardBatch
from walar_jax.evaluation import cli, compare, flores, metrics, report
from walar_jax.evaluation import judge as judge_lib
from walar_jax.evaluation import model as model_lib
from walar_jax.evaluation import run as run_lib

from protos import languages

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


# ------------------------------------------------------------------------------ config
def test_eval_config_paper_defaults_and_overrides():
    c = cli.parse([])  # no --config: configs/eval.py, the paper's metrics
    assert c.xcomet.enabled and c.xcomet.server.qe_model == "Unbabel/XCOMET-XXL"
    assert c.metricx.server.qe_model == "google/metricx-24-hybrid-xxl-v2p6-bfloat16"
    assert (c.metricx.server.qe_tokenizer, c.metricx.server.qe_max_length) == ("google/mt5-xl", 512)
    assert c.xcomet.only_supported and c.metricx.only_supported
    # LCR: the training gate's identifier, top-1 label only
    gate = cfglib.load("configs/qwen3_8b.py").reward.server
    assert (c.lcr.server.lid_model, c.lcr.server.lid_labels) == (gate.lid_model, gate.lid_labels)
    assert c.lcr.server.masklid is False and c.lcr.server.qe == "none"
    assert c.seen_targets == languages.WALAR_TRAINING_LANGS and len(c.seen_targets) == 45
    c = cli.parse(["--config=configs/eval.py:tiny", "--config.generation.max_tokens=7",
                   "--config.xcomet.enabled=True", "--config.xcomet.server.qe_model=ckpt",
                   "--config.rollout.server.max_num_seqs=4", "--config.seen_targets=()"])
    assert c.generation.max_tokens == 7 and c.xcomet.enabled and c.rollout.server.max_num_seqs == 4
    assert c.seen_targets == () and not c.metricx.enabled
    # train.py and evaluate.py sections come from the same builders: the same keys
    train = cfglib.load("configs/tiny.py")
    assert set(c.rollout.server) == set(train.rollout.server)
    assert set(c.lcr.server) == set(c.xcomet.server) == set(train.reward.server)
    with pytest.raises(SystemExit, match="max_sentences=many: invalid literal for int"):
        cli.parse(["--config=configs/eval.py:tiny", "--config.data.max_sentences=many"])
    with pytest.raises(SystemExit, match="the argument is 'paper' \\(default\\) or 'tiny'"):
        cli.parse(["--config=configs/eval.py:huge"])


@pytest.mark.parametrize("override,named", [
    ("--config.xcomet.server.no_such_flag=1", "config.xcomet.server.no_such_flag"),
    ("--config.no_such_section.x=1", "config.no_such_section.x"),
    ("--rollout_args=--no_such_flag=1", "config.rollout.server.no_such_flag"),
])
def test_eval_config_unknown_key_fails_naming_it(override, named):
    with pytest.raises(SystemExit, match=f"unknown config key .*{named} does not exist"):
        cli.parse(["--config=configs/eval.py:tiny", override])


def test_former_flags_are_aliases_of_config_keys():
    old = cli.parse(["--config=configs/eval.py:tiny", "--model", "tiny", "--flores_dir", "F",
                     "--out", "O", "--step", "3", "--split=dev", "--max_tokens", "9",
                     "--rollout_args=--dtype=bfloat16 --kv_cache_gib 2 --no-enable_prefix_caching",
                     "--reward_args=--device=cuda", "--no_lcr", "--train_directions", "eng_Latn-*",
                     "--xcomet_address", "h:1", "--metricx_model", "mx", "--judge_url", "u"])
    new = cli.parse(["--config=configs/eval.py:tiny", "--config.model=tiny",
                     "--config.data.flores=F", "--config.out=O", "--config.step=3",
                     "--config.data.split=dev", "--config.generation.max_tokens=9",
                     "--config.rollout.server.dtype=bfloat16", "--config.rollout.server.kv_cache_gib=2",
                     "--config.rollout.server.enable_prefix_caching=False",
                     *[f"--config.{m}.server.device=cuda" for m in ("lcr", "xcomet", "metricx")],
                     "--config.lcr.enabled=False", "--config.seen_directions=eng_Latn-*",
                     "--config.xcomet.address=h:1", "--config.xcomet.enabled=True",
                     "--config.metricx.server.qe_model=mx", "--config.metricx.enabled=True",
                     "--config.judge.url=u"])
    assert old.to_dict() == new.to_dict()
    assert services.service_flags(old.rollout.server) == [
        "--dtype=bfloat16", "--no-enable_prefix_caching", "--kv_cache_gib=2.0", "--max_model_len=512"]
    assert services.service_flags(old.metricx.server) == [
        "--no-align", "--device=cuda", "--no-lid", "--no-masklid", "--qe=metricx",
        "--qe_max_length=512", "--qe_model=mx", "--qe_tokenizer=google/mt5-xl"]
    with pytest.raises(SystemExit, match="--out needs a value"):
        cli.parse(["--out"])


def test_service_flags_leave_out_unset_values():
    assert services.service_flags({"a": None, "b": "", "c": True, "d": False, "e": 3,
                                   "f": 0.5, "g": "x y"}) == [
        "--c", "--no-d", "--e=3", "--f=0.5", "--g=x y"]
    with pytest.raises(ValueError, match="service flag 'h'"):
        services.service_flags({"h": ("a", "b")})
    # the sidecar's own defaults apply: the embedded training default restates none of them
    assert services.service_flags(cfglib.load("configs/tiny.py").rollout.server) == [
        "--dtype=float32", "--max_model_len=512"]


def test_config_errors_before_anything_starts(tmp_path):
    base = ["--config=configs/eval.py:tiny", "--flores_dir", "F", "--out", str(tmp_path / "o")]
    for argv, msg in ((base, "exactly one of --config.model"),
                      ([*base, "--model", "tiny", "--workdir", "w"], "exactly one of"),
                      ([*base[:-2], "--model", "tiny"], "no output directory"),
                      ([*base, "--model", "tiny", "--config.lcr.server.masklid=True"],
                       "LCR is the identifier's top-1 label"),
                      ([*base, "--model", "tiny", "--config.lcr.server.lid=False"],
                       "LCR is the identifier's top-1 label"),
                      ([*base, "--model", "tiny", "--config.xcomet.enabled=True",
                        "--config.xcomet.server.qe_model="], "xcomet is enabled but has neither"),
                      ([*base, "--model", "tiny", "--judge_url", "u"], "needs --config.judge.model")):
        with pytest.raises(ValueError, match=msg):
            run_lib.check_config(cli.parse(argv))
    assert not (tmp_path / "o").exists()


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

    def piece(xs):
        return [" ".join(sp.encode(x.rstrip(), out_type=str)) for x in xs]

    want = sacrebleu.corpus_bleu(piece(hyps), [piece(refs)], tokenize="none").score
    got = metrics.SpBleu(str(path))(hyps, refs)
    assert got == pytest.approx(want, abs=1e-9) and 5 < got < 95
    assert got != sacrebleu.corpus_bleu(hyps, [refs], tokenize="13a").score
    with pytest.raises(FileNotFoundError, match="--spm_model .* does not exist"):
        metrics.SpBleu(str(tmp_path / "missing.model"))


def test_lcr_needs_top1_language_service():
    with pytest.raises(ValueError, match="--masklid_min_share 0"):
        metrics.check_lid_service({"lid_labels": "lid176", "masklid": True,
                                   "masklid_min_share": 0.94})
    with pytest.raises(ValueError, match="without a language identifier"):
        metrics.check_lid_service({"lid_labels": "none", "masklid": False})
    metrics.check_lid_service({"lid_labels": "lid176", "masklid": False})
    # WALAR's rule: MaskLID picks aligned words only, language_ok is the top-1 label
    metrics.check_lid_service({"lid_labels": "lid176", "masklid": True, "masklid_min_share": 0})


# ---------------------------------------------- service metrics: support lists, top-1 LCR
class FakeRewardService:
    """Stands in for RewardClient at the gRPC boundary (the e2e tests use the real
    service): a top-1 label read off each hypothesis (`<code> ...`), QE = its length."""

    calls: ClassVar[list] = []  # (address, [(src, tgt), ...]) per Score call

    def __init__(self, addresses, token=None, timeout_s=None):
        self.address = addresses[0]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def health(self):
        backend = {"lcr": "none", "xcomet": "comet", "metricx": "metricx"}[self.address]
        return [{"qe_backend": backend, "lid_labels": "glotlid" if backend == "none" else "none",
                 "masklid": False}]

    def score(self, items):
        type(self).calls.append((self.address, sorted({(i["src_lang"], i["tgt_lang"])
                                                       for i in items})))
        out = []
        for it in items:
            h = it["hypothesis"]
            label = h.split()[0] if h.strip() else ""
            qe = (len(h) / 100 if self.address == "xcomet" else -len(h) / 10) if h else None
            out.append(ItemReward(reward=0.0, status="OK" if h else "EMPTY_TEXT", status_detail="",
                                  language_ok=label == it["tgt_lang"], detected_lang=label,
                                  gate_skipped=False, qe=qe, align_f1=None, masked_hypothesis=h))
        return RewardBatch(out, {})


def _write_hypotheses(out, directions):
    """Per direction: one hypothesis in the target (top-1 label = target), one in English,
    one empty; the first one's length grows with the direction's index."""
    for k, (src, tgt) in enumerate(directions):
        hyps = [f"{tgt} " + "o" * k, "eng_Latn zz", ""]
        path = pathlib.Path(out, "hypotheses", f"{src}-{tgt}.jsonl")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"source": "s", "reference": "r r", "hypothesis": h})
                                + "\n" for h in hyps), encoding="utf-8")


def test_support_lists_exclude_directions_and_lcr_counts_top1_labels(tmp_path, monkeypatch):
    import walar_jax.clients

    monkeypatch.setattr(walar_jax.clients, "RewardClient", FakeRewardService)
    FakeRewardService.calls = []
    langs = ["eng_Latn", "fra_Latn", "hrv_Latn", "bos_Latn", "ceb_Latn", "wol_Latn"]
    directions = [(s, t) for s in langs for t in langs if s != t]
    out = str(tmp_path / "eval")
    _write_hypotheses(out, directions)
    c = cli.parse(["--config=configs/eval.py:tiny", "--out", out, "--reward_address", "lcr",
                   "--xcomet_address", "xcomet", "--metricx_address", "metricx"])
    rows = run_lib.score_all(c, directions)
    # by hand: xCOMET covers eng, fra, hrv, bos (not ceb, wol); MetricX eng, fra, ceb
    xc_langs, mx_langs = {"eng_Latn", "fra_Latn", "hrv_Latn", "bos_Latn"}, {"eng_Latn", "fra_Latn",
                                                                           "ceb_Latn"}
    xc_dirs = [d for d in directions if set(d) <= xc_langs]
    mx_dirs = [d for d in directions if set(d) <= mx_langs]
    assert (len(xc_dirs), len(mx_dirs)) == (12, 6)
    sent = {}
    for address, dirs in FakeRewardService.calls:
        sent.setdefault(address, []).extend(dirs)
    assert {k: sorted(v) for k, v in sent.items()} == {
        "lcr": sorted(directions), "xcomet": sorted(xc_dirs), "metricx": sorted(mx_dirs)}
    by = {(r["src"], r["tgt"]): r for r in rows}
    for k, d in enumerate(directions):
        r, first = by[d], len(d[1]) + 1 + k  # length of `<tgt> ooo…`
        assert r["xcomet_supported"] == (d in xc_dirs) and r["metricx_supported"] == (d in mx_dirs)
        if d in xc_dirs:  # x100 of len/100; the empty one counts 0
            assert r["xcomet"] == pytest.approx((first + 11 + 0) / 3)
        else:
            assert "xcomet" not in r
        if d in mx_dirs:  # len/10 as the 0-25 error; the empty one counts 25
            assert r["metricx"] == pytest.approx((first / 10 + 1.1 + 25) / 3)
        # LCR: top-1 label == target for the first hypothesis, and for the second when the
        # target is English; the empty one counts as inconsistent
        assert r["lcr"] == pytest.approx(100 * (1 + (d[1] == "eng_Latn")) / 3)
    report.annotate(rows, run_lib.seen_directions(c, langs, directions),
                    report.read_resource_levels(None))
    meta = {"model": "m", "split": "devtest", "n_sentences": 3}
    report.write_tables(out, rows, meta)
    md = report.summary_markdown(rows, meta, pivots=c.pivots)
    assert "| xCOMET (x100) | 18 | 12 |" in md and "| MetricX-24 (lower is better) | 24 | 6 |" in md
    overall = md.split("### Overall")[1].split("###")[0].splitlines()[-2]
    want_xc = sum(by[d]["xcomet"] for d in xc_dirs) / 12
    want_mx = sum(by[d]["metricx"] for d in mx_dirs) / 6
    assert f"| {want_xc:.2f} | {want_mx:.2f} |" in overall
    assert "| wol_Latn-eng_Latn | 3 |" in md
    per_dir = md.split("### Per direction")[1]
    line = next(x for x in per_dir.splitlines() if x.startswith("| wol_Latn-eng_Latn |"))
    assert line.endswith("| n/s | n/s |")
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert saved["excluded_directions"] == {"xcomet": 18, "metricx": 24}
    with open(tmp_path / "eval" / "results.csv", encoding="utf-8") as f:
        csv_rows = {r["direction"]: r for r in __import__("csv").DictReader(f)}
    assert csv_rows["ceb_Latn-eng_Latn"]["xcomet_supported"] == "False"
    assert csv_rows["ceb_Latn-eng_Latn"]["xcomet"] == ""
    assert csv_rows["ceb_Latn-eng_Latn"]["seen"] == "False"
    assert csv_rows["eng_Latn-ceb_Latn"]["seen"] == "True"  # ceb is a WALAR training target
    # a second run over the same hypotheses scores nothing again
    FakeRewardService.calls = []

    def values(rs):
        return [[r.get(m) for m in ("lcr", "xcomet", "metricx")] for r in rs]

    assert values(run_lib.score_all(c, directions)) == values(rows)
    assert FakeRewardService.calls == []


def test_lcr_is_the_top1_label_or_nothing():
    class Service:
        def __init__(self, items):
            self.items = items

        def score(self, batch):
            return RewardBatch(self.items, {})

    def item(**kw):
        return ItemReward(**{**dict(reward=0.0, status="OK", status_detail="", language_ok=False,
                                    detected_lang="fra_Latn", gate_skipped=False, qe=None,
                                    align_f1=None, masked_hypothesis=""), **kw})

    ok, wrong = item(language_ok=True, detected_lang="swh_Latn"), item()
    assert metrics.lcr(Service([ok, wrong, ok, item(status="EMPTY_TEXT", detected_lang="")]),
                       ["a"] * 4, ["b"] * 4, "eng_Latn", "swh_Latn") == 50.0
    assert math.isnan(metrics.lcr(Service([item(gate_skipped=True)]), ["a"], ["b"], "eng_Latn",
                                  "fuv_Latn"))
    with pytest.raises(RuntimeError, match="without a top-1 label"):
        metrics.lcr(Service([item(language_ok=True, detected_lang="")]), ["a"], ["b"],
                    "eng_Latn", "swh_Latn")


def test_seen_is_a_target_among_walar_training_langs():
    langs = ["eng_Latn", "isl_Latn", "swh_Latn", "kor_Hang"]
    directions = [(s, t) for s in langs for t in langs if s != t]
    c = cli.parse(["--config=configs/eval.py:tiny"])
    assert {"isl_Latn", "kor_Hang"} <= set(languages.WALAR_TRAINING_LANGS)
    assert not {"eng_Latn", "swh_Latn"} & set(languages.WALAR_TRAINING_LANGS)
    seen = run_lib.seen_directions(c, langs, directions)
    assert seen == {(s, t) for s, t in directions if t in ("isl_Latn", "kor_Hang")}
    assert len(seen) == 6
    c2 = cli.parse(["--config=configs/eval.py:tiny", "--train_directions", "eng_Latn-*"])
    assert run_lib.seen_directions(c2, langs, directions) == {
        ("eng_Latn", t) for t in langs[1:]}
    c3 = cli.parse(["--config=configs/eval.py:tiny", "--config.seen_targets=()"])
    assert run_lib.seen_directions(c3, langs, directions) is None
    # WALAR's generalization figure: a pivot source into seen vs unseen targets
    rows = [{"direction": f"{s}-{t}", "src": s, "tgt": t, "n": 1, "chrf": float(10 * k)}
            for k, (s, t) in enumerate(directions)]
    report.annotate(rows, seen, report.RESOURCE_LEVELS)
    md = report.summary_markdown(rows, {"model": "m"}, pivots=("eng_Latn", "kor_Hang"))
    assert "| seen | 6 |" in md and "| unseen | 6 |" in md
    # eng->isl 0, eng->kor 20 (seen); eng->swh 10 (unseen)
    assert "| eng_Latn → x (seen) | 2 | 10.00 |" in md
    assert "| eng_Latn → x (unseen) | 1 | 10.00 |" in md


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
    assert "As WALAR reports it" not in md  # no pivots asked for
    # WALAR's table: chrF++ x->eng (fra 30, swh 50), eng->x (10, 20), x->swh (20, 40),
    # swh->x (50, 60); Avg is the mean of the four group means
    md = report.summary_markdown(rows, {"model": "m"}, pivots=("eng_Latn", "zho_Hans", "swh_Latn"))
    walar = md.split("As WALAR reports it")[1].split("###")[0]
    for line in ("| x → eng_Latn | 2 | 40.00 |", "| eng_Latn → x | 2 | 15.00 |",
                 "| x → swh_Latn | 2 | 30.00 |", "| swh_Latn → x | 2 | 55.00 |",
                 "| Avg of the 4 groups | 6 | 35.00 |"):
        assert line in walar
    assert "zho_Hans" not in walar
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
    # judge.guided_regex: sent as vLLM's structured_outputs; such answers have their own keys
    assert "structured_outputs" not in FakeOpenAI.seen[-1][2]
    guided = judge_lib.Judge(fake_openai, "judge-model", None, str(cache), guided_regex="[0-9]+")
    assert guided.score("Hello world.", "Bonjour le monde.", "eng_Latn", "fra_Latn") == 73.0
    assert guided.requests == 1 and FakeOpenAI.seen[-1][2]["structured_outputs"] == {
        "regex": "[0-9]+"}


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
    t = Trainer(c, str(workdir), rollout=None, reward_fn=None, model_dir=tiny)  # no services
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
    saved = json.loads((tmp_path / "o" / "config.json").read_text())  # the resolved config
    assert (saved["model"], saved["data"]["directions"]) == ("tiny", "eng_Latn-fuv_Latn")
    assert saved["xcomet"]["server"]["qe_model"] == "Unbabel/XCOMET-XXL"
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

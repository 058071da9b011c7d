"""Tiny random models of the real architectures, saved in the real on-disk formats, for
offline tests: a GlotLID-style fastText trained on FLORES dev, SentencePiece tokenizers
trained here, an MT5-for-regression (MetricX-24 layout) and an xCOMET over a tiny XLM-R."""

from __future__ import annotations

import io
import pathlib

FLORES = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data" / "flores200"


def flores_lines(split: str, code: str, n: int | None = None) -> list[str]:
    lines = (FLORES / split / f"{code}.txt").read_text(encoding="utf-8").splitlines()
    return lines[:n] if n else lines


def flores_codes(split: str = "dev") -> list[str]:
    return sorted(p.stem for p in (FLORES / split).glob("*_*.txt"))


def train_glotlid_style(out: pathlib.Path) -> pathlib.Path:
    """An unquantized fastText LID with GlotLID's labels (`__label__eng_Latn`,
    `__label__cmn_Hani`), on FLORES dev: the bundled flores26 before quantization."""
    from reward import flores_lid

    return flores_lid.build(FLORES / "dev", out / "glotlid_tiny.bin", quantize=False)


def train_spm(out: pathlib.Path, name: str, *, mt5_ids: bool, vocab_size: int = 800) -> str:
    """A unigram SentencePiece model on a few FLORES languages. mt5_ids: pad 0, eos 1,
    unk 2 like mT5; otherwise the defaults XLM-R's tokenizer expects."""
    import sentencepiece as spm

    text = [line for code in ("eng_Latn", "fra_Latn", "swh_Latn", "deu_Latn")
            for line in flores_lines("dev", code, 200)]
    buf = io.BytesIO()
    ids = dict(pad_id=0, eos_id=1, unk_id=2, bos_id=-1) if mt5_ids else {}
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_writer=buf,
                                   vocab_size=vocab_size, model_type="unigram",
                                   character_coverage=0.9995, num_threads=1, **ids)
    path = out / f"{name}.model"
    path.write_bytes(buf.getvalue())
    return str(path)


def build_metricx(out: pathlib.Path) -> tuple[str, str]:
    """(model dir, tokenizer dir) of a tiny random MT5ForRegression."""
    import torch
    from transformers import MT5Config, T5Tokenizer

    from reward.qe import MT5ForRegression

    tok_dir = out / "mt5_tokenizer"
    tok = T5Tokenizer(vocab_file=train_spm(out, "mt5_spm", mt5_ids=True), extra_ids=20)
    tok.save_pretrained(tok_dir)
    config = MT5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2,
                       num_decoder_layers=1, num_heads=4, decoder_start_token_id=0,
                       pad_token_id=0, eos_token_id=1, tie_word_embeddings=False)
    config.metricx_score_token = tok.convert_tokens_to_ids("<extra_id_10>")
    torch.manual_seed(0)
    model = MT5ForRegression(config)  # random score logits land around 5..8 (inside 0..25)
    model_dir = out / "metricx_tiny"
    model.save_pretrained(model_dir, safe_serialization=True)
    return str(model_dir), str(tok_dir)


def build_xlmr(out: pathlib.Path) -> str:
    """A tiny random XLM-R (model + SentencePiece tokenizer) as a local HF directory."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizer

    path = out / "xlmr_tiny"
    tok = XLMRobertaTokenizer(vocab_file=train_spm(out, "xlmr_spm", mt5_ids=False))
    tok.save_pretrained(path)
    config = XLMRobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                              num_attention_heads=2, intermediate_size=64,
                              max_position_embeddings=514, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    XLMRobertaModel(config).save_pretrained(path, safe_serialization=True)
    return str(path)


def build_xcomet(out: pathlib.Path) -> str:
    """A tiny random xCOMET in COMET's checkpoint layout (hparams.yaml + checkpoints/)."""
    import pytorch_lightning as pl
    import torch
    import yaml
    from comet.models import XCOMETMetric

    xlmr = build_xlmr(out)
    torch.manual_seed(0)
    model = XCOMETMetric(encoder_model="XLM-RoBERTa", pretrained_model=xlmr, word_layer=2,
                         hidden_sizes=[16], layer_transformation="softmax",
                         load_pretrained_weights=True)
    root = out / "xcomet_tiny"
    (root / "checkpoints").mkdir(parents=True)
    hparams = {**dict(model.hparams), "class_identifier": "xcomet_metric"}
    (root / "hparams.yaml").write_text(yaml.safe_dump(hparams))
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": pl.__version__},
               root / "checkpoints" / "model.ckpt")
    return str(root)


# Hand-segmented Chinese (words separated by spaces), with punctuation WALAR drops
# (，。：“”) and words of one to four characters, so every BMES tag occurs.
HANLP_TRAIN = (
    "我 喜欢 吃 米饭 。",
    "他 住 在 北京 ， 很 开心 。",
    "今天 天气 很 好 。",
    "我们 去 图书馆 学习 “ 中文 ” 。",
    "她 说 ： 我 不 知道 。",
    "委员会 星期一 开会 讨论 新 预算 。",
    "学生 们 在 图书馆 看书 ， 老师 在 教室 。",
    "中华人民共和国 的 首都 是 北京 。",
)


def build_hanlp_tokenizer(out: pathlib.Path) -> str:
    """A HanLP TransformerTaggingTokenizer (the class of coarse_electra_small_20220616)
    over a tiny random ELECTRA with a character WordPiece vocabulary, trained by HanLP's
    own `fit` to segment HANLP_TRAIN, saved in HanLP's on-disk layout (config.json,
    vocabs.json, model.pt) so that `hanlp.load(dir)` loads it as it loads the real one."""
    import torch
    import transformers.optimization
    from hanlp.components.tokenizers.transformer import TransformerTaggingTokenizer
    from transformers import BertTokenizer, ElectraConfig, ElectraModel

    electra = out / "electra_tiny"
    electra.mkdir(parents=True, exist_ok=True)
    chars = sorted({c for line in HANLP_TRAIN for c in line.replace(" ", "")})
    (electra / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars]) + "\n",
        encoding="utf-8")
    tok = BertTokenizer(str(electra / "vocab.txt"), do_lower_case=False)
    tok.save_pretrained(electra)
    torch.manual_seed(0)
    ElectraModel(ElectraConfig(vocab_size=len(tok), embedding_size=16, hidden_size=32,
                               num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=128)
                 ).save_pretrained(electra)
    train = out / "hanlp_train.txt"
    train.write_text("\n".join(HANLP_TRAIN) + "\n", encoding="utf-8")
    # HanLP 2.1.1's trainer builds `transformers.optimization.AdamW`, which transformers
    # removed in 4.46; only training needs it (loading and segmenting do not), so this
    # fixture lends it torch's AdamW for the duration of `fit`.
    had = hasattr(transformers.optimization, "AdamW")
    if not had:
        transformers.optimization.AdamW = _TorchAdamW
    try:
        save_dir = out / "hanlp_tok"
        TransformerTaggingTokenizer().fit(
            str(train), str(train), str(save_dir), transformer=str(electra), epochs=25,
            lr=3e-2, transformer_lr=3e-3, batch_size=8, word_dropout=0.0, devices=[],
            seed=1, char_level=True, max_seq_len=300, hard_constraint=True, eval_trn=False,
            patience=100)
    finally:
        if not had:
            del transformers.optimization.AdamW
    return str(save_dir)


class _TorchAdamW:
    """`transformers.optimization.AdamW(params, ..., no_deprecation_warning=...)` on torch."""

    def __new__(cls, params, no_deprecation_warning=True, **kwargs):
        import torch

        return torch.optim.AdamW(params, **kwargs)

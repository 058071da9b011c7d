import numpy as np
import pytest
import torch

from bench.reward_align_reference import align_f1_per_item
from reward.align import _count_words
from reward.languages import resolve
from reward.segment import WALAR_ZH_PUNCTUATION, Segmenter
from tiny_models import HANLP_TRAIN, flores_lines


@pytest.mark.parametrize("lang,text,expected", [
    ("jpn_Jpan", "私は東京に住んでいます。", ["私", "は", "東京", "に", "住", "んで", "い", "ます"]),
    ("tha_Thai", "ผมชอบกินข้าวผัดมาก", ["ผม", "ชอบ", "กิน", "ข้าว", "ผัด", "มาก"]),
    ("zho_Hans", "我喜欢吃米饭。", ["我", "喜欢", "吃", "米饭"]),
    ("eng_Latn", "Hello , world — yes!", ["Hello", "world", "yes!"]),
])
def test_icu_segmentation(icu_segmenter, lang, text, expected):
    assert icu_segmenter.words(text, resolve(lang)) == expected


@pytest.mark.parametrize("lang,text,expected", [
    # WALAR: whitespace for every language but Chinese, nothing dropped
    ("jpn_Jpan", "私は東京に住んでいます。", ["私は東京に住んでいます。"]),
    ("tha_Thai", "ผมชอบกินข้าว ผัดมาก", ["ผมชอบกินข้าว", "ผัดมาก"]),
    ("eng_Latn", "Hello , world — yes!", ["Hello", ",", "world", "—", "yes!"]),
    # Chinese without a HanLP model: jieba, WALAR's punctuation list dropped (and the
    # whitespace tokens jieba returns), other symbols kept
    ("zho_Hans", "他说：“我喜欢吃米饭。” 好！", ["他", "说", "我", "喜欢", "吃", "米饭", "好", "！"]),
    ("zho_Hant", "我喜歡吃米飯。", ["我", "喜歡", "吃", "米", "飯"]),  # Traditional: also Chinese
])
def test_walar_segmentation(segmenter, lang, text, expected):
    assert segmenter.words(text, resolve(lang)) == expected
    assert segmenter.falls_back(resolve(lang)) == (lang.startswith("zho"))


def test_hanlp_segmentation_drops_walar_punctuation(hanlp_dir):
    """A real HanLP tokenizer (TransformerTaggingTokenizer, loaded by hanlp.load from its
    on-disk layout) that segments HANLP_TRAIN as written; the WALAR rule drops exactly the
    punctuation list from its output."""
    import hanlp

    raw = hanlp.load(hanlp_dir, devices=[], verbose=False)
    seg = Segmenter("walar", hanlp_dir, device="cpu")
    assert seg.chinese == f"hanlp {hanlp_dir}" and not seg.falls_back(resolve("zho_Hans"))
    dropped = 0
    for line in HANLP_TRAIN:
        gold = line.split()
        assert raw(line.replace(" ", "")) == gold  # HanLP's own output keeps punctuation
        expected = [w for w in gold if w not in WALAR_ZH_PUNCTUATION]
        dropped += len(gold) - len(expected)
        for lang in ("zho_Hans", "zho_Hant"):
            assert seg.words(line.replace(" ", ""), resolve(lang)) == expected
    assert dropped >= 12  # every sentence ends in one, some have more
    assert seg.words("Hello , world", resolve("eng_Latn")) == ["Hello", ",", "world"]
    icu = Segmenter("icu", hanlp_dir, device="cpu")  # ours: HanLP, punctuation-only dropped
    assert icu.words("他住在北京，很开心。", resolve("zho_Hans")) == ["他", "住", "在", "北京",
                                                                  "很", "开心"]


def test_unknown_segmentation_is_refused():
    with pytest.raises(ValueError, match="'spaces'"):
        Segmenter("spaces")


@pytest.mark.parametrize("lang", ["khm_Khmr", "lao_Laoo", "mya_Mymr"])
def test_unspaced_scripts_are_split_into_several_words(icu_segmenter, lang):
    text = {"khm_Khmr": "ខ្ញុំចូលចិត្តញ៉ាំបាយ", "lao_Laoo": "ຂ້ອຍມັກກິນເຂົ້າ",
            "mya_Mymr": "ကျွန်တော်ထမင်းစားချင်တယ်"}[lang]
    words = icu_segmenter.words(text, resolve(lang))
    assert len(words) >= 3 and "".join(words) == text


def test_count_words_counts_distinct_words_with_a_hit():
    hit = torch.tensor([[True, True, False, True, False], [False, True, True, False, True],
                        [False, False, False, False, False]])
    ids = torch.tensor([[-1, 0, 0, 1, -1], [-1, 0, 0, 1, -1], [-1, 0, 1, 2, -1]])
    # special-token hits never count; two hit subwords of one word count once
    assert _count_words(hit, ids).tolist() == [2.0, 1.0, 0.0]


def test_alignment_f1_by_hand(aligner, monkeypatch):
    """Hidden states chosen so that src word 0 <-> tgt word 0 and src 1 <-> tgt 1 align and
    tgt word 2 (two subwords) aligns with nothing: P = 2/3, R = 1, F1 = 0.8."""
    e = torch.eye(4) * 20.0
    src_h = torch.stack([e[0], e[0], e[1], e[0]])[None]  # [CLS] w0 w1 [SEP]
    tgt_h = torch.stack([e[0], e[0], e[1], -e[2] - e[0] - e[1], -e[3] - e[0] - e[1], e[0]])[None]
    outputs = iter([(src_h, torch.tensor([[-1, 0, 1, -1]])),
                    (tgt_h, torch.tensor([[-1, 0, 1, 2, 2, -1]]))])
    monkeypatch.setattr(aligner, "_encode", lambda sentences: next(outputs))
    f1 = aligner._batch_f1([["a", "b"]], [["x", "y", "z"]])
    assert f1.item() == pytest.approx(0.8)


def test_batched_alignment_equals_per_item_reference(aligner, segmenter, flores):
    eng, fra = flores_lines("devtest", "eng_Latn", 12), flores_lines("devtest", "fra_Latn", 12)
    zho = flores_lines("devtest", "zho_Hans", 12)
    src = [segmenter.words(s, resolve("eng")) for s in eng + eng]
    tgt = [segmenter.words(t, resolve("fra")) for t in fra] + [
        segmenter.words(t, resolve("zho")) for t in zho]
    src.append([])  # degenerate pairs score 0 in both
    tgt.append(["x"])
    batched = aligner.f1(src, tgt)
    reference = [align_f1_per_item(aligner.model, aligner.tokenizer, aligner.layer, s, t)
                 for s, t in zip(src, tgt)]
    np.testing.assert_allclose(batched, reference, atol=1e-6)
    assert batched[-1] == 0.0 and 0.0 < batched.min(initial=1.0, where=batched > 0) <= 1.0


def test_align_layer_out_of_range_is_refused(minilm_path):
    from reward.align import Aligner

    with pytest.raises(ValueError, match="--align_layer 99"):
        Aligner(minilm_path, layer=99, device="cpu")

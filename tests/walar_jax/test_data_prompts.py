import json

import pytest

from walar_jax import data, prompts


def test_tasks_never_translate_into_the_source_language():
    src = data.read_sources(["data/tiny"])
    tasks = data.make_tasks(src, ["eng_Latn", "fra_Latn", "deu_Latn", "swh_Latn"],
                            targets_per_source=2, seed=1)
    assert len(tasks) == 2 * len(src)
    assert all(t.src_lang != t.tgt_lang for t in tasks)
    assert {t.src_lang for t in tasks} == {"eng_Latn", "fra_Latn", "deu_Latn"}


def test_stream_order_is_deterministic_and_resumable():
    tasks = data.make_tasks(data.read_sources(["data/tiny"]), ["swh_Latn"], seed=0)
    a = data.TaskStream(tasks, seed=5)
    first = a.take(70)           # crosses an epoch boundary (60 tasks)
    rest = a.take(30)
    b = data.TaskStream(tasks, seed=5, position=70)
    assert b.take(30) == rest
    assert sorted(map(id, first[:60])) == sorted(map(id, tasks))  # an epoch is a permutation
    assert data.TaskStream(tasks, seed=6).take(10) != data.TaskStream(tasks, seed=5).take(10)


def test_walar_jsonl_with_label(tmp_path):
    p = tmp_path / "train.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "Hello there.", "label": "eng_Latn-zul_Latn"},
        {"prompt": "Bonjour.", "label": json.dumps({"src_lang": "fra_Latn", "tgt_lang": "wol_Latn"})},
    ]))
    rows = data.read_sources([str(p)], input_key="prompt")
    assert rows == [("Hello there.", "eng_Latn", "zul_Latn"), ("Bonjour.", "fra_Latn", "wol_Latn")]
    with pytest.raises(ValueError, match="'text'"):
        data.read_sources([str(p)])


def test_prompt_formats(tmp_path):
    from walar_jax.models.tiny import write_byte_tokenizer
    from walar_jax.tokenizer import Tokenizer

    write_byte_tokenizer(str(tmp_path), 384)
    tok = Tokenizer(str(tmp_path))
    p = prompts.build_prompt("Good morning.", "eng_Latn", "swh_Latn", template="chat", tokenizer=tok)
    assert p.startswith("<|im_start|>user\nTranslate the following text from English into Swahili")
    assert p.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    a = prompts.build_prompt("Good morning.", "eng_Latn", "fra_Latn", template="alpaca")
    assert "from English to French" in a and a.endswith("### Input:\nGood morning.\n\n### Response:")
    with pytest.raises(ValueError, match="xxx_Latn"):
        prompts.build_prompt("x", "eng_Latn", "xxx_Latn", template="plain")


def test_extract_translation():
    assert prompts.extract_translation("<think>hmm</think>\nSwahili: Habari za asubuhi.", "swh_Latn") == "Habari za asubuhi."
    assert prompts.extract_translation("Bonjour.\n\n### Instruction: more") == "Bonjour."
    assert prompts.extract_translation("  Guten Morgen.  ") == "Guten Morgen."


def test_translategemma_template_gets_codes_and_text():
    class Tok:  # a tokenizer whose chat template renders the structured user part
        chat_template = "x"

        def apply_chat_template(self, messages, **kw):
            part = messages[0]["content"][0]
            return f"<{part['source_lang_code']}>{part['target_lang_code']}|{part['text']}"

    got = prompts.build_prompt(" Good morning. ", "eng_Latn", "swh_Latn", template="translategemma",
                               tokenizer=Tok())
    assert got == "<en>sw|Good morning."
    assert prompts.language_code("zul_Latn") == "zu"


def test_tokenizer_matches_transformers(tmp_path):
    from transformers import AutoTokenizer
    from walar_jax.models.tiny import write_byte_tokenizer
    from walar_jax.tokenizer import Tokenizer

    write_byte_tokenizer(str(tmp_path), 384)
    ours, ref = Tokenizer(str(tmp_path)), AutoTokenizer.from_pretrained(str(tmp_path))
    msgs = [{"role": "user", "content": "Traduis: «été» 你好"}]
    for kw in ({}, {"enable_thinking": False}):
        a = ours.apply_chat_template(msgs, add_generation_prompt=True, **kw)
        b = ref.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, **kw)
        assert a == b
        assert ours.encode(a) == ref(b, add_special_tokens=False)["input_ids"]
    ids = ours.encode("été 你好")
    assert ours.decode(ids) == ref.decode(ids) == "été 你好"


def test_translategemma_fallback_without_a_chat_template():
    got = prompts.build_prompt("Good morning.", "eng_Latn", "swh_Latn", template="translategemma")
    assert got == (
        "<bos><start_of_turn>user\nYou are a professional English (en) to Swahili (sw) "
        "translator. Your goal is to accurately convey the meaning and nuances of the original "
        "English text while adhering to Swahili grammar, vocabulary, and cultural "
        "sensitivities.\nProduce only the Swahili translation, without any additional "
        "explanations or commentary. Please translate the following English text into "
        "Swahili:\n\n\nGood morning.<end_of_turn>\n<start_of_turn>model\n")

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


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return str(path)


ALPACA_ROW = ("Below is an instruction that describes a task, paired with an input that provides "
              "further context. Write a response that appropriately completes the request.\n"
              "### Instruction:\nTranslate the following sentences from German to Estonian.\n"
              "### Input:\nGuten Morgen.\nWie geht's?\n### Response:")


def test_walar_prompt_rows_are_parsed_and_rendered_once(tmp_path):
    from walar_jax.models.tiny import write_byte_tokenizer
    from walar_jax.tokenizer import Tokenizer

    path = _jsonl(tmp_path / "final_qwen_mix250.jsonl", [
        {"input_key": "Good morning.\nTranslate from English to Filipino:"},
        {"input_key": "你好。\nTranslate from Chinese to Tagalog:"},  # FLORES name works too
        {"input_key": [{"role": "user", "content": "Bonjour.\nTranslate from French to Persian:"}]},
        {"input_key": ALPACA_ROW},
    ])
    rows = data.read_sources([path], input_key="input_key")
    assert rows == [("Good morning.", "eng_Latn", "tgl_Latn"),
                    ("你好。", "zho_Hans", "tgl_Latn"),
                    ("Bonjour.", "fra_Latn", "pes_Arab"),
                    ("Guten Morgen.\nWie geht's?", "deu_Latn", "ekk_Latn")]
    tasks = data.make_tasks(rows, ["hin_Deva"], seed=0)  # fixed directions are kept
    assert [(t.src_lang, t.tgt_lang) for t in tasks] == [r[1:] for r in rows]
    write_byte_tokenizer(str(tmp_path), 384)
    p = prompts.build_prompt(tasks[0].text, tasks[0].src_lang, tasks[0].tgt_lang,
                             template="walar_qwen", tokenizer=Tokenizer(str(tmp_path)))
    assert p.count("Translate from") == 1 and "user\nGood morning.\nTranslate from English to " \
        "Filipino:<|im_end|>" in p
    with pytest.raises(ValueError, match="names no source language"):  # text: never parsed
        data.read_sources([path], input_key="input_key", input_format="text")


def test_walar_rows_that_parse_to_nothing_fail_with_file_and_line(tmp_path):
    bad_lang = _jsonl(tmp_path / "a.jsonl", [
        {"input_key": "Hi.\nTranslate from English to French:"},
        {"input_key": "Qapla'.\nTranslate from Klingon to French:"}])
    with pytest.raises(ValueError, match=r"a\.jsonl:2: unknown language name 'Klingon'"):
        data.read_sources([bad_lang], input_key="input_key")
    empty = _jsonl(tmp_path / "b.jsonl", [{"input_key": "\nTranslate from English to French:"}])
    with pytest.raises(ValueError, match=r"b\.jsonl:1: WALAR prompt holds no source text"):
        data.read_sources([empty], input_key="input_key")
    plain = _jsonl(tmp_path / "c.jsonl", [{"input_key": "Just a sentence.", "lang": "eng_Latn"}])
    assert data.read_sources([plain], input_key="input_key") == [
        ("Just a sentence.", "eng_Latn", None)]
    with pytest.raises(ValueError, match=r"c\.jsonl:1: not a WALAR prompt"):
        data.read_sources([plain], input_key="input_key", input_format="walar")
    no_lang = _jsonl(tmp_path / "d.jsonl", [{"input_key": "Just a sentence."}])
    with pytest.raises(ValueError, match=r"d\.jsonl:1: row names no source language"):
        data.read_sources([no_lang], input_key="input_key")
    unknown = _jsonl(tmp_path / "e.jsonl", [{"text": "Hallo.", "lang": "german"}])
    with pytest.raises(ValueError, match=r"e\.jsonl:1: source language 'german'"):
        data.read_sources([unknown])
    broken = _jsonl(tmp_path / "f.jsonl", [{"text": "Hallo.", "label": "{src_lang: deu_Latn"}])
    with pytest.raises(ValueError, match=r"f\.jsonl:1: 'label' \(data\.label_key\)"):
        data.read_sources([broken])
    (tmp_path / "english.txt").write_text("Hello.\n")
    with pytest.raises(ValueError, match=r"english\.txt: file name 'english'"):
        data.read_sources([str(tmp_path / "english.txt")])
    with pytest.raises(ValueError, match=r"data\.target_langs: language 'klingon'"):
        data.make_tasks([("Hi.", "eng_Latn", None)], ["klingon"])


def test_paper_configs_target_walars_45_languages():
    from protos import languages
    from walar_jax import config as cfglib

    for name in ("qwen3_8b", "llamax3_8b"):
        c = cfglib.load(f"configs/{name}.py")
        assert tuple(c.data.target_langs) == languages.WALAR_TRAINING_LANGS
        assert len(set(c.data.target_langs)) == 45 and c.data.extract == "whole"
        assert c.data.input_key == "input_key"
    gemma = cfglib.load("configs/translategemma_4b.py").data.target_langs
    assert set(languages.WALAR_TRAINING_LANGS) - set(gemma) == {"ceb_Latn"}
    assert cfglib.load("configs/tiny.py").data.extract == "auto"

"""`Tokenizer.encode_prompt` puts BOS where `transformers` does, never twice, for tiny
Qwen3, Llama 3 (LLaMAX and Instruct) and Gemma 3 tokenizers in the real formats."""

import pytest

from tests.walar_jax import tokenizer_fixtures as fx
from walar_jax.tokenizer import Tokenizer

TEXTS = ["Good morning. How are you?", "Über 123 Brücken — 你好，世界。", "x"]
# family fixture -> the token its encoding puts in front (None: nothing)
FIXTURES = {
    "qwen3": (fx.write_qwen3, {}, None),
    "llamax": (fx.write_llama3, {}, "<|begin_of_text|>"),
    "llama3_instruct": (fx.write_llama3, {"chat_template": fx.LLAMA3_INSTRUCT_TEMPLATE},
                        "<|begin_of_text|>"),
    "gemma3": (fx.write_gemma3, {}, "<bos>"),
}


def _load(tmp_path, name):
    from transformers import AutoTokenizer

    write, kw, bos = FIXTURES[name]
    path = write(tmp_path / name, **kw)
    return Tokenizer(path), AutoTokenizer.from_pretrained(path), bos


def _ids(encoded):
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


@pytest.mark.parametrize("name", list(FIXTURES))
def test_plain_text_gets_bos_exactly_as_transformers_adds_it(tmp_path, name):
    ours, ref, bos = _load(tmp_path, name)
    for text in TEXTS:
        ids = ours.encode_prompt(text)
        assert ids == ref(text)["input_ids"]
        body = ref(text, add_special_tokens=False)["input_ids"]
        assert ids == ([ref.convert_tokens_to_ids(bos)] if bos else []) + body
        assert ours.encode_prompt(text, bos="never") == body


@pytest.mark.parametrize("name", ["qwen3", "llama3_instruct", "gemma3"])
def test_chat_prompt_has_one_bos_as_transformers_renders_and_tokenizes_it(tmp_path, name):
    ours, ref, bos = _load(tmp_path, name)
    if name == "gemma3":  # translategemma: one structured part with the codes
        msgs = [{"role": "user", "content": [{"type": "text", "source_lang_code": "en",
                                              "target_lang_code": "sw", "text": TEXTS[0]}]}]
    else:
        msgs = [{"role": "user", "content": TEXTS[1]}]
    kw = dict(add_generation_prompt=True, enable_thinking=False)
    text = ours.apply_chat_template(msgs, **kw)
    assert text == ref.apply_chat_template(msgs, tokenize=False, **kw)
    ids = ours.encode_prompt(text)
    assert ids == _ids(ref.apply_chat_template(msgs, tokenize=True, **kw))
    bos_id = ref.convert_tokens_to_ids(bos) if bos else None
    assert ids.count(bos_id) == (1 if bos else 0) and (not bos or ids[0] == bos_id)
    if bos:  # what `tokenizer(text)` would do to a rendered template: BOS twice
        assert ref(text)["input_ids"][:2] == [bos_id, bos_id]


def test_add_bos_token_in_tokenizer_config_does_not_override_tokenizer_json(tmp_path):
    """transformers 5 drops `add_bos_token` when a tokenizer.json exists; so do we."""
    from transformers import AutoTokenizer

    path = fx.write_llama3(tmp_path / "nobos", add_bos_token=False)
    ours, ref = Tokenizer(path), AutoTokenizer.from_pretrained(path)
    assert ref(TEXTS[0])["input_ids"][0] == ref.convert_tokens_to_ids("<|begin_of_text|>")
    assert ours.encode_prompt(TEXTS[0]) == ref(TEXTS[0])["input_ids"]
    with pytest.raises(ValueError, match="bos must be"):
        ours.encode_prompt("x", bos="always")

"""WALAR's prompts as the paper configs render them through tiny Qwen3, LLaMAX (Llama 3)
and translategemma (Gemma 3) tokenizers in the real formats, taken apart by a parser
written from WALAR's format (the patterns its reward server, `serve_rm.py`, applies);
translategemma's fallback prompt checked against its real template logic."""

import re

import pytest

from tests.walar_jax import tokenizer_fixtures as fx
from walar_jax import config as cfglib
from walar_jax import prompts
from walar_jax.tokenizer import Tokenizer

TEXT = "Good morning.\nHow are you today?"  # two lines: the parser must keep both


def walar_parse(base_model: str, prompt: str) -> tuple[str, str, str]:
    """(source text, source name, target name) the way WALAR's reward server reads a
    query: `get_source` for the text, `get_source_and_target_languages` for the names."""
    if base_model == "Qwen":
        text = re.search(r"<\|im_start\|>user\n(.*?)Translate from (.*?) to (.*?):", prompt,
                         re.S)[1]
        names = re.search(r"Translate from ([^\n<]+) to ([^\n<]+):", prompt)
    elif base_model == "LlamaX":
        text = re.search(r"### Instruction:(.*?)### Input:\n(.*?)### Response:", prompt, re.S)[2]
        names = re.search(r"Translate the following sentences from ([^\n<]+) to ([^\n<]+).",
                          prompt)
    else:  # Gemma
        names = re.search(r"Please translate the following (.*?) text into (.*?):(.*?)"
                          r"<end_of_turn>", prompt, re.S)
        text = names[3]
    return text.strip(), names[1].strip(), names[2].strip()


# config, tokenizer fixture, WALAR's base-model name, targets with the names WALAR's
# prompts give them (Gemma: translategemma's table), the exact Qwen/LLaMAX prompt
CASES = {
    "qwen3_8b": (fx.write_qwen3, "Qwen", {"tgl_Latn": "Filipino", "hin_Deva": "Hindi",
                                          "kor_Hang": "Korean"}),
    "llamax3_8b": (fx.write_llama3, "LlamaX", {"tgl_Latn": "Filipino", "ekk_Latn": "Estonian",
                                               "pes_Arab": "Persian"}),
    "translategemma_4b": (fx.write_gemma3, "Gemma", {"hin_Deva": "Hindi", "kor_Hang": "Korean",
                                                      "ukr_Cyrl": "Ukrainian"}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_paper_config_prompts_parse_back_as_walar_reads_them(tmp_path, name):
    from transformers import AutoTokenizer

    write, base_model, targets = CASES[name]
    c = cfglib.load(f"configs/{name}.py")
    path = write(tmp_path / name)
    tok, ref = Tokenizer(path), AutoTokenizer.from_pretrained(path)
    assert set(targets) <= set(c.data.target_langs)
    for tgt, tgt_name in targets.items():
        prompt = prompts.build_prompt(TEXT, "eng_Latn", tgt, template=c.data.template,
                                      tokenizer=tok)
        assert walar_parse(base_model, prompt) == (TEXT, "English", tgt_name)
        # BOS: as transformers encodes the string, never doubled when it is rendered in
        ids = tok.encode_prompt(prompt, bos=c.data.bos)
        has_bos = ref.bos_token is not None and prompt.startswith(ref.bos_token)
        assert ids == ref(prompt, add_special_tokens=not has_bos)["input_ids"]
        bos_id = ref.bos_token_id
        assert ids.count(bos_id) == (0 if base_model == "Qwen" else 1)


def test_walar_qwen_and_llamax_prompts_exactly(tmp_path):
    tok = Tokenizer(fx.write_qwen3(tmp_path / "q"))
    assert prompts.build_prompt(" Good morning. ", "eng_Latn", "zho_Hans", template="walar_qwen",
                                tokenizer=tok) == (
        "<|im_start|>user\nGood morning.\nTranslate from English to Chinese:<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert prompts.build_prompt("Good morning.", "eng_Latn", "tgl_Latn",
                                template="walar_llamax") == (
        "Below is an instruction that describes a task, paired with an input that provides "
        "further context. Write a response that appropriately completes the request.\n"
        "### Instruction:\nTranslate the following sentences from English to Filipino.\n"
        "### Input:\nGood morning.\n### Response:")


def test_walar_gemma_gives_walar_codes_and_refuses_codes_the_template_lacks(tmp_path):
    tok = Tokenizer(fx.write_gemma3(tmp_path / "g"))
    p = prompts.build_prompt("Hallo.", "deu_Latn", "zho_Hans", template="walar_gemma",
                             tokenizer=tok)
    assert "professional German (de) to Chinese (zh) translator" in p
    with pytest.raises(ValueError, match=r"'ceb' \(ceb_Latn\)"):
        prompts.build_prompt("Hi.", "eng_Latn", "ceb_Latn", template="walar_gemma", tokenizer=tok)
    with pytest.raises(ValueError, match=r"'no' \(nob_Latn\)"):  # WALAR's code for Bokmal
        prompts.build_prompt("Hi.", "eng_Latn", "nob_Latn", template="walar_gemma", tokenizer=tok)


@pytest.mark.parametrize("src,tgt", [("eng_Latn", "swh_Latn"), ("fra_Latn", "deu_Latn"),
                                     ("eng_Latn", "zho_Hans"), ("jpn_Jpan", "por_Latn")])
def test_translategemma_fallback_equals_the_real_template_rendered(tmp_path, src, tgt):
    """Issue 11.9: the fallback (no chat template in the checkpoint) against the template
    of a real tokenizer directory, rendered by transformers and by our renderer."""
    from transformers import AutoTokenizer

    path = fx.write_gemma3(tmp_path / "g")
    text = "  Good morning.\nSee you.  "
    fallback = prompts.build_prompt(text, src, tgt, template="translategemma")
    ours = prompts.build_prompt(text, src, tgt, template="translategemma",
                                tokenizer=Tokenizer(path))
    part = {"type": "text", "source_lang_code": prompts.language_code(src),
            "target_lang_code": prompts.language_code(tgt), "text": text}
    theirs = AutoTokenizer.from_pretrained(path).apply_chat_template(
        [{"role": "user", "content": [part]}], tokenize=False, add_generation_prompt=True)
    assert fallback == ours == theirs


def test_template_resolution_by_family():
    assert [prompts.resolve_template("walar", f) for f in ("qwen3", "llama", "gemma3")] == [
        "walar_qwen", "walar_llamax", "walar_gemma"]
    assert prompts.resolve_template("auto", "llama") == "alpaca"
    assert prompts.resolve_template("chat", None) == "chat"
    with pytest.raises(ValueError, match="family"):
        prompts.build_prompt("x", "eng_Latn", "fra_Latn", template="walar")
    with pytest.raises(ValueError, match="unknown prompt template 'walr'"):
        prompts.resolve_template("walr", "qwen3")


def test_walar_scores_the_whole_answer_and_the_cut_is_an_option():
    answer = "  Habari za asubuhi.\n\nNote: I kept it short.\n### Instruction: more  "
    whole = "Habari za asubuhi.\n\nNote: I kept it short.\n### Instruction: more"
    assert prompts.extract_translation(answer, "swh_Latn", template="walar_qwen") == whole
    assert prompts.extract_translation(answer, "swh_Latn", template="walar_qwen",
                                       extract="cut") == "Habari za asubuhi."
    assert prompts.extract_translation(answer, "swh_Latn") == "Habari za asubuhi."  # as before
    assert prompts.extract_translation(answer, template="chat", extract="whole") == whole
    assert prompts.extract_translation("<think>x</think>Swahili: Habari.", "swh_Latn",
                                       template="walar_qwen") == "<think>x</think>Swahili: Habari."
    with pytest.raises(ValueError, match="unknown answer extraction"):
        prompts.extract_translation(answer, extract="first_line")

"""protos/prompt_parse.py reads back every prompt walar_jax.prompts renders (WALAR's
templates and ours, through tiny Qwen3 / Llama 3 / Gemma 3 tokenizers in the real formats)
and the response out of a query decoded the way OpenRLHF decodes one."""

import re

import pytest

from protos import languages
from protos import prompt_parse as pp
from remote_rm_helpers import openrlhf_query
from tests.walar_jax import tokenizer_fixtures as fx
from walar_jax import prompts
from walar_jax.prompts import walar

TEXT = "Good morning.\nHow are you today?"  # two lines: both belong to the source
RESPONSE = "Bonjour.\nComment allez-vous aujourd'hui ?"


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
    from transformers import AutoTokenizer

    d = tmp_path_factory.mktemp("toks")
    return {
        "qwen3": AutoTokenizer.from_pretrained(fx.write_qwen3(d / "qwen3")),
        "llamax": AutoTokenizer.from_pretrained(fx.write_llama3(d / "llamax")),
        "llama3_instruct": AutoTokenizer.from_pretrained(
            fx.write_llama3(d / "instruct", chat_template=fx.LLAMA3_INSTRUCT_TEMPLATE)),
        "gemma3": AutoTokenizer.from_pretrained(fx.write_gemma3(d / "gemma3")),
        None: None,
    }


# template, tokenizer, the format the parser reports
CASES = [
    ("walar_qwen", "qwen3", "walar"), ("walar_qwen", "llama3_instruct", "walar"),
    ("walar_llamax", "llamax", "alpaca"), ("walar_gemma", "gemma3", "translategemma"),
    ("walar_gemma", None, "translategemma"), ("chat", "qwen3", "chat"),
    ("chat", "llama3_instruct", "chat"), ("alpaca", "llamax", "alpaca"),
    ("translategemma", "gemma3", "translategemma"), ("translategemma", None, "translategemma"),
    ("plain", None, "plain"),
]
# directions the tiny translategemma template's language table has
DIRECTIONS = [("eng_Latn", "fra_Latn"), ("eng_Latn", "zho_Hans"), ("fra_Latn", "swh_Latn"),
              ("hin_Deva", "kor_Hang"), ("ukr_Cyrl", "deu_Latn")]


@pytest.mark.parametrize("template,tok_name,fmt", CASES)
def test_every_template_parses_back(toks, template, tok_name, fmt):
    tok = toks[tok_name]
    for src, tgt in DIRECTIONS:
        prompt = prompts.build_prompt(f"  {TEXT} ", src, tgt, template=template, tokenizer=tok)
        assert pp.parse_prompt(prompt) == pp.ParsedPrompt(fmt, TEXT, src, tgt)
        if tok is None:
            continue
        query = openrlhf_query(tok, prompt, RESPONSE)
        want = tok.decode(tok(RESPONSE, add_special_tokens=False)["input_ids"])
        for given in (None, prompt):  # from the query alone, and with OpenRLHF's prompts
            parsed = pp.parse_query(query, given)
            assert (parsed.format, parsed.source, parsed.src_lang, parsed.tgt_lang) == (
                fmt, TEXT, src, tgt)
            assert parsed.response == want


@pytest.mark.parametrize("template", ["walar_llamax", "walar_gemma", "alpaca", "plain",
                                      "translategemma"])
def test_every_language_of_the_table_round_trips(template):
    """WALAR's names ("Filipino", "Chinese"), the table's ("Chinese (Traditional)",
    "Acehnese (Arabic script)") and translategemma's codes, where one code has two
    scripts (`ace`), decided by the name."""
    for lang in languages.languages():
        prompt = prompts.build_prompt(TEXT, "eng_Latn", lang.code, template=template)
        assert pp.parse_prompt(prompt).tgt_lang == lang.code, (template, lang.code)


def test_walar_gemma_codes_are_walars():
    assert pp._WALAR_GEMMA_CODES == {v: k for k, v in walar._GEMMA_CODES.items()}


def walar_source_and_target(base_model: str, query: str) -> tuple[str, str]:
    """What WALAR's reward server (serve_rm.py `get_source`, `get_target`) reads from a
    query: its patterns, restated."""
    if base_model == "Qwen":
        src = re.search(r"<\|im_start\|>user\n(.*?)Translate from (.*?) to (.*?):", query,
                        re.S)[1]
        tgt = re.search(r"<\|im_start\|>assistant\n<think>(.*?)</think>\n\n(.*?)<\|im_end\|>",
                        query, re.S)[2]
    elif base_model == "LlamaX":
        src = re.search(r"### Instruction:(.*?)### Input:\n(.*?)### Response:", query, re.S)[2]
        tgt = re.search(r"### Response:(.*?)<\|end_of_text\|>", query, re.S)[1]
    else:
        src = re.search(r"Please translate the following (.*?) text into (.*?):(.*?)"
                        r"<end_of_turn>", query, re.S)[3]
        tgt = re.search(r"<start_of_turn>model(.*?)<end_of_turn>", query, re.S)[1]
    return src.strip(), tgt.strip()


@pytest.mark.parametrize("template,tok_name,base_model", [
    ("walar_qwen", "qwen3", "Qwen"), ("walar_llamax", "llamax", "LlamaX"),
    ("walar_gemma", "gemma3", "Gemma")])
def test_source_and_response_are_what_walars_server_reads(toks, template, tok_name,
                                                          base_model):
    tok = toks[tok_name]
    prompt = prompts.build_prompt(TEXT, "eng_Latn", "fra_Latn", template=template,
                                  tokenizer=tok)
    query = openrlhf_query(tok, prompt, RESPONSE)
    if base_model == "Gemma":  # WALAR's pattern needs the model turn closed
        query = query.removesuffix(tok.eos_token) + "<end_of_turn>"
    parsed = pp.parse_query(query)
    assert (parsed.source, parsed.response.strip()) == walar_source_and_target(base_model,
                                                                               query)


def test_response_markup():
    assert pp.clean_response("<think>\n\n</think>\n\nHallo<|im_end|><|endoftext|>") == "Hallo"
    assert pp.clean_response("<think>I should say hello</think>\nHallo<eos>") == "Hallo"
    assert pp.clean_response("<think>never closed, cut by max_tokens") == ""
    assert pp.clean_response("Hallo Welt") == "Hallo Welt"  # truncated, no EOS
    assert pp.clean_response(" Hallo<end_of_turn>\n<start_of_turn>user\nmore") == " Hallo"


def test_split_uses_the_given_prompt_when_the_query_starts_with_it():
    prompt = prompts.build_prompt(TEXT, "eng_Latn", "deu_Latn", template="plain")
    query = prompt + " Guten Morgen.\nGerman: again</s>"
    assert pp.parse_query(query, prompt).response == " Guten Morgen.\nGerman: again"
    # without it, a plain prompt ends at the first line naming a language
    assert pp.parse_query("<s>" + query).response == " Guten Morgen.\nGerman: again"
    noted = "English: Note: this\nis it.\nGerman: Hinweis</s>"
    assert pp.parse_query(noted) == pp.ParsedQuery("plain", "Note: this\nis it.",
                                                   "eng_Latn", "deu_Latn", " Hinweis")


@pytest.mark.parametrize("text,message", [
    ("hello there", "cannot tell the prompt from the response"),
    ("<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\nhi", "no known translation"),
    ("<|im_start|>user\nHi\nTranslate from English to Elvish:<|im_end|>\n"
     "<|im_start|>assistant\nhi", "unknown language name 'Elvish'"),
    ("<|im_start|>user\n\nTranslate from English to French:<|im_end|>\n"
     "<|im_start|>assistant\nhi", "holds no source text"),
])
def test_unreadable_queries_raise_saying_why(text, message):
    with pytest.raises(pp.PromptParseError, match=message):
        pp.parse_query(text)


def test_non_strings_raise():
    for bad in (None, 3, ["a"], {"q": 1}):
        with pytest.raises(pp.PromptParseError, match="string"):
            pp.parse_query(bad)
        with pytest.raises(pp.PromptParseError, match="string"):
            pp.parse_prompt(bad)

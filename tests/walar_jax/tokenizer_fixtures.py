"""Tiny tokenizers of Qwen3, Llama 3 (LLaMAX, and an Instruct-style one with a chat
template) and Gemma 3 / translategemma, written in the real on-disk formats (tokenizer.json
+ tokenizer_config.json, chat templates that behave like the real ones), so that
`transformers.AutoTokenizer` loads each with the class the real checkpoint names.

The chat templates are written here from what the real ones render (no copy of them is
at hand offline): Qwen3's (system turn, think blocks of the last assistant turn,
`enable_thinking=False` -> an empty think block), Llama 3 Instruct's (`bos_token`, header
blocks) and translategemma's (structured user content, language table, `bos_token`).
translategemma's table is reduced to a few codes; its names for en, de, es, fr, it, ja,
pt and zh (English, German, Spanish, French, Italian, Japanese, Portuguese, Chinese) are
those of a third-party copy of the template found by search, the ones for hi, ko, sw and
uk are assumed to be the plain English names; the rest of the real table could not be
found offline.
"""

from __future__ import annotations

import json
import os

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import trainers

CORPUS = [
    "Good morning. How are you today?", "The quick brown fox jumps over the lazy dog.",
    "Translate from English to Filipino:", "Bonjour, comment allez-vous ? Très bien, merci.",
    "Guten Morgen! Wie geht es Ihnen? Über 123 Brücken.", "Habari za asubuhi, rafiki yangu.",
    "你好，世界。今天天气很好。", "नमस्ते दुनिया", "안녕하세요 세계", "Доброе утро, мир.",
    "Below is an instruction that describes a task, paired with an input.",
    "Please translate the following English text into Swahili:",
]
# Llama 3's and Qwen2's pre-tokenizer patterns (Qwen splits digits one by one).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}"
                r"\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
               r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

QWEN3_TEMPLATE = """\
{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- set ns = namespace(last_query=messages|length - 1) %}
{%- for m in messages[::-1] %}
    {%- if m.role == 'user' %}
        {%- set ns.last_query = messages|length - 1 - loop.index0 %}
        {%- break %}
    {%- endif %}
{%- endfor %}
{%- for m in messages %}
    {%- if m.role == 'user' or (m.role == 'system' and not loop.first) %}
        {{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}
    {%- elif m.role == 'assistant' %}
        {%- set content = m.content %}
        {%- set reasoning = '' %}
        {%- if '</think>' in content %}
            {%- set reasoning = content.split('</think>')[0].split('<think>')[-1].strip('\\n') %}
            {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query %}
            {{- '<|im_start|>assistant\\n<think>\\n' + reasoning + '\\n</think>\\n\\n' + content }}
        {%- else %}
            {{- '<|im_start|>assistant\\n' + content }}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}"""

LLAMA3_INSTRUCT_TEMPLATE = """\
{%- for message in messages %}
    {%- set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' \
+ message['content'] | trim + '<|eot_id|>' %}
    {%- if loop.index0 == 0 %}{%- set content = bos_token + content %}{%- endif %}
    {{- content }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\
{%- endif %}"""

TRANSLATEGEMMA_LANGUAGES = {"de": "German", "en": "English", "es": "Spanish", "fr": "French",
                            "hi": "Hindi", "it": "Italian", "ja": "Japanese", "ko": "Korean",
                            "pt": "Portuguese", "sw": "Swahili", "uk": "Ukrainian",
                            "zh": "Chinese", "zh-Hans": "Chinese"}
TRANSLATEGEMMA_TEMPLATE = """\
{%- set languages = LANGUAGES -%}
{{ bos_token }}
{%- if messages[0]['role'] != 'user' -%}
    {{ raise_exception('Conversations must start with a user prompt.') }}
{%- endif -%}
{%- for message in messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception('Conversation roles must alternate user/assistant/user/...') }}
    {%- endif -%}
    {%- if message['role'] == 'assistant' -%}
        {{ '<start_of_turn>model\\n' + message['content'] | trim }}
    {%- else -%}
        {%- if message['content'] is string or message['content'] | length != 1 -%}
            {{ raise_exception('User content must be a list with exactly one item.') }}
        {%- endif -%}
        {%- set part = message['content'][0] -%}
        {%- if part['type'] != 'text' -%}{{ raise_exception('Unsupported content type') }}\
{%- endif -%}
        {%- set src_code = part['source_lang_code'] | replace('_', '-') -%}
        {%- set tgt_code = part['target_lang_code'] | replace('_', '-') -%}
        {%- set src = languages[src_code] -%}
        {%- set tgt = languages[tgt_code] -%}
        {{ '<start_of_turn>user\\nYou are a professional ' + src + ' (' + src_code + ') to ' \
+ tgt + ' (' + tgt_code + ') translator. Your goal is to accurately convey the meaning and \
nuances of the original ' + src + ' text while adhering to ' + tgt + ' grammar, vocabulary, \
and cultural sensitivities.\\nProduce only the ' + tgt + ' translation, without any \
additional explanations or commentary. Please translate the following ' + src + ' text into ' \
+ tgt + ':\\n\\n\\n' + part['text'] | trim }}
    {%- endif -%}
    {{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"""


def _byte_level_bpe(split: str, specials: list[str], *, nfc: bool) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    if nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def _write(out_dir, tok: Tokenizer, cfg: dict, chat_template: str | None) -> str:
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    if chat_template:
        cfg = {**cfg, "chat_template": chat_template}
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    return str(out_dir)


def write_qwen3(out_dir) -> str:
    """Qwen3: byte-level BPE, no BOS (`add_bos_token: false`, `bos_token: null`)."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
    tok = _byte_level_bpe(QWEN2_SPLIT, specials, nfc=True)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    cfg = {"tokenizer_class": "Qwen2Tokenizer", "add_bos_token": False, "bos_token": None,
           "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None,
           "add_prefix_space": False, "errors": "replace", "split_special_tokens": False,
           "model_max_length": 131072, "clean_up_tokenization_spaces": False}
    return _write(out_dir, tok, cfg, QWEN3_TEMPLATE)


def write_llama3(out_dir, *, chat_template: str | None = None, **cfg_overrides) -> str:
    """Llama 3 (LLaMAX3-8B-Alpaca's format; with `chat_template`, an Instruct model):
    byte-level BPE whose tokenizer.json post-processor puts <|begin_of_text|> in front;
    tokenizer_config.json names no `add_bos_token` (as Meta's files)."""
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                "<|end_header_id|>", "<|eot_id|>"]
    tok = _byte_level_bpe(LLAMA3_SPLIT, specials, nfc=False)
    bos = "<|begin_of_text|>"
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                      special_tokens=[(bos, tok.token_to_id(bos))])])
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos,
           "eos_token": "<|eot_id|>" if chat_template else "<|end_of_text|>",
           "model_max_length": 131072, "clean_up_tokenization_spaces": True,
           "model_input_names": ["input_ids", "attention_mask"], **cfg_overrides}
    return _write(out_dir, tok, cfg, chat_template)


def write_gemma3(out_dir, *, chat_template: str | None = None) -> str:
    """Gemma 3 / translategemma: SentencePiece-style BPE with byte fallback (`▁` for
    spaces), `add_bos_token: true`, and by default translategemma's chat template."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
    learner = Tokenizer(models.BPE())  # pieces learnt on the corpus, spaces as `▁`
    learner.train_from_iterator([s.replace(" ", "▁") for s in CORPUS], trainers.BpeTrainer(
        vocab_size=300, show_progress=False))
    learnt = json.loads(learner.to_str())["model"]
    pieces = sorted(learnt["vocab"], key=learnt["vocab"].get)
    vocab = {t: i for i, t in enumerate(specials + [f"<0x{b:02X}>" for b in range(256)])}
    for piece in pieces:
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learnt["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True,
                               byte_fallback=True))
    tok.add_special_tokens(specials)
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous", invert=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse()])
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", 2)])
    template = TRANSLATEGEMMA_TEMPLATE.replace(
        "LANGUAGES", json.dumps(TRANSLATEGEMMA_LANGUAGES)) if chat_template is None \
        else chat_template
    cfg = {"tokenizer_class": "GemmaTokenizer", "add_bos_token": True, "add_eos_token": False,
           "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
           "unk_token": "<unk>", "mask_token": "<mask>", "model_max_length": 2048,
           "clean_up_tokenization_spaces": False, "spaces_between_special_tokens": False}
    return _write(out_dir, tok, cfg, template)

"""The language table: one file (`flores200.tsv`) and one reader, shared by the trainer's
prompts, the reward service and evaluation. Pure Python, so every environment imports it.

Codes are FLORES-200 codes as the table spells them (FLORES+ style: Estonian is
`ekk_Latn`). WALAR's language lists (`code/utils.py` of LeiLiLab/WALAR, written in
FLORES-101 / ISO codes) are kept here translated to those codes.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib

TABLE = pathlib.Path(__file__).with_name("flores200.tsv")


@dataclasses.dataclass(frozen=True)
class Language:
    """A FLORES-200 language: `code` (swh_Latn), English `name`, ISO 639-1 code if any."""

    code: str
    name: str
    iso1: str | None

    @property
    def iso3(self) -> str:
        return self.code.split("_")[0]

    @property
    def script(self) -> str:
        return self.code.split("_")[1]

    @property
    def short_code(self) -> str:
        """ISO 639-1 where it exists, else the ISO 639-3 part (templates that take codes)."""
        return self.iso1 or self.iso3


@functools.cache
def languages() -> tuple[Language, ...]:
    """Every row of the table, in table order."""
    out = []
    for line in TABLE.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        code, name, iso1 = line.split("\t")
        out.append(Language(code, name, None if iso1 == "-" else iso1))
    return tuple(out)


@functools.cache
def by_code() -> dict[str, Language]:
    return {lang.code: lang for lang in languages()}


def get(code: str) -> Language:
    """The language of a FLORES-200 code; raises ValueError naming an unknown one."""
    lang = by_code().get(code)
    if lang is None:
        raise ValueError(f"unknown FLORES-200 language code {code!r} (see {TABLE.name})")
    return lang


# WALAR's 45 training targets (`training_langs`): the paper's seen set.
WALAR_TRAINING_LANGS: tuple[str, ...] = (
    "isl_Latn", "ltz_Latn", "bel_Cyrl", "ces_Latn", "mkd_Cyrl", "pol_Latn", "srp_Cyrl",
    "slk_Latn", "slv_Latn", "ukr_Cyrl", "ben_Beng", "guj_Gujr", "hin_Deva", "mar_Deva",
    "npi_Deva", "pan_Guru", "urd_Arab", "hye_Armn", "ell_Grek", "cym_Latn", "lvs_Latn",
    "lit_Latn", "pes_Arab", "ceb_Latn", "tgl_Latn", "jav_Latn", "arb_Arab", "azj_Latn",
    "kaz_Cyrl", "tur_Latn", "uzn_Latn", "kan_Knda", "mal_Mlym", "tam_Taml", "tel_Telu",
    "mya_Mymr", "ekk_Latn", "fin_Latn", "hun_Latn", "kat_Geor", "heb_Hebr", "khm_Khmr",
    "kor_Hang", "lao_Laoo", "tha_Thai",
)

# The names WALAR's prompts give each language ("Translate from English to Filipino:"):
# `lang_dict` of WALAR's code/utils.py, keyed there by FLORES-101 codes, here by ours. They
# differ from the table's FLORES names in places (tgl_Latn "Filipino", not "Tagalog";
# zho_Hans "Chinese"; nob_Latn "Norwegian"; ory_Orya "Oriya"; ckb_Arab "Kurdish").
WALAR_PROMPT_NAMES: dict[str, str] = {
    "afr_Latn": "Afrikaans", "amh_Ethi": "Amharic", "arb_Arab": "Arabic",
    "hye_Armn": "Armenian", "asm_Beng": "Assamese", "ast_Latn": "Asturian",
    "azj_Latn": "Azerbaijani", "bel_Cyrl": "Belarusian", "ben_Beng": "Bengali",
    "bos_Latn": "Bosnian", "bul_Cyrl": "Bulgarian", "mya_Mymr": "Burmese",
    "cat_Latn": "Catalan", "ceb_Latn": "Cebuano", "zho_Hans": "Chinese",
    "zho_Hant": "Traditional Chinese", "hrv_Latn": "Croatian", "ces_Latn": "Czech",
    "dan_Latn": "Danish", "ary_Arab": "Darija", "nld_Latn": "Dutch",
    "arz_Arab": "Egyptian Arabic", "eng_Latn": "English", "ekk_Latn": "Estonian",
    "tgl_Latn": "Filipino", "fin_Latn": "Finnish", "fra_Latn": "French",
    "fuv_Latn": "Fulah", "glg_Latn": "Galician", "lug_Latn": "Ganda",
    "kat_Geor": "Georgian", "deu_Latn": "German", "ell_Grek": "Greek",
    "guj_Gujr": "Gujarati", "hau_Latn": "Hausa", "heb_Hebr": "Hebrew", "hin_Deva": "Hindi",
    "hun_Latn": "Hungarian", "isl_Latn": "Icelandic", "ibo_Latn": "Igbo",
    "ind_Latn": "Indonesian", "gle_Latn": "Irish", "ita_Latn": "Italian",
    "jpn_Jpan": "Japanese", "jav_Latn": "Javanese", "kea_Latn": "Kabuverdianu",
    "kam_Latn": "Kamba", "kan_Knda": "Kannada", "kaz_Cyrl": "Kazakh", "kik_Latn": "Kikuyu",
    "khm_Khmr": "Khmer", "kor_Hang": "Korean", "kir_Cyrl": "Kyrgyz", "lao_Laoo": "Lao",
    "lvs_Latn": "Latvian", "lin_Latn": "Lingala", "lit_Latn": "Lithuanian", "luo_Latn": "Luo",
    "ltz_Latn": "Luxembourgish", "mkd_Cyrl": "Macedonian", "zsm_Latn": "Malay",
    "mal_Mlym": "Malayalam", "mlt_Latn": "Maltese", "mri_Latn": "Maori",
    "mar_Deva": "Marathi", "khk_Cyrl": "Mongolian", "nob_Latn": "Norwegian",
    "npi_Deva": "Nepali", "nso_Latn": "Northern Sotho", "nya_Latn": "Nyanja",
    "oci_Latn": "Occitan", "ory_Orya": "Oriya", "gaz_Latn": "Oromo", "pbt_Arab": "Pashto",
    "pes_Arab": "Persian", "pol_Latn": "Polish", "por_Latn": "Portuguese",
    "pan_Guru": "Punjabi", "ron_Latn": "Romanian", "rus_Cyrl": "Russian",
    "srp_Cyrl": "Serbian", "sna_Latn": "Shona", "snd_Arab": "Sindhi", "slk_Latn": "Slovak",
    "slv_Latn": "Slovenian", "som_Latn": "Somali", "ckb_Arab": "Kurdish",
    "spa_Latn": "Spanish", "swh_Latn": "Swahili", "swe_Latn": "Swedish", "tgk_Cyrl": "Tajik",
    "tam_Taml": "Tamil", "tel_Telu": "Telugu", "tha_Thai": "Thai", "tur_Latn": "Turkish",
    "twi_Latn": "Twi", "ukr_Cyrl": "Ukrainian", "umb_Latn": "Umbundu", "urd_Arab": "Urdu",
    "uzn_Latn": "Uzbek", "vie_Latn": "Vietnamese", "cym_Latn": "Welsh", "wol_Latn": "Wolof",
    "xho_Latn": "Xhosa", "yor_Latn": "Yoruba", "zul_Latn": "Zulu",
}

# Languages WALAR's evaluation scores with each metric (`xcomet_support_langs`,
# `metricx_support_langs`); a direction with a source or target outside a list is left
# out of that metric's averages.
XCOMET_SUPPORTED: frozenset[str] = frozenset((
    "afr_Latn", "amh_Ethi", "arb_Arab", "hye_Armn", "asm_Beng", "azj_Latn", "bel_Cyrl",
    "ben_Beng", "bos_Latn", "bul_Cyrl", "mya_Mymr", "cat_Latn", "zho_Hans", "zho_Hant",
    "hrv_Latn", "ces_Latn", "dan_Latn", "nld_Latn", "eng_Latn", "ekk_Latn", "fin_Latn",
    "fra_Latn", "glg_Latn", "deu_Latn", "ell_Grek", "guj_Gujr", "hau_Latn", "heb_Hebr",
    "hin_Deva", "hun_Latn", "isl_Latn", "ind_Latn", "gle_Latn", "ita_Latn", "jpn_Jpan",
    "jav_Latn", "kat_Geor", "kaz_Cyrl", "khm_Khmr", "kan_Knda", "kor_Hang", "ckb_Arab",
    "kir_Cyrl", "lao_Laoo", "lvs_Latn", "lit_Latn", "mkd_Cyrl", "zsm_Latn", "mal_Mlym",
    "mar_Deva", "khk_Cyrl", "npi_Deva", "nob_Latn", "ory_Orya", "gaz_Latn", "pbt_Arab",
    "pes_Arab", "pol_Latn", "por_Latn", "pan_Guru", "ron_Latn", "rus_Cyrl", "srp_Cyrl",
    "snd_Arab", "slk_Latn", "slv_Latn", "som_Latn", "spa_Latn", "swh_Latn", "swe_Latn",
    "tam_Taml", "tel_Telu", "tha_Thai", "tgl_Latn", "tur_Latn", "ukr_Cyrl", "urd_Arab",
    "uzn_Latn", "vie_Latn", "cym_Latn", "xho_Latn",
))
METRICX_SUPPORTED: frozenset[str] = frozenset((
    "afr_Latn", "dan_Latn", "nld_Latn", "deu_Latn", "isl_Latn", "ltz_Latn", "nob_Latn",
    "swe_Latn", "eng_Latn", "cat_Latn", "fra_Latn", "glg_Latn", "por_Latn", "ron_Latn",
    "spa_Latn", "bel_Cyrl", "bul_Cyrl", "ces_Latn", "mkd_Cyrl", "pol_Latn", "rus_Cyrl",
    "srp_Cyrl", "slk_Latn", "slv_Latn", "ukr_Cyrl", "ben_Beng", "guj_Gujr", "hin_Deva",
    "mar_Deva", "npi_Deva", "pan_Guru", "snd_Arab", "urd_Arab", "hye_Armn", "ell_Grek",
    "gle_Latn", "cym_Latn", "ita_Latn", "lvs_Latn", "lit_Latn", "pbt_Arab", "ckb_Arab",
    "tgk_Cyrl", "ceb_Latn", "tgl_Latn", "ind_Latn", "jav_Latn", "zsm_Latn", "mri_Latn",
    "ibo_Latn", "nso_Latn", "sna_Latn", "swh_Latn", "umb_Latn", "xho_Latn", "yor_Latn",
    "zul_Latn", "amh_Ethi", "arb_Arab", "mlt_Latn", "som_Latn", "azj_Latn", "kaz_Cyrl",
    "kir_Cyrl", "tur_Latn", "uzn_Latn", "kan_Knda", "mal_Mlym", "tam_Taml", "tel_Telu",
    "mya_Mymr", "zho_Hans", "zho_Hant", "ekk_Latn", "fin_Latn", "hun_Latn", "kat_Geor",
    "hau_Latn", "heb_Hebr", "jpn_Jpan", "khm_Khmr", "vie_Latn", "kor_Hang", "lao_Laoo",
    "tha_Thai", "khk_Cyrl",
))


# ---------------------------------------------------------------------------------------
# WALAR's language-identifier tables (the reward's language gate and MaskLID).
#
# WALAR maps the identifier's top-1 label to a language name (`lang_dict` of
# openrlhf/openrlhf/cli/serve_rm.py for lid.176-style labels, then `long2lang` of
# code/utils.py for GlotLID labels) and compares it with the target's name in the prompt.
# Here each label maps to the FLORES-200 code of the language so named, which gives the
# same decisions (each WALAR name denotes one language), except where WALAR's own names
# disagree with its prompts. Those accidents are fixed here and listed in docs/reward.md:
# GlotLID `tgl_Latn` is WALAR's "Tagalog" while its prompts say "Filipino" (always
# penalised); lid.176 `ku` is its "Sorani Kurdish", a name no prompt uses, and lid.176's
# `ckb` (Sorani) has no entry. Chinese labels also name Traditional Chinese, which WALAR's
# tables leave without any label (see reward/languages.py).

# lid.176 labels (`__label__xx`) -> FLORES-200 code.
WALAR_LID176_LABELS: dict[str, str] = {
    "af": "afr_Latn", "am": "amh_Ethi", "ar": "arb_Arab", "hy": "hye_Armn", "as": "asm_Beng",
    "ast": "ast_Latn", "az": "azj_Latn", "be": "bel_Cyrl", "bn": "ben_Beng", "bs": "bos_Latn",
    "bg": "bul_Cyrl", "my": "mya_Mymr", "ca": "cat_Latn", "ceb": "ceb_Latn", "zh": "zho_Hans",
    "zho": "zho_Hans", "hr": "hrv_Latn", "cs": "ces_Latn", "da": "dan_Latn", "nl": "nld_Latn",
    "en": "eng_Latn", "et": "ekk_Latn", "tl": "tgl_Latn", "fi": "fin_Latn", "fr": "fra_Latn",
    "ff": "fuv_Latn", "gl": "glg_Latn", "lg": "lug_Latn", "ka": "kat_Geor", "de": "deu_Latn",
    "el": "ell_Grek", "gu": "guj_Gujr", "ha": "hau_Latn", "he": "heb_Hebr", "hi": "hin_Deva",
    "hu": "hun_Latn", "is": "isl_Latn", "ig": "ibo_Latn", "id": "ind_Latn", "ga": "gle_Latn",
    "it": "ita_Latn", "ja": "jpn_Jpan", "jv": "jav_Latn", "kea": "kea_Latn", "kam": "kam_Latn",
    "kn": "kan_Knda", "kk": "kaz_Cyrl", "km": "khm_Khmr", "ko": "kor_Hang", "ky": "kir_Cyrl",
    "lo": "lao_Laoo", "lv": "lvs_Latn", "ln": "lin_Latn", "lt": "lit_Latn", "luo": "luo_Latn",
    "lb": "ltz_Latn", "mk": "mkd_Cyrl", "ms": "zsm_Latn", "ml": "mal_Mlym", "mt": "mlt_Latn",
    "mi": "mri_Latn", "mr": "mar_Deva", "mn": "khk_Cyrl", "ne": "npi_Deva", "ns": "nso_Latn",
    "no": "nob_Latn", "ny": "nya_Latn", "oc": "oci_Latn", "or": "ory_Orya", "om": "gaz_Latn",
    "ps": "pbt_Arab", "fa": "pes_Arab", "pl": "pol_Latn", "pt": "por_Latn", "pa": "pan_Guru",
    "ro": "ron_Latn", "ru": "rus_Cyrl", "sr": "srp_Cyrl", "sn": "sna_Latn", "sd": "snd_Arab",
    "sk": "slk_Latn", "sl": "slv_Latn", "so": "som_Latn", "ku": "kmr_Latn", "es": "spa_Latn",
    "sw": "swh_Latn", "sv": "swe_Latn", "tg": "tgk_Cyrl", "ta": "tam_Taml", "te": "tel_Telu",
    "th": "tha_Thai", "tr": "tur_Latn", "uk": "ukr_Cyrl", "umb": "umb_Latn", "ur": "urd_Arab",
    "uz": "uzn_Latn", "vi": "vie_Latn", "cy": "cym_Latn", "wo": "wol_Latn", "xh": "xho_Latn",
    "yo": "yor_Latn", "zu": "zul_Latn", "ckb": "ckb_Arab",
}

# GlotLID labels WALAR names that are their own language's FLORES-200 code.
WALAR_GLOTLID_NAMED: frozenset[str] = frozenset((
    "afr_Latn", "amh_Ethi", "arb_Arab", "asm_Beng", "ast_Latn", "azj_Latn", "bel_Cyrl",
    "ben_Beng", "bos_Latn", "bul_Cyrl", "cat_Latn", "ceb_Latn", "ces_Latn", "ckb_Arab",
    "cym_Latn", "dan_Latn", "deu_Latn", "ekk_Latn", "ell_Grek", "eng_Latn", "fin_Latn",
    "fra_Latn", "fuv_Latn", "gaz_Latn", "gle_Latn", "glg_Latn", "guj_Gujr", "hau_Latn",
    "heb_Hebr", "hin_Deva", "hrv_Latn", "hun_Latn", "hye_Armn", "ibo_Latn", "ind_Latn",
    "isl_Latn", "ita_Latn", "jav_Latn", "jpn_Jpan", "kam_Latn", "kan_Knda", "kat_Geor",
    "kaz_Cyrl", "kea_Latn", "khk_Cyrl", "khm_Khmr", "kir_Cyrl", "kor_Hang", "lao_Laoo",
    "lin_Latn", "lit_Latn", "ltz_Latn", "lug_Latn", "luo_Latn", "lvs_Latn", "mal_Mlym",
    "mar_Deva", "mkd_Cyrl", "mlt_Latn", "mri_Latn", "mya_Mymr", "nld_Latn", "nob_Latn",
    "npi_Deva", "nso_Latn", "nya_Latn", "oci_Latn", "ory_Orya", "pan_Guru", "pbt_Arab",
    "pol_Latn", "por_Latn", "ron_Latn", "rus_Cyrl", "slk_Latn", "slv_Latn", "sna_Latn",
    "snd_Arab", "som_Latn", "spa_Latn", "srp_Cyrl", "swe_Latn", "swh_Latn", "tam_Taml",
    "tel_Telu", "tgk_Cyrl", "tha_Thai", "tur_Latn", "ukr_Cyrl", "umb_Latn", "urd_Arab",
    "uzn_Latn", "vie_Latn", "wol_Latn", "xho_Latn", "yor_Latn", "zsm_Latn", "zul_Latn",
))
# GlotLID labels WALAR names that are not the code this table uses for the language.
WALAR_GLOTLID_ALIASES: dict[str, str] = {
    "bur_Mymr": "mya_Mymr", "est_Latn": "ekk_Latn", "pus_Arab": "pbt_Arab",
    "fas_Arab": "pes_Arab", "cmn_Hani": "zho_Hans", "fil_Latn": "tgl_Latn",
    "tgl_Latn": "tgl_Latn",  # WALAR: "Tagalog", a name its prompts never use
}

# The 200 GlotLID labels of the FLORES-200 languages (`flores_glotlid` in serve_rm.py):
# the only labels WALAR's MaskLID chooses from. The gate itself uses every label.
WALAR_MASKLID_LABELS: tuple[str, ...] = (
    "eng_Latn", "arb_Arab", "rus_Cyrl", "por_Latn", "pol_Latn", "ekk_Latn", "ell_Grek",
    "slk_Latn", "slv_Latn", "nld_Latn", "lvs_Latn", "hun_Latn", "dan_Latn", "swe_Latn",
    "lit_Latn", "fin_Latn", "mlt_Latn", "cmn_Hani", "nob_Latn", "kor_Hang", "ind_Latn",
    "uzn_Latn", "fil_Latn", "ukr_Cyrl", "hin_Deva", "hin_Latn", "afr_Latn", "mar_Deva",
    "ceb_Latn", "ilo_Latn", "zul_Latn", "heb_Hebr", "xho_Latn", "vie_Latn", "jpn_Jpan",
    "guj_Gujr", "hrv_Latn", "tur_Latn", "nya_Latn", "tsn_Latn", "sna_Latn", "tso_Latn",
    "tha_Thai", "spa_Latn", "deu_Latn", "eus_Latn", "bul_Cyrl", "amh_Ethi", "fra_Latn",
    "ewe_Latn", "mkd_Cyrl", "nso_Latn", "tam_Taml", "lin_Latn", "twi_Latn", "yor_Latn",
    "als_Latn", "ibo_Latn", "ben_Beng", "ita_Latn", "tpi_Latn", "azj_Latn", "run_Latn",
    "mya_Mymr", "kin_Latn", "ron_Latn", "ces_Latn", "kat_Geor", "urd_Arab", "zsm_Latn",
    "pap_Latn", "bem_Latn", "mal_Mlym", "kir_Cyrl", "hye_Armn", "smo_Latn", "sin_Sinh",
    "fij_Latn", "kan_Knda", "pan_Guru", "hau_Latn", "epo_Latn", "gaz_Latn", "tir_Ethi",
    "bos_Latn", "srp_Cyrl", "hat_Latn", "pag_Latn", "lua_Latn", "war_Latn", "tel_Telu",
    "tat_Cyrl", "sag_Latn", "lug_Latn", "tum_Latn", "swh_Latn", "umb_Latn", "som_Latn",
    "gle_Latn", "kng_Latn", "mos_Latn", "lus_Latn", "khk_Cyrl", "asm_Beng", "tuk_Latn",
    "quy_Latn", "ayr_Latn", "luo_Latn", "tgk_Cyrl", "cat_Latn", "ssw_Latn", "nno_Latn",
    "cym_Latn", "kik_Latn", "kmb_Latn", "ory_Orya", "bel_Cyrl", "bho_Deva", "apc_Arab",
    "bak_Cyrl", "jav_Latn", "yue_Hani", "pbt_Arab", "khm_Khmr", "npi_Deva", "npi_Latn",
    "gug_Latn", "uig_Arab", "fur_Latn", "kbp_Latn", "hne_Deva", "kam_Latn", "gla_Latn",
    "kab_Latn", "arz_Arab", "kaz_Cyrl", "mri_Latn", "lim_Latn", "srd_Latn", "sun_Latn",
    "plt_Latn", "mni_Beng", "isl_Latn", "vec_Latn", "glg_Latn", "scn_Latn", "fao_Latn",
    "san_Deva", "ltz_Latn", "cjk_Latn", "ast_Latn", "lmo_Latn", "szl_Latn", "oci_Latn",
    "fon_Latn", "min_Latn", "wol_Latn", "lij_Latn", "ajp_Arab", "snd_Arab", "dik_Latn",
    "ary_Arab", "lao_Laoo", "ars_Arab", "bjn_Latn", "shn_Mymr", "crh_Latn", "aeb_Arab",
    "ace_Latn", "ckb_Arab", "dyu_Latn", "ltg_Latn", "kmr_Latn", "ban_Latn", "mai_Deva",
    "fuv_Latn", "kac_Latn", "taq_Latn", "bam_Latn", "sat_Olck", "tzm_Tfng", "bug_Latn",
    "dzo_Tibt", "kas_Deva", "fas_Arab", "nus_Latn", "knc_Latn", "mag_Deva", "taq_Tfng",
    "kas_Arab", "knc_Arab", "bjn_Arab", "ace_Arab", "kea_Latn", "awa_Deva", "acm_Arab",
    "bod_Tibt", "sot_Latn", "ydd_Hebr", "azb_Arab",
)


def walar_label_code(label: str) -> str | None:
    """The FLORES-200 code of the language WALAR's tables name for an identifier label
    (`__label__` prefix optional), or None: WALAR gives that label no language."""
    raw = label.removeprefix("__label__")
    if raw in WALAR_GLOTLID_ALIASES:
        return WALAR_GLOTLID_ALIASES[raw]
    if raw in WALAR_GLOTLID_NAMED:
        return raw
    return WALAR_LID176_LABELS.get(raw)

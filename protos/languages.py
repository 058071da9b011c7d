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

import pytest

from reward.languages import (
    UnknownLanguageError,
    covers,
    languages,
    parse_label,
    resolve,
)


def test_flores200_table_is_complete_and_unique():
    codes = [lang.code for lang in languages()]
    assert len(codes) == 204 == len(set(codes))


@pytest.mark.parametrize("text", ["swh_Latn", "sw", "swh", "swa", "Swahili", "swahili"])
def test_codes_iso_and_names_resolve_to_one_language(text):
    assert resolve(text).code == "swh_Latn"


@pytest.mark.parametrize("a,b", [
    ("zho_Hans", "cmn_Hani"), ("arb_Arab", "ara"), ("swh_Latn", "swa"), ("npi_Deva", "nep"),
    ("pes_Arab", "fas"), ("zsm_Latn", "msa"), ("ekk_Latn", "est"), ("lvs_Latn", "lav"),
    ("uzn_Latn", "uzb"), ("azj_Latn", "aze"), ("khk_Cyrl", "mon"), ("gaz_Latn", "orm"),
    ("pbt_Arab", "pus"),
])
def test_macrolanguage_equivalents_match_both_ways(a, b):
    target = resolve(a)
    assert parse_label(f"__label__{b}").matches(target)  # GlotLID/lid.176 label spelled b
    assert parse_label(f"__label__{target.iso3}_{target.script}").matches(resolve(b))


def test_lid176_and_glotlid_labels():
    assert parse_label("__label__zh").matches(resolve("zho_Hans"))
    assert parse_label("__label__eng_Latn").display == "eng_Latn"
    assert parse_label("__label__en").display == "eng_Latn"
    assert not parse_label("__label__fra_Latn").matches(resolve("eng_Latn"))
    assert not parse_label("__label__arb_Latn").matches(resolve("arb_Arab"))  # script differs
    assert parse_label("__label__sh").display == "sh"  # not a FLORES language: kept raw


def test_unknown_language_is_named():
    with pytest.raises(UnknownLanguageError, match="'Klingon'"):
        resolve("Klingon")
    with pytest.raises(UnknownLanguageError):
        resolve("")


def test_coverage_of_lid176():
    labels = [parse_label(f"__label__{c}") for c in ("en", "fr", "sw", "zh")]
    assert covers(labels, resolve("swh_Latn"))
    assert not covers(labels, resolve("wol_Latn"))

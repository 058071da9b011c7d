import pytest

from protos.languages import WALAR_MASKLID_LABELS, WALAR_TRAINING_LANGS, walar_label_code
from reward.languages import LabelMatcher, UnknownLanguageError, languages, parse_label, resolve


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
    labels = [f"__label__{c}" for c in ("en", "fr", "sw", "zh")]
    for mode in ("walar", "group"):
        assert LabelMatcher(mode).can_label(labels, resolve("swh_Latn"))
        assert not LabelMatcher(mode).can_label(labels, resolve("wol_Latn"))


# WALAR's tables, read from its code (serve_rm.py lang_dict, utils.py long2lang), as the
# language each label's name stands for.
@pytest.mark.parametrize("label,code", [
    ("__label__fr", "fra_Latn"), ("__label__sw", "swh_Latn"), ("__label__ne", "npi_Deva"),
    ("__label__fa", "pes_Arab"), ("__label__et", "ekk_Latn"), ("__label__tl", "tgl_Latn"),
    ("__label__arb_Arab", "arb_Arab"), ("__label__uzn_Latn", "uzn_Latn"),
    ("__label__fas_Arab", "pes_Arab"), ("__label__fil_Latn", "tgl_Latn"),
    ("__label__pbt_Arab", "pbt_Arab"), ("__label__pus_Arab", "pbt_Arab"),
    ("__label__bur_Mymr", "mya_Mymr"), ("__label__lvs_Latn", "lvs_Latn"),
])
def test_walar_label_tables(label, code):
    assert walar_label_code(label) == code
    assert LabelMatcher("walar").matches(label, resolve(code))
    assert LabelMatcher("walar").display(label) == code


def test_walar_tables_name_no_language_for_labels_they_lack():
    m = LabelMatcher("walar")
    for label in ("__label__hin_Latn", "__label__ary_Arab", "__label__swa_Latn", "__label__sh"):
        assert walar_label_code(label) is None
    assert not m.matches("__label__hin_Latn", resolve("hin_Deva"))  # romanised Hindi
    assert not m.matches("__label__swa_Latn", resolve("swh_Latn"))  # not in WALAR's tables...
    assert LabelMatcher("group").matches("__label__swa_Latn", resolve("swh_Latn"))  # ...grouped
    assert m.display("__label__ary_Arab") == "ary_Arab"


def test_walar_accidents_are_fixed():
    m = LabelMatcher("walar")
    # WALAR names GlotLID's tgl_Latn "Tagalog", its prompts say "Filipino": always penalised.
    assert m.matches("__label__tgl_Latn", resolve("tgl_Latn"))
    assert m.matches("__label__fil_Latn", resolve("tgl_Latn"))
    # Estonian: WALAR's lang2long inversion keeps est_Latn, MaskLID only knows ekk_Latn.
    assert m.matches("__label__ekk_Latn", resolve("ekk_Latn"))
    assert m.matches("__label__est_Latn", resolve("ekk_Latn"))
    assert "ekk_Latn" in WALAR_MASKLID_LABELS and "est_Latn" not in WALAR_MASKLID_LABELS
    # Traditional Chinese had no label at all; Chinese labels name both scripts.
    for label in ("__label__cmn_Hani", "__label__zh"):
        assert m.matches(label, resolve("zho_Hans")) and m.matches(label, resolve("zho_Hant"))
    # lid.176: `ckb` is Sorani (no entry in WALAR), `ku` Kurmanji (WALAR: "Sorani Kurdish").
    assert m.matches("__label__ckb", resolve("ckb_Arab"))
    assert m.matches("__label__ku", resolve("kmr_Latn"))
    assert not m.matches("__label__ku", resolve("ckb_Arab"))


def test_every_walar_training_target_has_a_glotlid_label_for_the_gate_and_masklid():
    m = LabelMatcher("walar")
    for code in WALAR_TRAINING_LANGS:
        assert any(m.matches(label, resolve(code)) for label in WALAR_MASKLID_LABELS), code


def test_unknown_label_match_mode_is_refused():
    with pytest.raises(ValueError, match="'exact'"):
        LabelMatcher("exact")

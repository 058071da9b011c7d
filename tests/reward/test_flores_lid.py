"""The bundled flores26 identifier (reward/flores_lid.py): what the embedded default's gate
says about FLORES devtest, that the committed file is what its builder makes, and that the
service takes it by name."""

from __future__ import annotations

from reward import flores_lid
from reward.lid import FastTextLID
from reward.scorer import RawItem
from reward.server import build_scorer, parse_args


def _devtest(flores, n: int) -> dict[str, list[str]]:
    return {p.stem: p.read_text(encoding="utf-8").splitlines()[:n]
            for p in sorted((flores / "devtest").glob("*_*.txt"))}


def test_names_resolve_to_files():
    assert flores_lid.resolve("flores26") == str(flores_lid.BUNDLED)
    assert flores_lid.BUNDLED.is_file()
    assert flores_lid.resolve(None) == flores_lid.resolve("lid176") == flores_lid.lid176_path()
    assert flores_lid.resolve("/models/glotlid/model_v3.bin") == "/models/glotlid/model_v3.bin"


def test_bundled_identifier_labels_flores_devtest(flores):
    """Devtest is text it never saw; every language is labelled right >= 97% of the time
    (lid.176 on the same Yoruba lines: under 10%, docs/reward.md)."""
    lid = FastTextLID(flores_lid.resolve("flores26"))
    assert lid.style == "glotlid" and lid.quantized and lid.output_matrix is not None
    devtest = _devtest(flores, 200)
    assert len(lid.raw_labels) == len(devtest) == 26
    for code, lines in devtest.items():
        want = "__label__" + flores_lid.GLOTLID_LABEL.get(code, code)
        share = sum(label == want for label, _ in lid.predict(lines)) / len(lines)
        assert share >= 0.97, (code, share)


def test_rebuilding_gives_the_committed_file(tmp_path, flores):
    """The committed .ftz is what `python -m reward.flores_lid` builds from FLORES dev."""
    built = FastTextLID(str(flores_lid.build(flores / "dev", tmp_path / "lid.ftz")))
    bundled = FastTextLID(str(flores_lid.BUNDLED))
    lines = [line for lines in _devtest(flores, 20).values() for line in lines]
    got, want = built.predict(lines), bundled.predict(lines)
    assert [label for label, _ in got] == [label for label, _ in want]
    assert max(abs(a - b) for (_, a), (_, b) in zip(got, want)) < 1e-4


def test_service_gate_with_flores26(flores):
    """`--lid_model flores26`: GlotLID labels, so WALAR's FLORES-200 MaskLID label set
    applies; Yoruba passes the top-1 gate, an English copy of the source gets the penalty."""
    scorer = build_scorer(parse_args(["--device=cpu", "--lid_model=flores26", "--qe=none",
                                      "--no_align", "--penalty=-3"]))
    assert {"yor_Latn", "npi_Deva", "swh_Latn", "hau_Latn"} <= scorer.gated_languages()
    assert len(scorer.masklid.labels) == 26
    devtest = _devtest(flores, 5)
    items = [RawItem(s, h, "eng_Latn", "yor_Latn")
             for s, h in zip(devtest["eng_Latn"], devtest["yor_Latn"])]
    items += [RawItem(s, s, "eng_Latn", "yor_Latn") for s in devtest["eng_Latn"]]
    scores = scorer.score(items)
    assert [s.language_ok for s in scores] == [True] * 5 + [False] * 5
    assert [s.reward for s in scores[5:]] == [-3.0] * 5
    assert all(s.detected_lang == "yor_Latn" for s in scores[:5])

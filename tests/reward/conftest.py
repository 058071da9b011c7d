"""Fixtures for the reward-service tests (run in the reward env:
`.venv/reward/bin/python -m pytest tests/reward`). Every model is built here, offline."""

from __future__ import annotations

import os
import pathlib
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
for path in (str(HERE), str(REPO)):
    if path not in sys.path:
        sys.path.insert(0, path)

import pytest  # noqa: E402

import tiny_models  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if not tiny_models.FLORES.is_dir():
        skip = pytest.mark.skip(reason=f"FLORES data not found at {tiny_models.FLORES}")
        for item in items:
            if "flores" in item.fixturenames:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def flores() -> pathlib.Path:
    return tiny_models.FLORES


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> pathlib.Path:
    return tmp_path_factory.mktemp("tiny_models")


@pytest.fixture(scope="session")
def glotlid_path(models_dir, flores) -> str:
    return str(tiny_models.train_glotlid_style(models_dir))


@pytest.fixture(scope="session")
def glotlid(glotlid_path):
    from reward.lid import FastTextLID

    return FastTextLID(glotlid_path)


@pytest.fixture(scope="session")
def lid176():
    from reward.lid import FastTextLID
    from reward.flores_lid import lid176_path

    return FastTextLID(lid176_path())


@pytest.fixture(scope="session")
def minilm_path() -> str:
    from reward.qe import default_embed_model

    return default_embed_model()


@pytest.fixture(scope="session")
def aligner(minilm_path):
    from reward.align import Aligner

    return Aligner(minilm_path, device="cpu", batch_size=8)


@pytest.fixture(scope="session")
def segmenter():
    """WALAR's segmentation (the default) without a HanLP model: jieba for Chinese."""
    from reward.segment import Segmenter

    return Segmenter("walar")


@pytest.fixture(scope="session")
def icu_segmenter():
    from reward.segment import Segmenter

    return Segmenter("icu")


@pytest.fixture(scope="session")
def hanlp_dir(models_dir) -> str:
    return tiny_models.build_hanlp_tokenizer(models_dir)


@pytest.fixture(scope="session")
def embed_qe(minilm_path):
    from reward.qe import EmbedQE

    return EmbedQE(minilm_path, device="cpu")


@pytest.fixture(scope="session")
def metricx_dirs(models_dir, flores) -> tuple[str, str]:
    return tiny_models.build_metricx(models_dir)


@pytest.fixture(scope="session")
def xcomet_dir(models_dir, flores) -> str:
    return tiny_models.build_xcomet(models_dir)


EMBEDDED_TOKEN = "emb3dded"


@pytest.fixture(scope="session")
def embedded_server(tmp_path_factory):
    """The real server on the embedded default (lid.176 gate, MaskLID, MiniLM QE and
    alignment) with its HTTP endpoints, started as the trainer starts it (token in a 0600
    file). Yields (Service, HTTP base URL); the test modules that share it each leave it
    as they found it."""
    from walar_jax.launch import Service  # stdlib only: the launcher the trainer uses

    d = tmp_path_factory.mktemp("embedded")
    http_file = d / "http_port"
    svc = Service("reward", [sys.executable, "-m", "reward.server", "--device", "cpu",
                             "--http_port", "0", "--http_port_file", str(http_file)],
                  log_path=str(d / "log"), env={"HF_HUB_OFFLINE": "1"},
                  token=EMBEDDED_TOKEN).start(timeout_s=300)
    yield svc, f"http://127.0.0.1:{http_file.read_text().strip()}"
    svc.stop()

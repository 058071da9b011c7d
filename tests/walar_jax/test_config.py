import json

import pytest

from walar_jax import config as cfglib


def test_overrides_apply_and_are_typed():
    c = cfglib.load("configs/tiny.py", {"total_steps": 7, "model.dtype": "bfloat16",
                                        "mesh.tensor": 2})
    assert c.total_steps == 7 and c.model.dtype == "bfloat16" and c.mesh.tensor == 2


def test_unknown_key_fails():
    with pytest.raises(SystemExit, match="no_such_key"):
        cfglib.load("configs/tiny.py", {"model.no_such_key": 1})


def test_wrong_type_fails():
    with pytest.raises(SystemExit):
        cfglib.load("configs/tiny.py", {"total_steps": "many"})


def test_resolved_config_saved(tmp_path):
    c = cfglib.load("configs/qwen3_8b.py", {"seed": 3})
    path = cfglib.save(c, str(tmp_path))
    saved = json.loads(open(path).read())
    assert saved["seed"] == 3 and saved["model"]["path"] == "Qwen/Qwen3-8B"

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


@pytest.mark.parametrize("name,path,template", [
    ("qwen3_8b", "Qwen/Qwen3-8B", "walar_qwen"),
    ("llamax3_8b", "LLaMAX/LLaMAX3-8B-Alpaca", "walar_llamax"),
    ("translategemma_4b", "google/translategemma-4b-it", "walar_gemma"),
])
def test_paper_configs(name, path, template):
    c = cfglib.load(f"configs/{name}.py")
    assert c.model.path == path and c.data.template == template
    assert (c.rollout.n, c.rollout_batch_prompts, c.train_batch_size) == (8, 128, 1024)
    assert (c.optim.lr, c.grpo.kl_coef, c.grpo.kl_estimator, c.grpo.clip_low) == (5e-7, 0.01, "k3", 0.2)
    assert (c.rollout.max_tokens, c.rollout.temperature, c.reward.server.alpha) == (512, 1.0, 20.0)
    assert c.reward.server.qe == "metricx" and c.reward.server.align_layer == 24

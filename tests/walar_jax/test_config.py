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
    with pytest.raises(SystemExit, match=r"--config.total_steps=many: invalid literal for int"):
        cfglib.load("configs/tiny.py", {"total_steps": "many"})


def test_tokens_are_redacted_from_the_saved_config_and_the_log(tmp_path, caplog):
    c = cfglib.load("configs/tiny.py", {"rollout.token": "s3cret-r", "reward.token": "s3cret-w"})
    with caplog.at_level("INFO"):
        path = cfglib.save(c, str(tmp_path))
    text = open(path).read()
    assert "s3cret" not in text and "s3cret" not in caplog.text
    saved = json.loads(text)
    assert saved["rollout"]["token"] == saved["reward"]["token"] == "<redacted>"
    assert c.rollout.token == "s3cret-r"  # the run itself keeps it


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


def test_tokens_of_given_services_come_from_the_environment_or_a_private_file(
        tmp_path, monkeypatch):
    from walar_jax.services import secret

    monkeypatch.setenv("MY_RM_TOKEN", "from-env")
    assert secret("env:MY_RM_TOKEN") == "from-env" and secret("plain") == "plain"
    assert secret("") is None
    f = tmp_path / "tok"
    f.write_text("from-file\n")
    f.chmod(0o600)
    assert secret(f"file:{f}") == "from-file"
    f.chmod(0o644)
    with pytest.raises(ValueError, match="readable by you alone"):
        secret(f"file:{f}")
    with pytest.raises(ValueError, match=r"\$UNSET_TOKEN_VAR is not set"):
        secret("env:UNSET_TOKEN_VAR")


def test_embedded_default_reward_flags_are_the_win_rate_bench_ones():
    """bench/reward_win_rate.py (reward env, no ml_collections) restates configs/tiny.py's
    reward flags; the two must stay the same set."""
    import ast
    import pathlib

    from walar_jax.services import service_flags

    bench = pathlib.Path(__file__).resolve().parents[2] / "bench" / "reward_win_rate.py"
    tree = ast.parse(bench.read_text())
    value = next(node.value for node in tree.body if isinstance(node, ast.Assign)
                 and getattr(node.targets[0], "id", "") == "EMBEDDED_DEFAULT")
    tiny = cfglib.load("configs/tiny.py")
    assert sorted(ast.literal_eval(value)) == sorted(service_flags(tiny.reward.server))
    assert tiny.reward.server.lid_model == "flores26"


@pytest.mark.parametrize("lid_model,ok", [("flores26", True), ("lid176", True),
                                          ("models/none/model_v3.bin", False)])
def test_bundled_identifier_names_need_no_file(lid_model, ok):
    from walar_jax.rl import plan

    c = cfglib.load("configs/tiny.py")
    c.reward.server.lid_model = lid_model
    if ok:
        plan._check_paths(c)
    else:
        with pytest.raises(plan.ConfigError, match="does not exist"):
            plan._check_paths(c)

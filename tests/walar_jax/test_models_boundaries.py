"""The model registry, config reader and HF tables import without JAX: the rollout and
reward environments (which have none) read checkpoints' architectures and tensor names
through them."""

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
# Reads a config.json, maps HF names both ways for listed and stacked layers, and checks
# that nothing imported JAX or Flax.
SNIPPET = """
import json, sys, tempfile, os
sys.modules["jax"] = None  # any `import jax` now raises
sys.modules["flax"] = None
from walar_jax import models
from walar_jax.models import gemma3, hf_table, llama3, qwen3, registry
from walar_jax.models.config import ModelConfig
from walar_jax.models.tiny import tiny_config
d = tempfile.mkdtemp()
with open(os.path.join(d, "config.json"), "w") as f:
    json.dump(qwen3.config_to_hf(qwen3.qwen3_8b()), f)
cfg = models.read_config(d)
assert cfg.replace(hf_extra=()) == qwen3.qwen3_8b(), cfg
assert models.family("gemma3_text") is gemma3 and registry.named_config("llama3_8b").n_layers == 32
slot = qwen3.HF_TABLE.from_hf("model.layers.7.mlp.up_proj.weight", stacked=True)
assert (slot.path, slot.layer) == ("layers.mlp.up_proj", 7), slot
names = [n for n, _ in llama3.HF_TABLE.to_hf("layers.attn.q_proj", n_layers=3)]
assert names[2] == "model.layers.2.self_attn.q_proj.weight", names
try:
    models.from_pretrained
except ImportError:
    pass
else:
    raise AssertionError("from_pretrained needs JAX; it should not have imported")
assert isinstance(tiny_config(), ModelConfig)
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("jax", "flax", "jaxlib", "optax")
             and sys.modules[m] is not None)
assert not bad, bad
print("ok")
"""


def _run(python: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([python, "-c", SNIPPET], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


def test_tables_and_config_reader_import_without_jax():
    out = _run(sys.executable)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("role", ["rollout", "reward"])
def test_same_in_the_environments_without_jax(role):
    venvs = os.environ.get("WALAR_VENVS", str(REPO / ".venv"))
    python = pathlib.Path(venvs) / role / "bin" / "python"
    if not python.exists():
        pytest.skip(f"no {role} environment at {python}")
    out = _run(str(python))
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_memory_fraction_is_applied_before_jax_starts_and_refused_after():
    snippet = """
import os
from walar_jax import sharding
sharding.set_memory_fraction(0.45)
assert os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.45"
import jax
jax.devices()  # the backend starts and reads the variable
sharding.set_memory_fraction(0.45)  # the same value again is fine
for bad, err in ((0.3, RuntimeError), (1.5, ValueError)):
    try:
        sharding.set_memory_fraction(bad)
    except err as e:
        print(type(e).__name__, e)
    else:
        raise AssertionError(bad)
print("ok")
"""
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_PYTHON_CLIENT_MEM_FRACTION", None)
    out = subprocess.run([sys.executable, "-c", snippet], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr
    assert "before JAX starts its backend" in out.stdout and "must be in (0, 1]" in out.stdout

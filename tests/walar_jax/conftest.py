"""Trainer-environment tests: 8 fake CPU devices, set before JAX is imported."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Many tests build the same tiny programs (a Trainer each): JAX's persistent compilation
# cache turns every compilation after the first into a lookup (also for the train.py
# processes the tests start, which inherit the environment).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    ".cache", "jax_test_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")


import pytest  # noqa: E402 - the environment above must come first


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """The embedded tiny Qwen3 in HF format, one per test module."""
    from walar_jax.models.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(str(tmp_path_factory.mktemp("tiny") / "model"))

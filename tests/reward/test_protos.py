import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_checked_in_stubs_match_the_proto(tmp_path):
    (tmp_path / "protos").mkdir()
    (tmp_path / "protos" / "reward.proto").write_bytes(
        (REPO / "protos" / "reward.proto").read_bytes())
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I.", "--python_out=.",
                    "--grpc_python_out=.", "protos/reward.proto"], cwd=tmp_path, check=True)
    for name in ("reward_pb2.py", "reward_pb2_grpc.py"):
        fresh = (tmp_path / "protos" / name).read_text()
        assert fresh == (REPO / "protos" / name).read_text(), (
            f"protos/{name} is stale: run scripts/gen_protos.sh")


def test_reward_package_imports_nothing_from_jax_or_walar_jax():
    code = ("import sys, reward.server, reward.scorer, reward.lid, reward.align, reward.qe, "
            "reward.segment; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('jax', 'jaxlib', 'flax', 'walar_jax')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)

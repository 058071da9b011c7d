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

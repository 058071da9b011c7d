#!/usr/bin/env bash
# Regenerates protos/reward_pb2.py and protos/reward_pb2_grpc.py from protos/reward.proto
# with the reward environment's grpcio-tools (1.62: its gencode also imports under the
# trainer environment's newer protobuf). Run from anywhere.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${REWARD_PYTHON:-$root/.venv/reward/bin/python}"
cd "$root"
"$python" -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. protos/reward.proto
echo "[gen_protos] wrote protos/reward_pb2.py protos/reward_pb2_grpc.py"

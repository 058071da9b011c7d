#!/usr/bin/env bash
# Regenerates protos/{reward,rollout}_pb2.py and *_pb2_grpc.py from protos/*.proto
# with the reward environment's grpcio-tools (1.62: its gencode also imports under the
# trainer environment's newer protobuf). Run from anywhere.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${REWARD_PYTHON:-$root/.venv/reward/bin/python}"
cd "$root"
"$python" -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. \
    protos/reward.proto protos/rollout.proto
echo "[gen_protos] wrote protos/{reward,rollout}_pb2.py protos/{reward,rollout}_pb2_grpc.py"

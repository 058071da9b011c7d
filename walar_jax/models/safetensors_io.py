"""Streaming safetensors I/O on numpy: the shared implementation in `protos.safetensors`
(one reader for the trainer and the rollout sidecar), under the names model code uses."""

from protos.safetensors import (
    HF_DTYPES,
    SafeTensorsFile,
    checkpoint_files,
    iter_checkpoint,
    write_file,
)

__all__ = ["HF_DTYPES", "SafeTensorsFile", "checkpoint_files", "iter_checkpoint", "write_file"]

"""The paper's run on Qwen3-8B (WALAR): see README for the GPUs it expects."""

from configs import common


def get_config(arg: str | None = None):
    c = common.base()
    c.model.path = "Qwen/Qwen3-8B"
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"
    c.model.remat = True
    c.mesh.update(data=1, fsdp=-1, tensor=1)  # all devices on fsdp (bench/aot_memory.py)
    # WALAR's reward: GlotLID gate, MetricX-24 QE, MaskLID + bge-m3 (layer 24) alignment.
    c.reward.server.update(qe="metricx")
    c.reward.server.qe_model = "google/metricx-24-hybrid-xl-v2p6"
    c.reward.server.qe_tokenizer = "google/mt5-xl"
    c.reward.server.lid_model = "cis-lmu/glotlid"
    c.reward.server.lid_labels = "glotlid"
    c.reward.server.align_model = "BAAI/bge-m3"
    c.reward.server.align_layer = 24
    c.data.paths = ("data/walar_train",)  # one <flores_code>.txt per language, or WALAR JSONL
    c.rollout.server.update(dtype="bfloat16", max_model_len=1024, gpu_memory_utilization=0.6)
    return c

"""Defaults shared by every run config; each config file overrides a few fields."""

import ml_collections

from walar_jax.sharding import DEFAULT_RULES


def base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    # Policy: an HF directory or hub id; "tiny" builds the embedded tiny Qwen3 on first use.
    # remat: none | nothing_saveable | dots_saveable | dots_with_no_batch_dims_saveable.
    # scan_layers: stack the layers and run them with nnx.scan (one layer's gathered
    # weights live at a time; with nothing_saveable, gradients accumulate in place).
    # attention: xla (jax.nn.dot_product_attention, any backend) | cudnn (fused flash
    # attention, NVIDIA GPUs with bf16) | dense (the reference).
    c.model = ml_collections.ConfigDict(dict(
        path="tiny", dtype="bfloat16", param_dtype="float32", remat="nothing_saveable",
        scan_layers=False, attention="xla", logprob_chunk=256,
    ))
    # Share of each accelerator's memory JAX may take (0: JAX's default, 75% on GPU);
    # applied by walar_jax.sharding.set_memory_fraction before JAX starts its backend.
    c.jax_memory_fraction = 0.0
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
    c.sharding_rules = DEFAULT_RULES
    c.distributed = ml_collections.ConfigDict(dict(
        initialize=False, coordinator_address="", num_processes=0, process_id=-1,
    ))
    # Monolingual sources -> translation tasks (see walar_jax/data).
    c.data = ml_collections.ConfigDict(dict(
        paths=("data/tiny",), input_key="text", lang_key="lang", label_key="label",
        target_langs=("fra_Latn", "deu_Latn", "spa_Latn", "swh_Latn"), targets_per_source=1,
        template="auto",  # auto: chat (Qwen3, thinking off), alpaca (LLaMAX), plain
    ))
    c.rollout = ml_collections.ConfigDict(dict(
        address="", token="",  # empty address: train.py starts rollout_server.py itself
        n=8, temperature=1.0, top_p=1.0, top_k=0, max_tokens=512, max_prompt_tokens=512,
        length_bucket=64, weight_transport="shm", timeout_s=1800.0,
        # flags of rollout_server.py when train.py starts it
        server=ml_collections.ConfigDict(dict(
            dtype="auto", max_model_len=1024, gpu_memory_utilization=0.85,
            tensor_parallel_size=1, enable_prefix_caching=True, seed=0)),
    ))
    c.reward = ml_collections.ConfigDict(dict(
        addresses=(), token="", timeout_s=600.0,  # none: train.py starts the service
        # flags of `python -m reward.server` when train.py starts it
        server=ml_collections.ConfigDict(dict(
            qe="embed", lid=True, align=True, alpha=20.0, masklid=True, device="auto")),
    ))
    c.grpo = ml_collections.ConfigDict(dict(
        scale_by_std=True,  # False: Dr.GRPO
        clip_low=0.2, clip_high=0.2, kl_coef=0.01, kl_estimator="k3", loss_agg="token_mean",
        entropy_coef=0.0, tis_cap=0.0,
    ))
    c.optim = ml_collections.ConfigDict(dict(
        lr=5e-7, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0, warmup_frac=0.03,
        min_lr_ratio=0.1, clip_norm=1.0,
    ))
    c.rollout_batch_prompts = 128   # x rollout.n samples
    c.train_batch_size = 1024       # sequences per optimizer step
    c.micro_batch_size = 8          # sequences per gradient-accumulation micro-step
    c.service_start_timeout_s = 1800.0
    c.tensorboard = True
    c.wandb_project = ""
    c.total_steps = 0          # 0: one epoch over the prompts
    c.checkpoint_every = 50
    c.keep_checkpoints = 3
    c.export_every = 0         # 0: export to HF only at the end
    c.log_every = 1
    return c


def paper(model_path: str) -> ml_collections.ConfigDict:
    """WALAR's run (the paper's hyperparameters) for one policy checkpoint."""
    c = base()
    c.model.update(path=model_path, dtype="bfloat16", param_dtype="float32",
                   remat="nothing_saveable", scan_layers=True, attention="xla")
    # On NVIDIA GPUs: --config.model.attention=cudnn (fused flash attention).
    # Per device, the update needs 17.8 GiB on 8 devices and 35.0 GiB on 4 for qwen3_8b
    # (bench/aot_memory.py, README): half of an 80 GB GPU for JAX, 40% for a vLLM engine
    # on the same device (16 GB of bf16 weights + KV cache), the rest for CUDA contexts.
    c.jax_memory_fraction = 0.5
    c.mesh.update(data=1, fsdp=-1, tensor=1)  # all devices on fsdp (bench/aot_memory.py)
    # Reward: GlotLID gate, MetricX-24 QE, MaskLID + bge-m3 (layer 24) alignment, alpha 20.
    # GlotLID is a fastText file: download cis-lmu/glotlid's model_v3.bin and point here.
    c.reward.server.update(qe="metricx", alpha=20.0, masklid=True, align=True)
    c.reward.server.qe_model = "google/metricx-24-hybrid-xl-v2p6"
    c.reward.server.qe_tokenizer = "google/mt5-xl"
    c.reward.server.lid_model = "models/glotlid/model_v3.bin"
    c.reward.server.lid_labels = "glotlid"
    c.reward.server.align_model = "BAAI/bge-m3"
    c.reward.server.align_layer = 24
    c.data.paths = ("data/walar_train",)  # one <flores_code>.txt per language, or WALAR JSONL
    c.rollout.update(n=8, temperature=1.0, max_tokens=512, max_prompt_tokens=512)
    c.rollout.server.update(dtype="bfloat16", max_model_len=1024, gpu_memory_utilization=0.4)
    c.grpo.update(scale_by_std=True, clip_low=0.2, clip_high=0.2, kl_coef=0.01,
                  kl_estimator="k3", loss_agg="token_mean")
    c.optim.update(lr=5e-7, b1=0.9, b2=0.95, warmup_frac=0.03, clip_norm=1.0)
    c.rollout_batch_prompts, c.train_batch_size, c.micro_batch_size = 128, 1024, 8
    c.total_steps = 0  # one epoch
    return c

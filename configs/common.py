"""Defaults shared by every run config; each config file overrides a few fields.

`rollout_server()` and `reward_server()` build the config sections that become the command
lines of the two services (`walar_jax.services.service_flags`), for train.py and
evaluate.py alike. Every flag a run may set has a key; a key left at None is not passed,
so the service's own default applies and is stated only there (`python rollout_server.py
--help`, `python -m reward.server --help`).
"""

import ml_collections
from ml_collections import config_dict

from protos import languages
from walar_jax.sharding import DEFAULT_RULES

# Flags of rollout_server.py that a run may set, with their types.
ROLLOUT_SERVER_FLAGS = dict(
    dtype=str, max_model_len=int, gpu_memory_utilization=float, tensor_parallel_size=int,
    enable_prefix_caching=bool, seed=int, enforce_eager=bool, max_num_seqs=int,
    kv_cache_gib=float, enable_sleep_mode=bool,
)
# Flags of `python -m reward.server` that a run may set, with their types.
REWARD_SERVER_FLAGS = dict(
    rule=str, qe=str, qe_model=str, qe_tokenizer=str, qe_batch_size=int, qe_max_length=int,
    lid=bool, lid_model=str, lid_labels=str, label_match=str,
    masklid=bool, masklid_labels=str, masklid_beta=int, masklid_alpha=int,
    masklid_min_share=float, align=bool, align_model=str, align_layer=int,
    align_batch_size=int, align_max_length=int, segment=str, hanlp_model=str, alpha=float,
    penalty=float, max_chars=int, max_batch=int, device=str, log_level=str,
)
# The paper's language identifier (the training gate, and evaluation's LCR): GlotLID is a
# fastText file: download cis-lmu/glotlid's model_v3.bin and point here.
PAPER_LID = dict(lid_model="models/glotlid/model_v3.bin", lid_labels="glotlid")


def _section(types: dict, values: dict, what: str) -> ml_collections.ConfigDict:
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise KeyError(f"{what} has no flag {unknown}; known: {sorted(types)}")
    out = ml_collections.ConfigDict({k: config_dict.placeholder(t) for k, t in types.items()})
    out.update(values)
    return out


def rollout_server(**values) -> ml_collections.ConfigDict:
    """Flags of rollout_server.py when a run starts it; None keys keep its defaults."""
    return _section(ROLLOUT_SERVER_FLAGS, values, "rollout_server.py")


def reward_server(**values) -> ml_collections.ConfigDict:
    """Flags of `python -m reward.server` when a run starts it; None keys keep its defaults."""
    return _section(REWARD_SERVER_FLAGS, values, "reward.server")


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
        # the frozen reference policy's storage dtype ("": param_dtype); bfloat16 halves
        # its memory next to fp32 master weights (WALAR's DeepSpeed reference is bf16)
        ref_dtype="",
    ))
    # Share of each accelerator's memory JAX may take (0: JAX's default, 75% on GPU);
    # applied by walar_jax.sharding.set_memory_fraction before JAX starts its backend.
    c.jax_memory_fraction = 0.0
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
    # Which accelerators each process of one host uses (walar_jax/rl/plan.py checks it).
    # A device list is comma-separated indices of the GPUs train.py sees (nvidia-smi's
    # numbers, or positions in its CUDA_VISIBLE_DEVICES). trainer: "all" or a list (the
    # mesh spans those; JAX opens no other GPU). rollout / reward: "" (the GPUs train.py
    # sees), "none" (no GPU) or a list, passed to the service train.py starts as its
    # CUDA_VISIBLE_DEVICES. colocate: trainer and sidecar share devices: the sidecar
    # (rollout.server.enable_sleep_mode) sleeps at `sleep_level` during every update
    # (1: weights to host memory, KV cache dropped; 2: both dropped, the sync restores
    # them) and wakes for the weight sync; it needs rollout.max_staleness = 0.
    c.placement = ml_collections.ConfigDict(dict(
        trainer="all", rollout="", reward="", colocate=False, sleep_level=1,
    ))
    c.sharding_rules = DEFAULT_RULES
    c.distributed = ml_collections.ConfigDict(dict(
        initialize=False, coordinator_address="", num_processes=0, process_id=-1,
    ))
    # Monolingual sources -> translation tasks (see walar_jax/data) -> prompts (prompts/).
    c.data = ml_collections.ConfigDict(dict(
        paths=("data/tiny",), input_key="text", lang_key="lang", label_key="label",
        input_format="auto",  # JSONL rows holding WALAR's finished prompts are parsed
        target_langs=("fra_Latn", "deu_Latn", "spa_Latn", "swh_Latn"), targets_per_source=1,
        # auto: chat (Qwen3, thinking off), alpaca (LLaMAX), translategemma, plain;
        # walar: WALAR's prompts for the family (walar_qwen, walar_llamax, walar_gemma)
        template="auto",
        extract="auto",  # scored text: whole (WALAR) | cut at a blank line; auto: by template
        bos="auto",  # auto: BOS where the tokenizer's own encoding adds it; never: none
    ))
    c.rollout = ml_collections.ConfigDict(dict(
        # none: each train.py process starts its own rollout_server.py (with a fresh
        # token); else an equal share per process (host), one or more sidecars each.
        # A given service's token: "env:NAME" or "file:PATH" keep it off command lines.
        addresses=(), token="",
        n=8, temperature=1.0, top_p=1.0, top_k=0, max_tokens=512, max_prompt_tokens=512,
        # WALAR (OpenRLHF): at least one token, EOS appended to truncated responses (and
        # trained on), prompts over max_prompt_tokens cut on the right (kept from the
        # start); "left" keeps the end of the prompt (its answer cue) instead.
        min_tokens=1, eos_on_truncation=True, prompt_truncation="right",
        # one deadline per call over all its retries: Generate, UpdateWeights
        length_bucket=64, weight_transport="shm", timeout_s=1800.0, update_timeout_s=600.0,
        # shm to a sidecar started with --delta_sync: send only the elements whose bits
        # changed since the last sync, or a full update past this share of all elements
        delta_sync=False, delta_max_fraction=0.05,
        # 0: generate, score, update, sync in turn (WALAR). s > 0: a background thread
        # makes the next rollouts while the trainer updates, at most s weight versions
        # behind (see grpo.is_correction for the off-policy correction).
        max_staleness=0,
        # > 0: Generate calls of this many prompts, each chunk scored while the rest
        # still generates; 0: one Generate call, then one Score call
        stream_chunk_prompts=0,
        server=rollout_server(),  # flags of rollout_server.py when train.py starts it
    ))
    c.reward = ml_collections.ConfigDict(dict(
        addresses=(), token="", timeout_s=600.0,  # none: train.py starts the service
        # Targets whose language the service's identifier cannot name get no gate (any
        # text passes it, "1234567890 ..." included): train.py refuses them at start-up
        # unless this is True; then every step that scores one logs a warning.
        allow_ungated=False,
        server=reward_server(),  # flags of `python -m reward.server` when train.py starts it
    ))
    c.grpo = ml_collections.ConfigDict(dict(
        scale_by_std=True,  # False: Dr.GRPO
        clip_low=0.2, clip_high=0.2, kl_coef=0.01, kl_estimator="k3",
        kl_clamp=0.0,  # > 0 bounds log(ref/pi) before k3's exp (verl: 20); WALAR: none
        # WALAR (OpenRLHF): token mean within each micro-batch of 16 sequences, averaged
        # over micro-batches; token_mean / seq_mean_token_mean are the alternatives.
        loss_agg="microbatch_token_mean", loss_agg_group=16,
        entropy_coef=0.0,
        # the sampler's log-probs are the behaviour policy: "tis" weights each token by
        # min(pi_old / pi_sampler, tis_cap); "mask" drops sequences whose length-normalised
        # ratio leaves is_band; "none" (WALAR) trusts old = sampler.
        is_correction="none", tis_cap=2.0, is_band=(0.5, 2.0),
    ))
    c.optim = ml_collections.ConfigDict(dict(
        lr=5e-7, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0, warmup_frac=0.03,
        min_lr_ratio=0.1, clip_norm=1.0,
    ))
    c.rollout_batch_prompts = 128   # x rollout.n samples
    c.train_batch_size = 1024       # sequences per optimizer step
    c.micro_batch_size = 8          # sequences per gradient-accumulation micro-step
    c.service_start_timeout_s = 1800.0
    # Services train.py started are restarted when they die or stop answering (at most
    # max_restarts times each) and the interrupted step is redone; services given by
    # address are waited for (wait_s), never restarted.
    c.supervision = ml_collections.ConfigDict(dict(
        max_restarts=3, health_timeout_s=30.0, wait_s=300.0))
    c.tensorboard = True
    c.wandb_project = ""
    c.total_steps = 0          # 0: one epoch over the prompts
    c.checkpoint_every = 50
    c.keep_checkpoints = 3
    c.export_every = 0         # 0: export to HF only at the end
    return c


def paper(model_path: str) -> ml_collections.ConfigDict:
    """WALAR's run (the paper's hyperparameters) for one policy checkpoint."""
    c = base()
    c.model.update(path=model_path, dtype="bfloat16", param_dtype="float32",
                   remat="nothing_saveable", scan_layers=True, attention="xla",
                   ref_dtype="bfloat16")  # as WALAR's reference model (--bf16, ZeRO-3)
    # On NVIDIA GPUs: --config.model.attention=cudnn (fused flash attention).
    # WALAR's layout (README "Placement"): trainer and sidecar (tensor-parallel) share
    # GPUs 0-3 of 80 GB, the sidecar asleep during each update; the reward service
    # (MetricX-24 XXL + bge-m3, about 28 GB in bf16) on GPU 4.
    # JAX reserves its share at start-up and keeps it, so both shares must fit with the
    # engine awake. qwen3_8b on 4 devices: 35.0 GiB for the update (bench/aot_memory.py)
    # + 7.6 GiB of fp32 reference policy = 42.6 GiB of JAX's 44.7 (0.6 x 80 GB); vLLM
    # 0.3 (22 GiB: a quarter of the bf16 weights, the rest KV cache); 10% for CUDA
    # contexts and NCCL.
    c.jax_memory_fraction = 0.6
    c.placement.update(trainer="0,1,2,3", rollout="0,1,2,3", reward="4", colocate=True,
                       sleep_level=1)
    c.mesh.update(data=1, fsdp=-1, tensor=1)  # all devices on fsdp (bench/aot_memory.py)
    # Reward: WALAR's published rule (scripts/serve_rm.sh): GlotLID top-1 gate, MetricX-24
    # hybrid XXL (bf16) QE on 512 tokens, MaskLID over the 200 FLORES-200 labels picking
    # the words bge-m3 (layer 24) aligns, alpha 20, HanLP for Chinese (docs/reward.md).
    # GlotLID is a fastText file: download cis-lmu/glotlid's model_v3.bin and point here.
    c.reward.server.update(
        rule="walar", qe="metricx", alpha=20.0, masklid=True, align=True, **PAPER_LID,
        qe_model="google/metricx-24-hybrid-xxl-v2p6-bfloat16", qe_tokenizer="google/mt5-xl",
        qe_max_length=512, masklid_labels="flores200", align_model="BAAI/bge-m3",
        align_layer=24,
        align_max_length=8192,  # bge-m3's limit, as WALAR (the tokenizer's model_max_length)
        hanlp_model="COARSE_ELECTRA_SMALL_ZH")  # HanLP's coarse_electra_small_20220616
    # One <flores_code>.txt per language, or WALAR's JSONL (finished prompts in a field
    # named "input_key", parsed back into text and direction). Targets: WALAR's 45.
    c.data.update(paths=("data/walar_train",), input_key="input_key", extract="whole",
                  target_langs=languages.WALAR_TRAINING_LANGS)
    c.rollout.update(n=8, temperature=1.0, max_tokens=512, max_prompt_tokens=512)
    c.rollout.server.update(dtype="bfloat16", max_model_len=1024, gpu_memory_utilization=0.3,
                            tensor_parallel_size=4, enable_sleep_mode=True)
    c.grpo.update(scale_by_std=True, clip_low=0.2, clip_high=0.2, kl_coef=0.01,
                  kl_estimator="k3", kl_clamp=0.0, loss_agg="microbatch_token_mean",
                  loss_agg_group=16)
    c.rollout.update(min_tokens=1, eos_on_truncation=True, prompt_truncation="right")
    c.optim.update(lr=5e-7, b1=0.9, b2=0.95, warmup_frac=0.03, clip_norm=1.0)
    c.rollout_batch_prompts, c.train_batch_size, c.micro_batch_size = 128, 1024, 8
    c.total_steps = 0  # one epoch
    return c

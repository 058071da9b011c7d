"""FLORES-200 many-to-many evaluation: translations through the rollout sidecar,
sacrebleu chrF++/BLEU/spBLEU, LCR and reference-mode xCOMET/MetricX through the reward
service, tables, figures, run comparison and an optional LLM judge (see docs/evaluate.md).
The run is driven by an eval config (configs/eval.py)."""

from walar_jax.evaluation.run import evaluate

__all__ = ["evaluate"]

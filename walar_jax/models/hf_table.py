"""Declarative HF <-> JAX weight tables, used both ways.

A table row names an HF tensor (with `{i}` for the layer index), the JAX parameter
path, and how the array changes shape. The same rows load checkpoints, export them and
name tensors for the rollout sidecar, for a list of layers (`layers.{i}.attn.q_proj`)
and for stacked, scanned layers alike (`layers.attn.q_proj`, layer i at index i of its
leading axis). Pure Python and numpy: the rollout and reward environments import it.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable

import numpy as np


@dataclasses.dataclass(frozen=True)
class Rule:
    hf: str            # e.g. "model.layers.{i}.self_attn.q_proj.weight"
    jax: str           # e.g. "layers.{i}.attn.q_proj"
    # "copy": same layout; "linear": HF [out, in] <-> JAX [*in_dims, *out_dims], where the
    # first `in_dims` axes of the JAX array are the HF input features.
    kind: str = "copy"
    in_dims: int = 1

    def to_jax(self, hf: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        if self.kind == "copy":
            return hf.reshape(shape)
        return hf.T.reshape(shape)

    def hf_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if self.kind == "copy":
            return tuple(shape)
        return (math.prod(shape[self.in_dims :]), math.prod(shape[: self.in_dims]))

    def to_hf(self, x):
        """The JAX layout -> HF's, on a NumPy or a JAX array (hf_io's exporter runs it
        inside jit, whose output is laid out contiguously)."""
        if self.kind == "copy":
            return x
        n_in = math.prod(x.shape[: self.in_dims])
        return x.reshape(n_in, -1).T


def _pattern(template: str) -> re.Pattern:
    return re.compile("^" + re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)") + "$")


LAYER = "layers.{i}."  # where a JAX path names its layer; stacked models drop the index


@dataclasses.dataclass(frozen=True)
class Slot:
    """Where one HF tensor lives in the JAX model: a parameter path and, when the layers
    are stacked (scanned), the index on the parameter's leading `layers` axis."""

    path: str
    layer: int | None
    rule: Rule


class Table:
    def __init__(self, rules: Iterable[Rule]):
        self.rules = tuple(rules)
        self._hf = [(_pattern(r.hf), r) for r in self.rules]
        self._jax = [(_pattern(r.jax), r) for r in self.rules]
        self._stacked = [(_pattern(r.jax.replace(LAYER, "layers.")), r)
                         for r in self.rules if LAYER in r.jax]

    def from_hf(self, name: str, *, stacked: bool = False) -> Slot | None:
        """The JAX slot of an HF tensor name, or None if the table has no row for it."""
        for pat, rule in self._hf:
            m = pat.match(name)
            if not m:
                continue
            if stacked and LAYER in rule.jax:
                return Slot(rule.jax.replace(LAYER, "layers."), int(m["i"]), rule)
            return Slot(rule.jax.format(**m.groupdict()), None, rule)
        return None

    def to_hf(self, path: str, *, n_layers: int | None = None) -> list[tuple[str, Slot]]:
        """HF names of one JAX parameter: one name, or (a stacked parameter of a model
        with `n_layers` scanned layers) one per layer, in layer order."""
        if n_layers is not None:
            for pat, rule in self._stacked:
                if pat.match(path):
                    return [(rule.hf.format(i=i), Slot(path, i, rule)) for i in range(n_layers)]
        for pat, rule in self._jax:
            m = pat.match(path)
            if m:
                return [(rule.hf.format(**m.groupdict()), Slot(path, None, rule))]
        raise KeyError(f"no HF name for parameter {path!r}")


def projection_rules(prefix: str = "model.") -> list[Rule]:
    """Embedding, attention and gated-MLP projections and the final norm, which every
    family names the same way under `prefix` (norms inside blocks differ)."""
    L = prefix + "layers.{i}."
    return [
        Rule(prefix + "embed_tokens.weight", "embed"),
        Rule(L + "self_attn.q_proj.weight", "layers.{i}.attn.q_proj", "linear", 1),
        Rule(L + "self_attn.k_proj.weight", "layers.{i}.attn.k_proj", "linear", 1),
        Rule(L + "self_attn.v_proj.weight", "layers.{i}.attn.v_proj", "linear", 1),
        Rule(L + "self_attn.o_proj.weight", "layers.{i}.attn.o_proj", "linear", 2),
        Rule(L + "mlp.gate_proj.weight", "layers.{i}.mlp.gate_proj", "linear", 1),
        Rule(L + "mlp.up_proj.weight", "layers.{i}.mlp.up_proj", "linear", 1),
        Rule(L + "mlp.down_proj.weight", "layers.{i}.mlp.down_proj", "linear", 1),
        Rule(prefix + "norm.weight", "final_norm.scale"),
    ]


def llama_norm_rules(prefix: str = "model.", qk_norm: bool = False) -> list[Rule]:
    L = prefix + "layers.{i}."
    rules = [
        Rule(L + "input_layernorm.weight", "layers.{i}.pre_attn_norm.scale"),
        Rule(L + "post_attention_layernorm.weight", "layers.{i}.pre_mlp_norm.scale"),
    ]
    if qk_norm:
        rules += [Rule(L + "self_attn.q_norm.weight", "layers.{i}.attn.q_norm.scale"),
                  Rule(L + "self_attn.k_norm.weight", "layers.{i}.attn.k_norm.scale")]
    return rules

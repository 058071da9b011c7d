"""Typed gRPC clients of the two sidecar services (no torch and no JAX on this side)."""

from walar_jax.clients.common import (
    AuthenticationError,
    Deadline,
    DeadlineExceededError,
    InvalidRequestError,
    ServiceError,
    ServiceUnavailableError,
)
from walar_jax.clients.reward import ItemReward, RewardBatch, RewardClient
from walar_jax.clients.rollout import RolloutClient

__all__ = [
    "AuthenticationError", "Deadline", "DeadlineExceededError", "InvalidRequestError",
    "ItemReward", "RewardBatch", "RewardClient", "RolloutClient", "ServiceError",
    "ServiceUnavailableError",
]

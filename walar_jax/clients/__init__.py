"""Typed gRPC clients of the two sidecar services (no torch on this side)."""

from walar_jax.clients.common import (
    AuthenticationError,
    InvalidRequestError,
    ServiceError,
    ServiceUnavailableError,
)
from walar_jax.clients.reward import ItemReward, RewardBatch, RewardClient

try:
    from walar_jax.clients.rollout import RolloutClient
except ModuleNotFoundError as err:  # the rollout client may not exist yet: nothing else hides
    if err.name != "walar_jax.clients.rollout":
        raise

__all__ = [
    "AuthenticationError", "InvalidRequestError", "ItemReward", "RewardBatch", "RewardClient",
    "RolloutClient", "ServiceError", "ServiceUnavailableError",
]

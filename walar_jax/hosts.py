"""Several trainer processes (one per host, `jax.distributed`) training one global mesh.

Every process reads the same task stream; each generates and scores its own contiguous
share of a rollout batch's prompts on its own sidecars, then the host arrays are
gathered so that every process holds the whole batch, in prompt order, exactly as a
single process would have made it. The update then runs on the global mesh. With one
process every function here is the identity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np


def share(n: int, index: int | None = None, count: int | None = None) -> tuple[int, int]:
    """[start, end) of process `index`'s contiguous share of n items (n % count == 0)."""
    index = jax.process_index() if index is None else index
    count = jax.process_count() if count is None else count
    if n % count:
        raise ValueError(f"{n} items do not split over {count} processes")
    size = n // count
    return index * size, (index + 1) * size


def _gather(x: np.ndarray) -> np.ndarray:
    """[P, *x.shape]: x of every process, in process order (same shape everywhere)."""
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(np.asarray(x), tiled=False))


def gather_rows(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each process's rows, concatenated in process order; [S, T] arrays are first
    right-padded to the longest T of any process."""
    if jax.process_count() == 1:
        return arrays
    widths = {k: v.shape[1] for k, v in arrays.items() if v.ndim == 2}
    order = sorted(widths)
    most = _gather(np.asarray([widths[k] for k in order], np.int64)).max(axis=0)
    out = {}
    for k, v in arrays.items():
        if v.ndim == 2:
            v = np.pad(v, ((0, 0), (0, int(most[order.index(k)]) - v.shape[1])))
        g = _gather(v)
        out[k] = g.reshape(-1, *g.shape[2:])
    return out


def gather_values(values: dict[str, float]) -> list[dict[str, float]]:
    """The same-keyed scalar dicts of every process, in process order."""
    if jax.process_count() == 1:
        return [values]
    keys = sorted(values)
    rows = _gather(np.asarray([values[k] for k in keys], np.float64))
    return [dict(zip(keys, (float(x) for x in row))) for row in rows]


def host(x) -> np.ndarray:
    """A (possibly multi-host) jax.Array as a whole host array on every process."""
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def is_primary() -> bool:
    """Process 0 writes metrics, exports and single-writer files."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def broadcast_int(value: int) -> int:
    """Process 0's value on every process."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.asarray(value, np.int64)))


def local_addresses(addresses: Sequence[str]) -> list[str]:
    """This process's sidecar addresses: an equal share of the list (one or more per
    host, in process order); a list shorter than the process count is refused."""
    n, count = len(addresses), jax.process_count()
    if n % count:
        raise ValueError(f"rollout.addresses has {n} entries for {count} processes: give "
                         f"each host the same number of sidecars (a multiple of {count})")
    per = n // count
    i = jax.process_index()
    return list(addresses[i * per:(i + 1) * per])


def chunks(n: int, parts: int) -> list[tuple[int, int]]:
    """[start, end) of `parts` near-equal contiguous parts of n items."""
    bounds = [math.floor(n * p / parts) for p in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:]))

"""The checkpoint layout (walar_jax/checkpoint.py): round trip with pending batches, and
a damaged latest checkpoint detected by name, moved aside, and the previous one used."""

import os

import jax.numpy as jnp
import numpy as np
import pytest

from walar_jax import checkpoint


def state(shift):
    return {"params": {"w": jnp.arange(4096, dtype=jnp.float32) + shift},
            "opt_state": {"mu": jnp.full((64,), shift, jnp.float32)}}


def save_two(workdir):
    ckpt = checkpoint.Checkpointer(str(workdir))
    pending = [{"ids": np.arange(6, dtype=np.int32).reshape(2, 3)}]
    ckpt.save(2, state(2.0), {"step": 2, "data_position": 8, "seed": 0})
    ckpt.save(3, state(3.0), {"step": 3, "data_position": 12, "seed": 0}, pending)
    return ckpt


def abstract():
    return checkpoint.abstract_like(state(0.0))


def largest_file(step_dir):
    files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs
             if f != checkpoint.MANIFEST]
    return max(files, key=os.path.getsize)


def test_round_trip_with_pending_batches(tmp_path):
    save_two(tmp_path)
    step, got, meta, pending = checkpoint.Checkpointer(str(tmp_path)).restore_latest(abstract())
    assert step == 3 and meta["data_position"] == 12 and meta["pending"] == 1
    np.testing.assert_array_equal(got["params"]["w"], np.arange(4096) + 3.0)
    np.testing.assert_array_equal(pending[0]["ids"], np.arange(6).reshape(2, 3))
    assert checkpoint.steps(str(tmp_path)) == [2, 3]


def flip_bytes(path):
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        b = f.read(8)
        f.seek(-8, 1)
        f.write(bytes(x ^ 0xFF for x in b))


def truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


@pytest.mark.parametrize("damage,reason", [
    (flip_bytes, "does not hold the bytes that were written"),
    (truncate, "bytes, .* were written"),
    (os.remove, "is missing"),
])
def test_damaged_latest_checkpoint_falls_back_to_the_previous(tmp_path, caplog, damage, reason):
    save_two(tmp_path)
    step3 = tmp_path / "checkpoints" / "3"
    damage(largest_file(step3))
    step, got, meta, pending = checkpoint.Checkpointer(str(tmp_path)).restore_latest(abstract())
    assert step == 2 and meta["data_position"] == 8 and pending == []
    np.testing.assert_array_equal(got["params"]["w"], np.arange(4096) + 2.0)
    assert any(str(step3) in r.message and r.levelname == "ERROR" for r in caplog.records)
    assert any(reason.split(".*")[0] in r.getMessage() for r in caplog.records)
    assert not step3.exists() and (tmp_path / "checkpoints" / "3.corrupt").exists()
    assert checkpoint.steps(str(tmp_path)) == [2]


def test_without_a_manifest_the_restore_itself_catches_damage(tmp_path):
    save_two(tmp_path)
    step3 = tmp_path / "checkpoints" / "3"
    os.remove(step3 / checkpoint.MANIFEST)  # as if the process died right after the save
    truncate(largest_file(step3 / "state"))
    step, got, *_ = checkpoint.Checkpointer(str(tmp_path)).restore_latest(abstract())
    assert step == 2


def test_no_restorable_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    save_two(tmp_path)
    for s in ("2", "3"):
        truncate(largest_file(tmp_path / "checkpoints" / s))
    with pytest.raises(checkpoint.CorruptCheckpointError, match="checkpoints/2: ValueError"):
        checkpoint.Checkpointer(str(tmp_path)).restore_latest(abstract())

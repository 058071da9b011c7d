"""Receiving policy weights in the sidecar: staging, validation, hashing, installing.

Every transport ends in the same place: a *segment* (a file in /dev/shm) plus a
manifest of `Spec`s with byte offsets, laid out as `protos/weights.py` defines (the
sender uses the same module). With "shm" the trainer wrote the segment
and we map it read-only-in-effect (private mapping, never written, so never copied);
with "grpc" the streamed chunks are written into a sidecar-owned segment. An NCCL
transport would stage into GPU buffers and reuse `protos.weights.validate` and the
install path.

Installation runs inside each vLLM worker (`collective_rpc` with `install_segment`),
so the same call works for the in-process engine and for multi-process tensor
parallelism: only the path and the manifest cross the process boundary.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import pathlib
import tempfile
import time
from collections.abc import Iterable, Iterator

from protos import safetensors
from protos import weights as seg
from protos.weights import Spec


def tied_embeddings(model_dir: str | pathlib.Path) -> bool:
    cfg = json.loads((pathlib.Path(model_dir) / "config.json").read_text())
    return bool(cfg.get("tie_word_embeddings", cfg.get("text_config", {}).get(
        "tie_word_embeddings", False)))


def _skipped(model_dir: str | pathlib.Path) -> set[str]:
    # Some tied checkpoints still store the head; vLLM ignores it and so do updates.
    return {"lm_head.weight"} if tied_embeddings(model_dir) else set()


def _file_specs(path: str) -> list[Spec]:
    """The tensors of one safetensors file, offsets relative to the file start."""
    return [Spec(e.name, e.dtype, e.shape, e.offset, e.nbytes)
            for e in safetensors.tensor_table(path)]


def read_checkpoint_table(model_dir: str | pathlib.Path) -> dict[str, Spec]:
    """Names, dtypes and shapes of the tensors an update must carry: those of the files
    vLLM loaded (see `protos.safetensors.checkpoint_files`), less a stored tied head."""
    skip = _skipped(model_dir)
    return {s.name: s for path in safetensors.checkpoint_files(model_dir)
            for s in _file_specs(path) if s.name not in skip}


def checkpoint_digest(model_dir: str | pathlib.Path) -> str:
    """Content hash of the checkpoint's tensors, comparable with `segment_digest`."""
    parts, skip = [], _skipped(model_dir)
    for path in safetensors.checkpoint_files(model_dir):
        specs = [s for s in _file_specs(path) if s.name not in skip]
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            parts += [(s.name, _tensor_digest(s, memoryview(mm))) for s in specs]
    return _combine(parts)


def _hasher():
    try:  # blake3 ships with vLLM and hashes with several threads
        import blake3

        return blake3.blake3(max_threads=blake3.blake3.AUTO)
    except ImportError:
        return hashlib.blake2b(digest_size=32)


def _tensor_digest(spec: Spec, buf: memoryview) -> str:
    h = _hasher()
    h.update(f"{spec.name}|{spec.dtype}|{list(spec.shape)}|".encode())
    h.update(buf[spec.offset : spec.offset + spec.nbytes])
    return h.hexdigest()


def _combine(parts: Iterable[tuple[str, str]]) -> str:
    h = hashlib.sha256()
    for name, d in sorted(parts):
        h.update(f"{name}={d};".encode())
    return h.hexdigest()


def segment_digest(path: str | pathlib.Path, specs: list[Spec]) -> str:
    with map_segment(path) as mm:
        return mapped_digest(mm, specs)


def mapped_digest(mm: mmap.mmap, specs: list[Spec]) -> str:
    """Content hash of a mapped segment's tensors, comparable with `checkpoint_digest`."""
    return _combine((s.name, _tensor_digest(s, memoryview(mm))) for s in specs)


def map_segment(path: str | os.PathLike, ident: tuple[int, int] | None = None,
                access: int = mmap.ACCESS_COPY) -> mmap.mmap:
    """Maps a segment opened by `protos.weights.open_segment` (no links, ours, 0600).
    `ident` (st_dev, st_ino) pins the file the caller checked: a worker that reopens
    the path refuses a file swapped in meanwhile."""
    fd, st = seg.open_segment(path)
    try:
        if ident is not None and (st.st_dev, st.st_ino) != tuple(ident):
            raise seg.UpdateRefused(f"shm segment {path} was replaced during the update")
        if st.st_size == 0:
            raise seg.UpdateRefused(f"shm segment {path} is empty")
        return mmap.mmap(fd, 0, access=access)
    finally:
        os.close(fd)


def nonfinite_tensors(mm: mmap.mmap, specs: list[Spec]) -> list[str]:
    """Names of the tensors holding a NaN or an infinity. A sum is one read pass and
    NaN/Inf propagate through it; only a non-finite sum (or an overflow of finite
    values, which the exact check then clears) pays for `isfinite`."""
    import torch

    bad = []
    for s in specs:
        t = _view(mm, s)
        if not torch.isfinite(t.sum(dtype=torch.float32)) and not bool(torch.isfinite(t).all()):
            bad.append(s.name)
    return bad


class StagingSegment:
    """A sidecar-owned segment that gRPC chunks are written into, reused across updates."""

    def __init__(self) -> None:
        fd, path = tempfile.mkstemp(prefix=f"{seg.SHM_PREFIX}sidecar-", dir=seg.SHM_DIR)
        self.fd, self.path = fd, pathlib.Path(path)
        self.size = 0

    def write(self, offset: int, data: bytes) -> None:
        size = seg.grown_size(self.size, offset + len(data))
        if size != self.size:  # the first update sizes it, later ones reuse it
            self.size = size
            os.ftruncate(self.fd, size)
        os.pwrite(self.fd, data, offset)

    def close(self) -> None:
        os.close(self.fd)
        self.path.unlink(missing_ok=True)


TORCH_DTYPES = ("float32", "bfloat16", "float16")


def _view(mm, s: Spec):
    import torch

    count = s.nbytes // seg.ITEMSIZE[s.dtype]
    t = torch.frombuffer(mm, dtype=getattr(torch, s.dtype), count=count, offset=s.offset)
    return t.view(s.shape)


class Shadow:
    """The live weights in checkpoint layout, in a sidecar-owned segment: what a delta
    update is applied to before the changed tensors are installed from it (so after any
    sequence of deltas the engine holds exactly what one full update would give)."""

    def __init__(self) -> None:
        fd, path = tempfile.mkstemp(prefix=f"{seg.SHM_PREFIX}sidecar-shadow-", dir=seg.SHM_DIR)
        self.fd, self.path = fd, pathlib.Path(path)
        self.mm: mmap.mmap | None = None
        self.specs: dict[str, Spec] = {}

    def store(self, src: mmap.mmap, specs: list[Spec]) -> None:
        """Copies a full update (already validated) into the shadow."""
        layout, off = {}, 0
        for s in specs:
            layout[s.name] = Spec(s.name, s.dtype, s.shape, off, s.nbytes)
            off = seg.aligned(off + s.nbytes)
        if self.mm is None or len(self.mm) != max(off, 1):
            if self.mm is not None:
                self.mm.close()
            os.ftruncate(self.fd, max(off, 1))
            self.mm = mmap.mmap(self.fd, max(off, 1))
        for s in specs:
            d = layout[s.name]
            self.mm[d.offset : d.offset + d.nbytes] = src[s.offset : s.offset + s.nbytes]
        self.specs = layout

    def check_indices(self, src: mmap.mmap, specs: list[Spec]) -> None:
        """Raises UpdateRefused unless every delta's indices rise strictly inside its tensor."""
        bad = self._bad_indices(src, specs)  # no view of `src` may live in a raising frame
        if bad:
            raise seg.UpdateRefused(f"delta refused, old weights stay live: {bad[0]}: "
                                    f"indices must rise strictly within [0, {bad[1]})")

    def _bad_indices(self, src: mmap.mmap, specs: list[Spec]) -> tuple[str, int] | None:
        import numpy as np

        for s in specs:
            idx = np.frombuffer(src, seg.INDEX_DTYPE, s.delta_count, s.index_offset)
            n = self.specs[s.name].nbytes // seg.ITEMSIZE[s.dtype]
            if idx[-1] >= n or (len(idx) > 1 and not bool((idx[1:] > idx[:-1]).all())):
                return s.name, n
        return None

    def apply(self, src: mmap.mmap, specs: list[Spec]) -> list[Spec]:
        """Writes checked deltas into the shadow; returns the shadow specs they touched."""
        import numpy as np

        for s in specs:
            d, raw = self.specs[s.name], np.dtype(f"u{seg.ITEMSIZE[s.dtype]}")
            idx = np.frombuffer(src, seg.INDEX_DTYPE, s.delta_count, s.index_offset)
            dst = np.frombuffer(self.mm, raw, d.nbytes // raw.itemsize, d.offset)
            dst[idx] = np.frombuffer(src, raw, s.delta_count, s.offset)  # bits, not values
        return [self.specs[s.name] for s in specs]

    def digest(self) -> str:
        return mapped_digest(self.mm, list(self.specs.values())) if self.mm else ""

    def close(self) -> None:
        if self.mm is not None:
            self.mm.close()
        os.close(self.fd)
        self.path.unlink(missing_ok=True)


def iter_segment(path: str, specs: list[Spec], ident: tuple[int, int] | None = None
                 ) -> Iterator[tuple[str, torch.Tensor]]:  # noqa: F821
    """(name, tensor) views into the mapped segment: no copy until vLLM copies them in."""
    # A private mapping gives torch a writable buffer without copying the file.
    mm = map_segment(path, ident, access=mmap.ACCESS_COPY)
    for s in specs:
        yield s.name, _view(mm, s)
    # The mapping closes when the last tensor view is garbage-collected.


def install_segment(worker, path: str, specs: list[Spec], check: list[str],
                    ident: tuple[int, int] | None = None) -> dict[str, bool]:
    """Runs in a vLLM worker: reloads weights from the segment, refreshes tied layers,
    then checks that the tensors named in `check` (1:1 parameters) hold exactly the sent
    values and that the logits come from the sent head."""
    worker.reload_weights(weights_iterator=iter_segment(path, specs, ident))
    model = worker.model_runner.get_model()
    refresh_tied(model)
    return {**_check_params(model, path, specs, check), **_check_head(model, path, specs)}


def install_direct(worker, path: str, specs: list[Spec], check: list[str],
                   ident: tuple[int, int] | None = None) -> dict[str, float | bool]:
    """Runs in a vLLM worker: copies the segment's tensors straight into the model's
    parameters with the model's own `load_weights` (its loaders pack q/k/v into qkv_proj
    and gate/up into gate_up_proj), then re-runs each layer's weight post-processing.

    vLLM's generic reload instead moves every layer to the meta device, materialises it
    anew, loads, processes and copies the result back. Here the only copy is the loaders'
    into the parameters; on CPU, where unquantized linear layers keep just a packed
    (oneDNN) copy, each gets back a persistent plain weight to load into (allocated on
    the first update) before vLLM packs it again. Returns timings and the check results.
    """
    import torch

    model = worker.model_runner.get_model()
    t0 = time.perf_counter()
    restored = _restore_packed(worker, model)
    with torch.no_grad():
        loaded = model.load_weights(iter_segment(path, specs, ident))
    t_load = time.perf_counter()
    for mod in model.modules():
        qm = getattr(mod, "quant_method", None)
        if qm is not None and (mod in restored or _owns_loaded(mod, model, loaded)):
            qm.process_weights_after_loading(mod)
    t_pack = time.perf_counter()
    checks = {**_check_params(model, path, specs, check), **_check_head(model, path, specs)}
    return {"load_s": t_load - t0, "pack_s": t_pack - t_load, **checks}


def _owns_loaded(mod, model, loaded: set[str]) -> bool:
    names = getattr(model, "_walar_module_params", None)
    if names is None:  # module -> its parameter names, once per model
        names = {}
        for mname, m in model.named_modules():
            names[m] = {f"{mname}.{p}" if mname else p for p, _ in m.named_parameters(
                recurse=False)}
        model._walar_module_params = names
    return bool(names.get(mod, set()) & loaded) or mod in _tied_modules(model)


def _tied_modules(model) -> set:
    out = getattr(model, "_walar_tied", None)
    if out is None:
        by_storage: dict[int, list] = {}
        for mod in model.modules():
            w = getattr(mod, "weight", None)
            if getattr(w, "numel", lambda: 0)() and hasattr(mod, "quant_method"):
                by_storage.setdefault(w.data_ptr(), []).append(mod)
        out = {m for mods in by_storage.values() if len(mods) > 1 for m in mods}
        model._walar_tied = out
    return out


def _restore_packed(worker, model) -> set:
    """Gives each layer whose weight vLLM packed away (numel 0) a plain weight in its
    checkpoint shape, from the metadata vLLM recorded at load time; the tensors are
    kept on the worker and reused by every later update."""
    from vllm.model_executor.model_loader.reload.layerwise import get_layerwise_info
    from vllm.model_executor.model_loader.reload.meta import materialize_meta_tensor
    from vllm.model_executor.model_loader.reload.sanitize import restore_layer_refs

    cache = getattr(worker, "_walar_plain_weights", None)
    if cache is None:
        cache = worker._walar_plain_weights = {}
        for mod in model.modules():
            w = getattr(mod, "weight", None)
            if w is None or not hasattr(mod, "quant_method") or w.numel():
                continue
            info = get_layerwise_info(mod)
            meta = info.restore_metadata[0].get("weight")
            if meta is None or not meta.numel():
                continue
            with info.restore_device:
                cache[mod] = materialize_meta_tensor(restore_layer_refs(meta, mod))
    for mod, w in cache.items():
        mod.register_parameter("weight", w)
    return set(cache)


def refresh_tied(model) -> None:
    """Re-runs weight post-processing for layers that share a weight with another.

    vLLM's reload re-processes only layers that received tensors. A tied head receives
    none (its weight is the embedding's), and on CPU it keeps a packed copy of the old
    embedding for its GEMM: logits would come from the old weights.
    """
    by_storage: dict[int, list] = {}
    for mod in model.modules():
        w = getattr(mod, "weight", None)
        # Linear layers on CPU drop `weight` (numel 0) after packing; they got tensors.
        if getattr(w, "numel", lambda: 0)() and hasattr(mod, "quant_method"):
            by_storage.setdefault(w.data_ptr(), []).append(mod)
    for mods in by_storage.values():
        if len(mods) > 1:
            for mod in mods:
                mod.quant_method.process_weights_after_loading(mod)


def _check_params(model, path: str, specs: list[Spec], check: list[str]) -> dict[str, bool]:
    import torch

    params = dict(model.named_parameters())
    sent = dict(iter_segment(path, [s for s in specs if s.name in check]))
    ok = {}
    for name in sent:  # a delta installs some tensors only
        p = params.get(name)
        if p is not None and tuple(p.shape) == tuple(sent[name].shape):
            ok[name] = bool(torch.equal(p.detach().cpu(), sent[name].to(p.dtype)))
    return ok


def _check_head(model, path: str, specs: list[Spec]) -> dict[str, bool]:
    """Logits of random hidden states against the sent head (the embedding when tied).
    Exact to ~1e-4 in fp32; in half precision it only catches gross staleness."""
    import torch

    names = {s.name: s for s in specs}
    tied = bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))
    head = names.get("lm_head.weight") or (names.get("model.embed_tokens.weight") if tied
                                           else None)  # a delta may not touch the head
    lp = getattr(model, "logits_processor", None)
    if head is None or lp is None or lp.scale != 1.0 or lp.soft_cap is not None:
        return {}
    ((_, w),) = iter_segment(path, [head])
    p = next(model.parameters())
    h = torch.randn(4, w.shape[1], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        try:
            got = model.compute_logits(h.to(p.device, p.dtype))
        except TypeError:  # a model whose compute_logits takes more than hidden states
            return {}
    if got is None or got.shape[-1] < w.shape[0]:
        return {}  # not the rank that gathers the logits
    want = h @ w.float().T
    tol = (1e-4 if p.dtype == torch.float32 else 3e-2) * float(want.abs().max())
    err = float((got[:, : w.shape[0]].float().cpu() - want).abs().max())
    return {"lm_head(logits)": err <= tol}

"""The gRPC face of the sidecar: proto messages in, engine calls, proto messages out.

Every bad input ends in INVALID_ARGUMENT with the reason; the server keeps serving.
"""

from __future__ import annotations

import logging
import threading
import time

import grpc

from protos import rollout_pb2 as pb
from protos import rollout_pb2_grpc as pb_grpc
from protos import weights as seg
from protos.service import identity_proof
from rollout import engine as E
from rollout import weights as W

log = logging.getLogger(__name__)
TRANSPORTS = ("shm", "grpc")


def sampling_from_proto(p: pb.SamplingParams) -> E.Sampling:
    def opt(field: str, default):
        return getattr(p, field) if p.HasField(field) else default

    return E.Sampling(
        n=opt("n", 1),
        temperature=opt("temperature", 1.0),
        top_p=opt("top_p", 1.0),
        top_k=opt("top_k", 0),
        max_tokens=opt("max_tokens", 16),
        min_tokens=opt("min_tokens", 0),
        stop=tuple(p.stop),
        stop_token_ids=tuple(p.stop_token_ids),
        seed=opt("seed", None),
    )


class RolloutServicer(pb_grpc.RolloutServicer):
    def __init__(self, engine: E.Engine, token: str | None = None):
        self.engine = engine
        self.token = token
        self.staging: W.StagingSegment | None = None
        # One update at a time: they share the staging segment.
        self.update_lock = threading.Lock()

    def close(self) -> None:
        self._drop_staging()
        if self.engine is not None:
            self.engine.close()

    # ---- Generate -------------------------------------------------------------

    def Generate(self, request: pb.GenerateRequest, context) -> pb.GenerateResponse:
        eng = self.engine
        try:
            prompts = [self._prompt_ids(i, p, request) for i, p in enumerate(request.prompts)]
            expected = request.expected_version if request.HasField("expected_version") else None
            results, version = eng.generate(
                prompts, sampling_from_proto(request.sampling), expected
            )
        except E.RequestError as err:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        except (E.VersionMismatch, E.Asleep) as err:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(err))
        except E.EngineBroken as err:  # not transient: only a successful update cures it
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(err))
        except E.EngineDead as err:  # only a restart cures it
            context.abort(grpc.StatusCode.INTERNAL, str(err))
        except Exception as err:  # say what broke instead of gRPC's bare UNKNOWN
            log.exception("Generate failed")
            context.abort(grpc.StatusCode.INTERNAL, f"{type(err).__name__}: {err}")
        out = pb.GenerateResponse(weights_version=version)
        for ids, comps in zip(prompts, results):
            r = out.results.add(prompt_token_ids=ids)
            for c in comps:
                r.completions.add(token_ids=c.token_ids, text=c.text, logprobs=c.logprobs,
                                  finish_reason=c.finish_reason)
        return out

    def _prompt_ids(self, i: int, p: pb.Prompt, request: pb.GenerateRequest) -> list[int]:
        kind = p.WhichOneof("kind")
        if kind == "token_ids":
            return list(p.token_ids.ids)
        if kind == "text":
            think = request.enable_thinking if request.HasField("enable_thinking") else None
            return self.engine.encode_text(p.text, request.apply_chat_template, think)
        raise E.RequestError(f"prompt {i} has neither token_ids nor text")

    # ---- UpdateWeights ----------------------------------------------------------

    def UpdateWeights(self, request_iterator, context) -> pb.UpdateWeightsResponse:
        t0 = time.perf_counter()
        with self.update_lock:
            try:
                first = next(request_iterator, None)
                if first is None or first.WhichOneof("kind") != "header":
                    raise seg.UpdateRefused("the first UpdateWeights message must be a header")
                header = first.header
                if header.transport == "shm":
                    path, specs = self._receive_shm(header, request_iterator)
                elif header.transport == "grpc":
                    path, specs = self._receive_grpc(request_iterator)
                else:
                    raise seg.UpdateRefused(
                        f"unknown transport {header.transport!r}; this sidecar takes {TRANSPORTS}"
                    )
                received = time.perf_counter() - t0
                version = header.version if header.HasField("version") else None
                base = header.base_version if header.HasField("base_version") else None
                if base is not None and header.transport != "shm":
                    raise seg.UpdateRefused("delta updates travel by shm only")
                res = self.engine.install(str(path), specs, version, header.content_id, base)
            except BaseException as err:
                self._drop_staging()  # a refused stream's bytes leave /dev/shm at once
                self._abort(err, context)
        return pb.UpdateWeightsResponse(
            version=res.version, changed=res.changed, num_tensors=res.num_tensors,
            num_bytes=res.num_bytes, receive_s=received, install_s=res.install_s,
            digest=res.digest, digest_s=res.digest_s, check_s=res.check_s, load_s=res.load_s,
            pack_s=res.pack_s, delta=res.delta, delta_elements=res.delta_elements,
        )

    def _drop_staging(self) -> None:
        if self.staging is not None:
            self.staging.close()
            self.staging = None

    @staticmethod
    def _abort(err: BaseException, context) -> None:
        """The status a failed update ends with (re-raises what is not ours to map)."""
        if isinstance(err, E.Asleep):
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(err))
        if isinstance(err, seg.BaseMismatch):
            log.warning("%s", err)
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(err))
        if isinstance(err, seg.UpdateRefused):
            log.warning("%s", err)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        if isinstance(err, (E.EngineBroken, E.EngineDead)):
            log.error("%s", err)
            context.abort(grpc.StatusCode.INTERNAL, str(err))
        if isinstance(err, (grpc.RpcError, KeyboardInterrupt, SystemExit)):
            raise err  # the client went away mid-stream; nothing was installed
        log.exception("UpdateWeights failed")  # say what broke instead of gRPC's UNKNOWN
        context.abort(grpc.StatusCode.INTERNAL, f"{type(err).__name__}: {err}")

    def _receive_shm(self, header: pb.WeightUpdateHeader, rest) -> tuple[str, list[seg.Spec]]:
        if next(rest, None) is not None:
            raise seg.UpdateRefused("an shm update is a single header message")
        return seg.resolve_shm_path(header.shm_path), [seg.from_proto(t) for t in header.tensors]

    def _receive_grpc(self, rest) -> tuple[str, list[seg.Spec]]:
        """Writes streamed chunks into the staging segment; returns it and the manifest."""
        if self.staging is None:
            self.staging = W.StagingSegment()
        specs: list[seg.Spec] = []
        offset, filled = 0, 0  # end of staged data; bytes received for the current tensor
        for msg in rest:
            if msg.WhichOneof("kind") != "batch":
                raise seg.UpdateRefused("only tensor batches may follow the header")
            for chunk in msg.batch.chunks:
                if chunk.HasField("spec"):
                    self._check_complete(specs, filled)
                    s = seg.from_proto(chunk.spec)
                    seg.check_dtype(s.name, s.dtype)
                    s = seg.Spec(s.name, s.dtype, s.shape, offset, s.expected_nbytes())
                    specs.append(s)
                    offset, filled = seg.aligned(offset + s.nbytes), 0
                elif not specs:
                    raise seg.UpdateRefused("a chunk without a spec must follow a tensor's first")
                cur = specs[-1]
                if filled + len(chunk.data) > cur.nbytes:
                    raise seg.UpdateRefused(f"{cur.name}: more than {cur.nbytes} bytes sent")
                self.staging.write(cur.offset + filled, chunk.data)
                filled += len(chunk.data)
        self._check_complete(specs, filled)
        return str(self.staging.path), specs

    @staticmethod
    def _check_complete(specs: list[seg.Spec], filled: int) -> None:
        if specs and filled != specs[-1].nbytes:
            s = specs[-1]
            raise seg.UpdateRefused(f"{s.name}: got {filled} of {s.nbytes} bytes")

    # ---- Info -----------------------------------------------------------------------

    def Info(self, request: pb.InfoRequest, context) -> pb.InfoResponse:
        e = self.engine
        if e.dead:  # the health check fails: a supervisor restarts the sidecar
            context.abort(grpc.StatusCode.INTERNAL, e.dead)
        return pb.InfoResponse(
            model=e.cfg.model, engine="vllm", engine_version=e.engine_version, device=e.device,
            dtype=e.dtype, max_model_len=e.max_model_len, weights_version=e.version,
            weights_digest=e.digest, vocab_size=e.vocab_size, transports=TRANSPORTS,
            tensor_parallel_size=e.cfg.tensor_parallel_size,
            prefix_caching=e.cfg.enable_prefix_caching, logprobs_mode=E.LOGPROBS_MODE,
            has_chat_template=bool(e.tokenizer.chat_template), num_tensors=len(e.table),
            proof=identity_proof(self.token, request.nonce) if request.nonce else "",
            sleep_mode=e.cfg.enable_sleep_mode, sleep_level=e.sleep_level,
            live_hash=e.live_hash() if request.hash_live else "", delta_sync=e.shadow is not None,
        )

    # ---- Sleep, WakeUp ----------------------------------------------------------------

    def Sleep(self, request: pb.SleepRequest, context) -> pb.SleepResponse:
        return self._sleep_call(lambda: self.engine.sleep(request.level or 1), context)

    def WakeUp(self, request: pb.WakeUpRequest, context) -> pb.SleepResponse:
        return self._sleep_call(lambda: (0, self.engine.wake_up()), context)

    def _sleep_call(self, fn, context) -> pb.SleepResponse:
        try:
            level, seconds = fn()
        except E.RequestError as err:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        except E.SleepModeOff as err:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(err))
        except E.EngineDead as err:
            context.abort(grpc.StatusCode.INTERNAL, str(err))
        except Exception as err:  # say what broke instead of gRPC's bare UNKNOWN
            log.exception("sleep mode call failed")
            context.abort(grpc.StatusCode.INTERNAL, f"{type(err).__name__}: {err}")
        return pb.SleepResponse(sleep_level=level, seconds=seconds)

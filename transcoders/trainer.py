"""Training loop: Adam on the objective in loss.py over shuffled (x, y) batches, with LR warm-up and
end decay, lambda warm-up, gradient clipping, dead-feature tracking, resumable checkpoints, and
DistributedDataParallel when launched by torchrun.

    result = train_transcoder(read_layers, sequences, TrainConfig(...), "out/", model_name="world")

`read_layers` is the model as an activation_source.LayerReader (circuits.training.train.ModelLayers
wraps a TransformerLens model); this package never hooks a model itself.

The result's transcoder works on raw activations (normalisation folded in) and is saved in the
circuit-tracer format (formats.py) with training_config.json and metrics.json beside it.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from safeio import check_output_dir
from transcoders.activation_source import LayerReader, ModelActivationSource, NonFiniteActivations, ShuffleBuffer
from transcoders.checkpoint import CHECKPOINT_FILE
from transcoders.distributed import DistInfo, barrier, init_distributed, rank_device
from transcoders.errors import TranscoderError
from transcoders.out_dir import begin_staging, commit_staged, prepare_out_dir
from transcoders.train_config import TrainConfig
from transcoders.train_state import TrainState
from transcoders.transcoder import Transcoder


@dataclass
class TrainResult:
    transcoder: Transcoder | None  # raw units; None when stopped early (stop_at_step)
    out_dir: Path
    metrics: dict
    resumed_from_step: int | None


def lr_at(cfg: TrainConfig, step: int) -> float:
    n = cfg.n_steps
    warm = min(1.0, (step + 1) / cfg.lr_warmup_steps) if cfg.lr_warmup_steps else 1.0
    decay_start = n * (1 - cfg.lr_decay_frac)
    decay = 1.0 if step < decay_start else max(0.0, (n - step) / max(n - decay_start, 1e-9))
    return cfg.lr * warm * decay


def sparsity_at(cfg: TrainConfig, step: int) -> float:
    ramp = cfg.sparsity_warmup_frac * cfg.n_steps
    return cfg.sparsity_coef * (min(1.0, step / ramp) if ramp > 0 else 1.0)


def train_transcoder(read_layers: LayerReader, sequences: Iterable[Sequence[int]], cfg: TrainConfig,
                     out_dir: str | Path, *,
                     model_name: str, source_id: str | None = None, resume: bool = False,
                     overwrite: bool = False, progress: bool = True, log_path: str | Path | None = None,
                     device: str = "cpu", stop_at_step: int | None = None,
                     final_eval: Callable[[Transcoder], dict] | None = None,
                     periodic_eval: Callable[[Transcoder], dict] | None = None) -> TrainResult:
    """Train a transcoder for the model `read_layers` reads on `sequences` (a re-iterable of
    token-id lists; the same order every time it is iterated). `periodic_eval(raw transcoder)` is
    called every `cfg.eval_every_tokens` training tokens and after the last step (main process
    only); its report is logged as a `heldout` line (train_log.py)."""
    from transcoders.cpu_memory import reuse_freed_memory
    from transcoders.threads import training_threads

    with output_lock(Path(out_dir)), training_threads(cfg.threads, device) as n_threads, reuse_freed_memory(device):
        return _train(read_layers, sequences, cfg, Path(out_dir), model_name=model_name, source_id=source_id,
                      resume=resume, overwrite=overwrite, progress=progress, log_path=log_path, device=device,
                      stop_at_step=stop_at_step, final_eval=final_eval, n_threads=n_threads,
                      periodic_eval=periodic_eval)


@contextlib.contextmanager
def output_lock(out: Path):
    """Hold the output folder's lock (safeio.lock: one writer per folder) for a run, in its main
    process (under torchrun: rank 0; the other ranks write nothing there)."""
    from safeio import OutputError
    from safeio.lock import folder_lock

    if int(os.environ.get("RANK", "0") or 0) != 0:
        yield out
        return
    try:
        check_output_dir(out, "output folder")  # its own words for a file or an unwritable place
        lock = folder_lock(out, "output folder")
        lock.__enter__()
    except OutputError as err:
        raise TranscoderError(str(err)) from None
    try:
        yield out
    finally:
        lock.__exit__(None, None, None)


def _train(read_layers: LayerReader, sequences, cfg: TrainConfig, out: Path, *, model_name, source_id, resume, overwrite,
           progress, log_path, device, stop_at_step, final_eval, n_threads: int, periodic_eval=None) -> TrainResult:
    t_start = time.monotonic()
    mode = prepare_outputs(out, cfg, resume=resume, overwrite=overwrite, log_path=log_path)
    info = init_distributed(device)
    device = rank_device(device, info)
    source = _make_source(read_layers, sequences, cfg, source_id or model_name, info, progress)
    buffer = ShuffleBuffer(source, cfg.batch_size, cfg.seed, info.rank, info.world_size)
    state = TrainState(cfg, read_layers.n_layers, read_layers.d_model, device, info,
                       model_name=model_name, source_id=source_id or model_name)
    if mode == "resume":
        state.load(out / CHECKPOINT_FILE, buffer)
    else:
        x0, y0 = _first_group(buffer, out)
        state.init_fresh(x0, y0)
        if info.is_main:
            out.mkdir(parents=True, exist_ok=True)
    state.start_clock(t_start)  # elapsed time includes collecting activations
    barrier(info)
    loop = TrainLoop(state, buffer, out, info, progress=progress, log_path=log_path, periodic_eval=periodic_eval)
    loop.timing["threads"] = n_threads
    loop.timing["activation_dtype"] = getattr(read_layers, "dtype", None)  # what "auto" resolved to
    loop.run(stop_at_step)
    if stop_at_step is not None and state.step < cfg.n_steps:
        return TrainResult(None, out, loop.last_metrics, state.resumed_from)
    return loop.finish(final_eval)


def prepare_outputs(out: Path, cfg: TrainConfig, *, resume: bool, overwrite: bool,
                    log_path: str | Path | None = None) -> str:
    """Check every path a run will write (output folder, --log, --cache-dir) before any work;
    returns "fresh" or "resume" (see out_dir.prepare_out_dir)."""
    from safeio import OutputError, check_output
    from transcoders.activation_cache import check_cache_dir

    mode = prepare_out_dir(Path(out), resume=resume, overwrite=overwrite)
    if log_path:
        try:
            check_output(Path(log_path), "log file")
        except OutputError as err:
            raise TranscoderError(str(err)) from None
    if cfg.cache_dir:
        check_cache_dir(Path(cfg.cache_dir))
    return mode


def _first_group(buffer: ShuffleBuffer, out: Path):
    try:
        return buffer.current_group()
    except NonFiniteActivations as exc:
        raise TranscoderError(f"{exc} at step 0; nothing was written to {out}") from None


def _make_source(read_layers: LayerReader, sequences, cfg: TrainConfig, source_id: str, info: DistInfo, progress: bool = False):
    from transcoders.activation_cache import (CachedActivationSource, build_activation_cache, cache_matches,
                                              check_room, collect_progress)

    arch = cfg.transcoder
    group = cfg.group_tokens(read_layers.n_layers, read_layers.d_model)
    live = ModelActivationSource(read_layers, sequences, arch.input_hook, arch.output_hook,
                                 cfg.seq_len, cfg.model_batch, group)
    n_rows = min(cfg.activation_tokens or cfg.tokens, cfg.tokens)
    if not cfg.cache_dir:
        if n_rows >= cfg.tokens:
            return live
        check_room(n_rows, read_layers.n_layers, read_layers.d_model, 2, None)
        try:
            return CachedActivationSource.in_memory(live, n_rows, group,
                                                    progress=collect_progress(progress and info.is_main, n_rows))
        except NonFiniteActivations as exc:
            raise TranscoderError(f"{exc} while collecting activations (before step 0)") from None
    cache = Path(cfg.cache_dir)
    if info.is_main and not cache_matches(cache, source_id, arch.input_hook, arch.output_hook, n_rows,
                                          cfg.seq_len, cfg.cache_dtype):
        check_room(n_rows, read_layers.n_layers, read_layers.d_model, 2 if cfg.cache_dtype == "bfloat16" else 4, cache)
        build_activation_cache(live, n_rows, cache, source_id, dtype=cfg.cache_dtype,
                               progress=collect_progress(progress, n_rows), seq_len=cfg.seq_len)
    barrier(info)
    return CachedActivationSource(cache, group)


class TrainLoop:
    """Steps, logs, checkpoints. Checkpoints are written only at log boundaries, so the logging
    window is empty whenever one is taken and a resumed run logs exactly what an unbroken one would."""

    def __init__(self, state: TrainState, buffer: ShuffleBuffer, out: Path, info: DistInfo,
                 progress: bool, log_path, periodic_eval: Callable[[Transcoder], dict] | None = None):
        from transcoders.train_log import TrainLogger

        self.state, self.buffer, self.out, self.info = state, buffer, out, info
        every = state.cfg.eval_every_tokens
        self.periodic_eval = periodic_eval if every and info.is_main else None
        self._next_eval = (state.tokens_seen // every + 1) * every if every else None
        self.logger = TrainLogger(state.cfg, info, progress, log_path, state.step, state.run_id)
        self.last_metrics: dict = {}
        self.timing = {"data_s": 0.0, "step_s": 0.0, "checkpoint_s": 0.0}
        self._last_ckpt = time.monotonic()

    def run(self, stop_at_step: int | None) -> None:
        st, cfg = self.state, self.state.cfg
        end = cfg.n_steps if stop_at_step is None else min(cfg.n_steps, stop_at_step)
        while st.step < end:
            t0 = time.perf_counter()
            try:
                x, y = self.buffer.next_batch()
            except NonFiniteActivations as exc:
                raise TranscoderError(f"{exc} at step {st.step}; {self._kept()}") from None
            t1 = time.perf_counter()
            parts = st.train_step(x, y, lr_at(cfg, st.step), sparsity_at(cfg, st.step))
            if not torch.isfinite(parts["loss"]):
                raise TranscoderError(f"loss became non-finite at step {st.step - 1}; {self._kept()}; "
                                      "try a lower --lr")
            t2 = time.perf_counter()
            self.timing["data_s"] += t1 - t0
            self.timing["step_s"] += t2 - t1
            self.logger.step(parts, cfg.batch_size)
            # before a checkpoint at this step: a run killed between them redoes the point on resume
            if self.periodic_eval is not None and (st.tokens_seen >= self._next_eval or st.step == cfg.n_steps):
                self._held_out_point()
            if st.step % cfg.log_every == 0 or st.step == end:
                self.last_metrics = self.logger.flush(st)
                self._maybe_checkpoint(force=st.step == end and st.step < cfg.n_steps)
        self.logger.close()

    def _held_out_point(self) -> None:
        """Score the transcoder as it is now on held-out positions; its CPU time is logged apart
        (`eval_cpu_s`, cumulative) so a curve against training CPU can leave it out."""
        st, every = self.state, self.state.cfg.eval_every_tokens
        t0, w0 = time.process_time(), time.perf_counter()
        report = self.periodic_eval(st.raw_transcoder())
        self.logger.heldout(st, report, time.process_time() - t0, time.perf_counter() - w0)
        self._next_eval = (st.tokens_seen // every + 1) * every

    def _kept(self) -> str:
        ck = self.out / CHECKPOINT_FILE
        return f"the last checkpoint in {self.out} is kept" if ck.exists() else "no checkpoint was written"

    def _maybe_checkpoint(self, force: bool) -> None:
        from transcoders.distributed import broadcast_flag

        due = force or time.monotonic() - self._last_ckpt >= self.state.cfg.checkpoint_seconds
        if not broadcast_flag(due, self.info):
            return
        t0 = time.perf_counter()
        if self.info.is_main:
            self.state.save(self.out / CHECKPOINT_FILE, self.buffer)
        self._last_ckpt = time.monotonic()
        self.timing["checkpoint_s"] += time.perf_counter() - t0

    def finish(self, final_eval) -> TrainResult:
        from transcoders.formats import save_transcoder

        st = self.state
        raw = st.raw_transcoder()
        metrics = {"training": {**self.last_metrics, **st.summary(), "timing": self._timing()}}
        if final_eval is not None and self.info.is_main:
            from transcoders.cpu_memory import default_allocation

            with default_allocation():
                metrics["fidelity"] = final_eval(raw)
        if self.info.is_main:  # complete in a staging folder first: an old transcoder stays until then
            save_transcoder(raw, begin_staging(self.out), model_name=st.model_name,
                            training_config=st.config_record(), metrics=metrics)
            commit_staged(self.out)
            (self.out / CHECKPOINT_FILE).unlink(missing_ok=True)
        barrier(self.info)
        return TrainResult(raw, self.out, metrics, st.resumed_from)

    def _timing(self) -> dict:
        source = self.buffer.source
        t = {k: round(v, 3) if isinstance(v, float) else v for k, v in self.timing.items()}
        t["model_forward_s"] = round(getattr(source, "model_seconds", 0.0), 3)
        return t

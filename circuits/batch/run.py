"""trace_batch: the prompts of a batch traced into an output folder, resumably, on one process or
sharded over torch.distributed ranks (circuits.batch.sharding). Folder layout and the crash
guarantees: circuits.batch.manifest."""

from __future__ import annotations

import time
from pathlib import Path

from circuits.batch import manifest as mf
from circuits.batch.inputs import PromptItem
from circuits.batch.sharding import DistInfo, barrier, gather, on_rank0, rounds
from circuits.batch.trace_many import _bar


def trace_batch(rm, items: list[PromptItem], out: str | Path, config=None, progress: bool = False,
                info: DistInfo | None = None, batch_prompts: int = 1) -> dict:
    """Trace every prompt of `items` not finished in `out` yet; returns {total, traced, skipped,
    manifest}. With `info` of several ranks each traces its shard; rank 0 writes the manifest.
    batch_prompts > 1: a rank traces that many pending prompts at a time with shared backward
    sweeps (circuits.attribution.batched: graphs equal to 1e-6 relative, not bit for bit)."""
    from circuits.attribution.config import TraceConfig
    from circuits.batch.trace_many import check_batch_prompts

    check_batch_prompts(batch_prompts)
    config = config or TraceConfig()
    info = info or DistInfo()
    out = Path(out)
    on_rank0(lambda: mf.prepare_folder(out, mf.run_info(rm, config)), info)
    done = on_rank0(lambda: _finished_records(items, out, config), info)  # {index: record}
    pending = [item for item in items if item.index not in done]
    bar = _bar(len(items), len(done)) if progress and info.is_main else None
    t0, cpu0 = time.perf_counter(), time.process_time()
    try:
        chunks = [pending[i:i + batch_prompts] for i in range(0, len(pending), batch_prompts)]
        for r in range(rounds(len(chunks), info)):  # round r: rank k traces chunk r*N + k
            k = r * info.world_size + info.rank
            recs = _trace_chunk(rm, chunks[k], out, config, batch_prompts) if k < len(chunks) else []
            for got in (rec for part in gather(recs, info) for rec in part):
                if info.is_main:
                    mf.append_record(out, got)
                    if bar is not None:
                        bar.update(1)
                done[got["index"]] = got
    finally:
        if bar is not None:
            bar.close()
    if info.is_main:
        mf.rewrite_manifest(out, [done[item.index] for item in items])
    barrier(info)
    return {"total": len(items), "traced": len(pending), "skipped": len(items) - len(pending),
            "manifest": str(out / mf.MANIFEST), "trace_seconds": round(time.perf_counter() - t0, 3),
            "trace_cpu_seconds": round(time.process_time() - cpu0, 3)}  # this process's (rank 0's) CPU


def _finished_records(items: list[PromptItem], out: Path, config) -> dict[int, dict]:
    """Rank 0's scan: the records of the prompts whose graph files are in place (the manifest's
    line, or rebuilt from the files where the kill came before it was appended)."""
    old = mf.read_manifest(out)
    done = {}
    for item in items:
        if not mf.finished(out, item, item.config(config).model_dump()):
            continue
        rec = old.get(item.id)
        if rec is None or rec.get("prompt") != item.prompt or rec.get("index") != item.index:
            rec = mf.record_from_files(item, out, item.config(config))
        done[item.index] = rec
    return done


def _trace_chunk(rm, items: list[PromptItem], out: Path, config, batch_prompts: int) -> list[dict]:
    """Trace prompts (sharing backward sweeps when batch_prompts > 1) and write each one's two graph
    files (each atomically; .npz first) as soon as it is traced; their manifest records."""
    from circuits.trace import trace_prompts

    recs = []
    for item, result in zip(items, trace_prompts(rm, [(i.prompt, i.config(config)) for i in items], batch_prompts)):
        full, pruned = mf.graph_files(out, item)
        result.save(full)
        result.write_json(pruned)
        recs.append(mf.record(item, result, out))
    return recs


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
                info: DistInfo | None = None) -> dict:
    """Trace every prompt of `items` not finished in `out` yet; returns {total, traced, skipped,
    manifest}. With `info` of several ranks each traces its shard; rank 0 writes the manifest."""
    from circuits.attribution.config import TraceConfig

    config = config or TraceConfig()
    info = info or DistInfo()
    out = Path(out)
    on_rank0(lambda: mf.prepare_folder(out, mf.run_info(rm, config)), info)
    done = on_rank0(lambda: _finished_records(items, out, config), info)  # {index: record}
    pending = [item for item in items if item.index not in done]
    bar = _bar(len(items), len(done)) if progress and info.is_main else None
    t0 = time.perf_counter()
    try:
        for r in range(rounds(len(pending), info)):
            k = r * info.world_size + info.rank
            rec = _trace_one(rm, pending[k], out, config) if k < len(pending) else None
            for got in gather(rec, info):
                if got is None:
                    continue
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
            "manifest": str(out / mf.MANIFEST), "trace_seconds": round(time.perf_counter() - t0, 3)}


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


def _trace_one(rm, item: PromptItem, out: Path, config) -> dict:
    """Trace one prompt and write its two graph files (each atomically; .npz first)."""
    from circuits.trace import trace_prompt

    result = trace_prompt(rm, item.prompt, item.config(config))
    full, pruned = mf.graph_files(out, item)
    result.save(full)
    result.write_json(pruned)
    return mf.record(item, result, out)


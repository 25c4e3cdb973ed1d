"""Dataset faithfulness end to end: trace every prompt through trace-batch (resumable, sharded over
torch.distributed ranks), then score each prompt's graph (circuits.studies.faithfulness), sharded
the same way; rank 0 writes DIR/faithfulness.jsonl (per prompt, input order), DIR/faithfulness.json
(means and spreads) and DIR/faithfulness.png."""

from __future__ import annotations

import json
from pathlib import Path

from circuits.batch import manifest as mf
from circuits.batch.inputs import PromptItem
from circuits.batch.run import trace_batch
from circuits.batch.sharding import DistInfo, gather, rounds
from circuits.batch.trace_many import _bar
from circuits.studies import faithfulness as fa


def evaluate_dataset(rm, items: list[PromptItem], out: str | Path, metric: str = "logit-diff", config=None,
                     levels=fa.LEVELS, ablations=fa.ABLATIONS, info: DistInfo | None = None,
                     progress: bool = False, title: str = "", batch_prompts: int = 1) -> dict:
    """Trace (or reuse) the graphs of `items` in `out` (batch_prompts: trace_batch's), then their
    faithfulness curves; the summary."""
    from graphs import load_graph
    from safeio import write_text

    info = info or DistInfo()
    out = Path(out)
    trace_batch(rm, items, out, config, progress=progress, info=info, batch_prompts=batch_prompts)
    means = fa.dataset_means(rm, [item.prompt for item in items]) if "mean" in ablations else None
    bar = _bar(len(items)) if progress and info.is_main else None
    records: list[dict] = []
    for r in range(rounds(len(items), info)):
        k = r * info.world_size + info.rank
        rec = None
        if k < len(items):
            item = items[k]
            graph = load_graph(mf.graph_files(out, item)[0])
            rec = {"id": item.id, "index": item.index, "prompt": item.prompt,
                   **fa.evaluate_prompt(rm, graph, item.targets, item.contrast, metric, means, levels, ablations)}
        got = [g for g in gather(rec, info) if g is not None]
        records += got
        if bar is not None:
            bar.update(len(got))
    if bar is not None:
        bar.close()
    records.sort(key=lambda rec: rec["index"])
    summary = {"metric": metric, "ablations": list(ablations), **fa.summarize_curves(records, levels)}
    if info.is_main:
        write_text(out / "faithfulness.jsonl", "".join(json.dumps(r, allow_nan=False) + "\n" for r in records))
        write_text(out / "faithfulness.json", json.dumps(summary, indent=2, allow_nan=False) + "\n")
        fa.plot(summary, out / "faithfulness.png", title)
    return summary

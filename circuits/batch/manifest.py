"""The output folder of `circuits trace-batch` and its manifest.

    DIR/run.json            the run's model, transcoders and trace settings (a rerun must match)
    DIR/graphs/ID.npz       the full graph (what `circuits trace --full` writes)
    DIR/graphs/ID.json      the pruned graph as viewer JSON (what `circuits trace -o` writes)
    DIR/manifest.jsonl      one record per finished prompt: id, prompt, top logits, sizes, scores,
                            timing, file names; in input order once the run completes

The graph files decide what is finished: each is written atomically (safeio: temporary file,
fsync, rename), the .npz first, then the .json; a manifest line is appended and fsynced only after
both are in place. So after kill -9 anywhere: a prompt with both files is finished (its manifest
line is rebuilt from the files if the kill came before the append), a prompt with one file is
redone, a torn last manifest line is ignored, and stale temporary files are removed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from circuits.batch.inputs import PromptItem
from circuits.errors import CircuitsError

FORMAT = "circuits-trace-batch/1"
MANIFEST = "manifest.jsonl"
RUN = "run.json"
GRAPHS = "graphs"
TIMING_KEYS = ("timing_seconds",)  # the only fields that differ between two runs of one batch
# Graph settings that record the run's environment, not a choice: the engine writes the torch thread
# counts it used (adapted to the free cores) there. Pin them (--threads) for byte-identical reruns.
ENVIRONMENT_SETTINGS = ("threads", "memory_plan")  # memory_plan starts from the process's resident bytes


def graph_files(out: Path, item: PromptItem) -> tuple[Path, Path]:
    """(full .npz, pruned viewer .json) of one prompt."""
    return out / GRAPHS / f"{item.id}.npz", out / GRAPHS / f"{item.id}.json"


def run_info(rm, config) -> dict:
    return {"format": FORMAT, "model": rm.identity,
            "transcoders": str(rm.transcoder_dir) if rm.transcoder_dir else None,
            "settings": config.model_dump()}


def prepare_folder(out: Path, info: dict) -> None:
    """Create DIR and DIR/graphs, write run.json; a folder of another run (other model,
    transcoders or settings) is refused rather than mixed."""
    from safeio import check_output_dir, write_text
    from safeio.write import remove_stale_temps_in

    check_output_dir(out)
    run = out / RUN
    if run.exists():
        try:
            old = json.loads(run.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise CircuitsError(f"{run} is not readable JSON: {out} is not a trace-batch folder") from None
        for key in ("format", "model", "transcoders", "settings"):
            if old.get(key) != info[key]:
                raise CircuitsError(f"{out} holds a trace-batch run with other {key} ({_short(old.get(key))} vs "
                                    f"{_short(info[key])}); give a new --out folder to keep both")
    (out / GRAPHS).mkdir(parents=True, exist_ok=True)
    if not run.exists():
        write_text(run, json.dumps(info, indent=2, sort_keys=True) + "\n")
    remove_stale_temps_in(out / GRAPHS)
    remove_stale_temps_in(out)


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) < 80 else text[:77] + "..."


def finished(out: Path, item: PromptItem, settings: dict) -> bool:
    """Both graph files are in place and the .npz is this prompt's graph with these settings; a
    graph of another prompt under this id is refused (the input file changed under the folder)."""
    full, pruned = graph_files(out, item)
    if not (full.is_file() and pruned.is_file()):
        return False
    try:
        with np.load(full, allow_pickle=False) as npz:
            meta = json.loads(str(npz["metadata"]))
    except Exception:  # noqa: BLE001 - an unreadable file is redone, never trusted
        return False
    recorded = {k: v for k, v in (meta.get("settings") or {}).items() if k not in ENVIRONMENT_SETTINGS}
    if meta.get("prompt") != item.prompt or recorded != settings:
        raise CircuitsError(f"{full} is the graph of another prompt or other settings than prompt {item.id} "
                            f"({item.prompt[:40]!r}); the prompts file changed: give a new --out folder")
    return True


def record(item: PromptItem, result, out: Path) -> dict:
    """The manifest record of a traced prompt (from its TraceResult)."""
    s = result.summary
    full, pruned = graph_files(out, item)
    return {**item.to_json(),
            "n_tokens": len(s["tokens"]),
            "top_logits": [{"label": lg["label"], "token_id": lg["token_id"], "probability": lg["probability"]}
                           for lg in s["logits"]],
            "sizes": s["counts"], "scores": s["scores"],
            "files": {"full": str(full.relative_to(out)), "pruned": str(pruned.relative_to(out))},
            "timing_seconds": dict(result.graph.timing_seconds)}


def record_from_files(item: PromptItem, out: Path, config) -> dict:
    """The record of a finished prompt rebuilt from its graph files (after a kill before the append)."""
    from circuits.trace import TraceResult
    from graphs import load_graph, prune_graph, summarize

    graph = load_graph(graph_files(out, item)[0])
    pruned = prune_graph(graph, config.node_threshold, config.edge_threshold)
    return record(item, TraceResult(graph, pruned, summarize(graph, pruned)), out)


def read_manifest(out: Path) -> dict[str, dict]:
    """The records of DIR/manifest.jsonl by id (a torn or foreign line is skipped; the last wins)."""
    path = out / MANIFEST
    records: dict[str, dict] = {}
    if not path.is_file():
        return records
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("id"), str):
            records[rec["id"]] = rec
    return records


def append_record(out: Path, rec: dict) -> None:
    """Append one line and fsync it (called only after both graph files are in place)."""
    path = out / MANIFEST
    line = json.dumps(rec, ensure_ascii=False, allow_nan=False) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if os.fstat(fd).st_size and not _ends_with_newline(path):
            line = "\n" + line  # a torn line of a killed run stays alone on its line
        os.write(fd, line.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"


def rewrite_manifest(out: Path, records: list[dict]) -> None:
    """The complete manifest, in input order, replacing the appended one atomically."""
    from safeio import write_text

    write_text(out / MANIFEST, "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in records))

"""`circuits serve`: the model behind the page - trace new prompts, intervene, generate.

One model, one lock: traces and interventions run one at a time in worker threads (a trace is a
background job the page polls, so the server stays responsive while it runs).
"""

from __future__ import annotations

import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from circuits.errors import CircuitsError

MAX_GENERATE = 32


@dataclass
class LiveModel:
    rm: Any  # circuits.replacement.model.ReplacementModel
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def identity(self) -> dict:
        return self.rm.identity

    def trace(self, prompt: str, options: dict[str, Any]):
        """TraceResult of `prompt` (options: TraceConfig fields, e.g. max_feature_nodes)."""
        from pydantic import ValidationError

        from circuits.attribution.config import TraceConfig

        from circuits.trace import trace_prompt

        try:
            config = TraceConfig(**options)
        except ValidationError as err:
            first = err.errors()[0]
            raise CircuitsError(f"bad trace setting {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
        with self.lock, torch.no_grad():
            return trace_prompt(self.rm, prompt, config)

    def intervene(self, prompt: str, changes: list[dict], generate: int = 0, top: int = 10) -> dict:
        """Top next tokens before and after setting features; greedy text before and after."""
        from circuits.interventions import intervene

        if not isinstance(changes, list) or not changes:
            raise CircuitsError("choose at least one feature to intervene on")
        if not 0 <= int(generate) <= MAX_GENERATE:
            raise CircuitsError(f"generate between 0 and {MAX_GENERATE} tokens")
        interventions = [_intervention(c) for c in changes]
        with self.lock:
            tokens = self.rm.tokens(prompt).to(self.rm.model.cfg.device)
            result = intervene(self.rm, tokens, interventions, top=int(top), generate=int(generate))
        out = result.to_json(self.rm.tokenizer)
        out["prompt"] = prompt
        return out


def _intervention(change: dict):
    from circuits.interventions import Intervention

    try:
        layer, pos, feature = int(change["layer"]), int(change["pos"]), int(change["feature"])
        mode, amount = str(change.get("mode", "multiplier")), float(change["amount"])
    except (KeyError, TypeError, ValueError):
        raise CircuitsError(f"malformed intervention {str(change)[:100]}: needs layer, pos, feature, "
                            "mode (multiplier or value) and amount") from None
    if mode not in ("multiplier", "value"):
        raise CircuitsError(f"intervention mode must be 'multiplier' or 'value', got {mode!r}")
    return Intervention(layer, pos, feature, **{mode: amount})


@dataclass
class Job:
    id: str
    kind: str
    started: float
    status: str = "running"  # running | done | error
    result: Any = None
    error: str = ""
    finished: float | None = None

    def to_json(self) -> dict[str, Any]:
        end = self.finished or time.time()
        return {"id": self.id, "kind": self.kind, "status": self.status, "result": self.result,
                "error": self.error, "elapsed_s": round(end - self.started, 2)}


class Jobs:
    """Background jobs (traces) the page polls."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def start(self, kind: str, work: Callable[[], Any]) -> Job:
        job = Job(uuid.uuid4().hex[:12], kind, time.time())
        with self._lock:
            self._jobs[job.id] = job

        def run() -> None:
            try:
                job.result = work()
                job.status = "done"
            except CircuitsError as err:
                job.error, job.status = str(err), "error"
            except Exception as err:  # the page shows one line; the server log keeps the trace
                traceback.print_exc()
                job.error, job.status = f"internal error: {type(err).__name__}: {err}", "error"
            finally:
                job.finished = time.time()

        threading.Thread(target=run, daemon=True, name=f"job-{job.id}").start()
        return job

    def get(self, job_id: str) -> Job:
        with self._lock:
            if job_id not in self._jobs:
                raise KeyError(job_id)
            return self._jobs[job_id]

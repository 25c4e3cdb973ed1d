"""Progress bar (tokens/s, loss, FVU, L0) and the optional JSONL log of a training run.

Each log line covers the steps since the previous one: FVU per layer = summed squared error /
summed batch variance over the window, L0 = active features per token, dead = silent features.
The log is appended to, never truncated: on resume only the lines this run (its `run` id) wrote
after its last checkpoint are dropped; lines of other runs or other tools are kept as they were.
A log that stops accepting lines (a full disk, /dev/full, a vanished mount) never stops training:
one warning on stderr, and the run goes on without its log (its checkpoints and result are saved).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from transcoders.distributed import DistInfo, all_reduce_sum


class TrainLogger:
    def __init__(self, cfg, info: DistInfo, progress: bool, log_path, start_step: int, run_id: str | None = None):
        self.cfg, self.info, self.run_id = cfg, info, run_id
        self.log_path = Path(log_path) if log_path and info.is_main else None
        if self.log_path is not None and start_step > 0:
            drop_lines_after_checkpoint(self.log_path, run_id, start_step)
        self.bar = None
        self.eval_cpu_s = 0.0  # CPU spent in periodic held-out scoring (cumulative, this process)
        if progress and info.is_main:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=cfg.n_steps * cfg.batch_size, initial=start_step * cfg.batch_size,
                            unit="tok", unit_scale=True, desc=f"train {cfg.transcoder.kind}", dynamic_ncols=True)
        self._reset()

    def _reset(self) -> None:
        self.sums: dict[str, torch.Tensor | float] = {}
        self.n_steps = 0
        self.t0 = time.perf_counter()

    def step(self, parts: dict, batch_size: int) -> None:
        for key in ("loss", "recon", "sparsity", "preact", "auxk", "err_layer", "var_layer", "active_layer"):
            value = parts[key].detach().double().cpu()
            self.sums[key] = self.sums.get(key, 0) + (value if key.endswith("_layer") else value * parts["n"])
        self.sums["n"] = self.sums.get("n", 0) + parts["n"]
        self.last = parts
        self.n_steps += 1
        if self.bar is not None:
            self.bar.update(batch_size)

    def flush(self, state) -> dict:
        if not self.n_steps:
            return {}
        keys = ("loss", "recon", "sparsity", "preact", "auxk", "n")
        scal = all_reduce_sum(torch.tensor([float(self.sums[k]) for k in keys], dtype=torch.float64), self.info)
        err, var, act = (all_reduce_sum(self.sums[k], self.info) for k in ("err_layer", "var_layer", "active_layer"))
        n = float(scal[5])
        fvu = err / var.clamp_min(1e-12)
        l0 = act / n
        secs = time.perf_counter() - self.t0
        rec = {"run": self.run_id, "step": state.step, "tokens": state.tokens_seen,
               "loss": float(scal[0] / n), "recon": float(scal[1] / n), "sparsity": float(scal[2] / n),
               "preact": float(scal[3] / n), "auxk": float(scal[4] / n), "lambda": self.last["lambda"], "lr": self.last["lr"],
               "fvu_mean": float(fvu.mean()), "fvu_per_layer": [round(float(v), 5) for v in fvu],
               "l0_total": float(l0.sum()), "l0_per_layer": [round(float(v), 2) for v in l0],
               "dead_fraction": state.dead_fraction(), "tokens_per_s": n / max(secs, 1e-9),
               "elapsed_s": round(state.elapsed(), 2), "process_cpu_s": round(time.process_time(), 2),
               "eval_cpu_s": round(self.eval_cpu_s, 2)}
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{rec['loss']:.3g}", fvu=f"{rec['fvu_mean']:.3f}",
                                 l0=f"{rec['l0_total']:.1f}", dead=f"{rec['dead_fraction']:.2f}", refresh=False)
        if self.log_path is not None:
            self._append(json.dumps(rec) + "\n")
        self._reset()
        return rec

    def heldout(self, state, report: dict, cpu_s: float, wall_s: float) -> None:
        """One `heldout` line: the periodic held-out score at this step (FVU, L0, dead per layer), which
        took cpu_s / wall_s. Its CPU is counted apart (eval_cpu_s) and its wall time is left out of the
        current window's tokens/s."""
        self.eval_cpu_s += cpu_s
        self.t0 += wall_s
        rec = {"run": self.run_id, "step": state.step, "tokens": state.tokens_seen, "heldout": report,
               "elapsed_s": round(state.elapsed(), 2), "process_cpu_s": round(time.process_time(), 2),
               "eval_cpu_s": round(self.eval_cpu_s, 2)}
        if self.bar is not None:
            self.bar.write(f"held-out at {state.tokens_seen:,} tokens: FVU {report.get('fvu_mean', float('nan')):.3f}")
        if self.log_path is not None:
            self._append(json.dumps(rec) + "\n")

    def _append(self, line: str) -> None:
        try:
            with open(self.log_path, "a") as f:
                f.write(line)
        except OSError as err:
            message = (f"warning: cannot write the log {self.log_path} ({err.strerror or err}); "
                       "training goes on without it")
            if self.bar is not None:
                self.bar.write(message, file=sys.stderr)
            else:
                print(message, file=sys.stderr, flush=True)
            self.log_path = None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def drop_lines_after_checkpoint(path: Path, run_id: str | None, start_step: int) -> None:
    """Drop the lines run `run_id` wrote after step `start_step` (a resumed run writes them again);
    every other line (other runs, other tools, non-JSON) stays byte for byte. Checkpoints older than
    run ids (run_id None): lines with our record's keys and no run id."""
    from safeio import write_bytes
    from safeio.paths import is_special

    if is_special(path) or not path.is_file():
        return
    lines = path.read_bytes().splitlines(keepends=True)
    keep = [line for line in lines if not _written_after(line, run_id, start_step)]
    if len(keep) != len(lines):
        write_bytes(path, b"".join(keep), "log file")


def _written_after(line: bytes, run_id: str | None, start_step: int) -> bool:
    try:
        rec = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    if not isinstance(rec, dict) or not isinstance(rec.get("step"), int) or rec["step"] <= start_step:
        return False
    if run_id is not None:
        return rec.get("run") == run_id
    return "run" not in rec and {"step", "tokens", "fvu_per_layer", "l0_per_layer"} <= rec.keys()

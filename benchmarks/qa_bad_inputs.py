"""The new-user QA pass of issue 13, rerunnable: bad and odd inputs across every command.

    python benchmarks/qa_bad_inputs.py [--only SUBSTRING] [--keep] [--verbose]

Sets up a private $CIRCUITS_HOME in a temporary folder: builds `world-tiny`, trains a small CLT, traces
a prompt, indexes features, then makes damaged copies (NaN / integer weights, a missing layer file,
a truncated feature index, a cached model with a wrong tensor shape, an edgeless graph) and a folder
of "user files" (notes, a data folder, a log with foreign lines, a symlinked output). Then it runs
each case through the real CLI, in-process (typer's CliRunner) or, for special files, as a
subprocess, and checks the promises:

- bad input: exit status 2, and stderr ends in exactly one line `error: ...` (no control
  characters, no pickle advice), with no traceback anywhere;
- good input: exit status 0; with --json, stdout is strict JSON (no NaN / Infinity);
- no file of the user's is changed unless the case names it as an output, and no special file or
  symlink is replaced by a regular file.

Prints one row per case (FAIL rows with the reason) and a summary; exits 1 if any case failed.
About 3-5 minutes on 2 busy CPU cores. Not a test: tests/ cover each class with fast unit tests.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "calc: 36+59="
SWEPT = ".swept.json.4194305.0123456789ab.d73f57ebde4a.circuits-tmp"  # safeio.write.temp_name("swept.json", 4194305, "0123456789ab")
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@dataclass
class Case:
    name: str
    argv: list[str]
    expect: str  # "error" | "ok" | "any" (no traceback; exit 0, or 2 with one error line)
    writes: tuple[str, ...] = ()  # paths (relative to the work folder) the case may change
    check: Callable[["Outcome"], str | None] | None = None  # extra check: None or a failure reason
    env: dict[str, str] = field(default_factory=dict)
    subprocess: bool = False
    json: bool = False
    stdout: str = ""  # subprocess only: "full" (/dev/full) or "closed"
    sigint_after: float | None = None  # subprocess only: send SIGINT this many seconds after the start
    around: Callable[[Path], object] | None = None  # a context manager held while the case runs


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    exception: BaseException | None
    seconds: float


# --- running --------------------------------------------------------------------------------
def run_case(case: Case, work: Path) -> Outcome:
    argv = [a.replace("{W}", str(work)) for a in case.argv]
    env = {k: v.replace("{W}", str(work)) for k, v in case.env.items()}
    t0 = time.perf_counter()
    if case.around is not None:
        with case.around(work):
            return run_case(Case(case.name, case.argv, case.expect, env=case.env, subprocess=case.subprocess,
                                 stdout=case.stdout, sigint_after=case.sigint_after), work)
    if case.subprocess:
        return _run_subprocess(case, argv, env, work, t0)
    from typer.testing import CliRunner

    from circuits.cli.main import app

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        result = CliRunner().invoke(app, argv, env={"COLUMNS": "80", **env}, terminal_width=80)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    exc = result.exception if not isinstance(result.exception, SystemExit) else None
    return Outcome(result.exit_code, result.stdout, result.stderr, exc, time.perf_counter() - t0)


def _run_subprocess(case: Case, argv: list[str], env: dict, work: Path, t0: float) -> Outcome:
    import signal

    full_env = {"COLUMNS": "80", **os.environ, **env, "PYTHONPATH": str(ROOT)}
    out = {"full": open("/dev/full", "w"), "closed": None}.get(case.stdout, subprocess.PIPE)
    pre = (lambda: os.close(1)) if case.stdout == "closed" else None
    proc = subprocess.Popen([sys.executable, "-m", "circuits", *argv], stdout=out, stderr=subprocess.PIPE,
                            env=full_env, cwd=work, preexec_fn=pre)
    if case.sigint_after is not None:
        time.sleep(case.sigint_after)
        proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=600)
    if case.stdout == "full":
        out.close()
    return Outcome(proc.returncode, (stdout or b"").decode("utf-8", "replace"), stderr.decode("utf-8", "replace"),
                   None, time.perf_counter() - t0)


def verdict(case: Case, out: Outcome) -> str | None:
    """None if the case kept every promise, else the first broken one."""
    if out.exception is not None:
        return f"traceback: {type(out.exception).__name__}: {str(out.exception)[:120]}"
    if "Traceback (most recent call last)" in out.stdout + out.stderr:
        return "traceback printed"
    expect = case.expect
    if expect == "any":
        expect = "ok" if out.code == 0 else "error"
    if expect == "interrupted":  # Ctrl-C: status 130 and the one line `interrupted` (or it finished first)
        lines = [ln for ln in re.split(r"[\r\n]", out.stderr) if ln.strip()]
        if out.code == 0:
            return None
        return None if out.code == 130 and lines == ["interrupted"] else \
            f"exit status {out.code}, stderr {lines[-3:]!r}, expected 130 and one line 'interrupted'"
    if expect == "error":
        if out.code != 2:
            return f"exit status {out.code}, expected 2 (stderr: {out.stderr.strip()[-150:]!r})"
        lines = [ln for ln in re.split(r"[\r\n]", out.stderr) if ln.strip()]
        if not lines or not lines[-1].startswith("error: "):
            return f"last stderr line is not 'error: ...': {lines[-3:]!r}"
        if sum(ln.startswith("error") for ln in lines) != 1 or any(ln.startswith(("Usage:", "Try ")) for ln in lines):
            return f"more than one error line: {lines[-4:]!r}"
        if CONTROL.search(lines[-1]):
            return f"control characters in the error line: {lines[-1]!r}"
        if "pickle" in lines[-1].lower():
            return f"suggests pickle: {lines[-1]!r}"
    else:
        if out.code != 0:
            return f"exit status {out.code}, expected 0: {out.stderr.strip()[-200:]!r}"
        if case.json:
            try:
                json.loads(out.stdout, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
            except ValueError as err:
                return f"stdout is not strict JSON ({str(err)[:80]})"
    if case.check is not None:
        return case.check(out)
    return None


# --- the user's files -------------------------------------------------------------------------
def snapshot(work: Path) -> dict[str, tuple]:
    """Every entry under the work folder (but the cache) -> (kind, link target / content hash)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(work):
        dirnames[:] = [d for d in dirnames if d not in ("home", "home2")]
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(work))
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir",)
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", hashlib.sha256(p.read_bytes()).hexdigest())
            else:
                out[rel] = ("special", stat.S_IFMT(st.st_mode))
    return out


def changed_user_files(before: dict, after: dict, writes: tuple[str, ...]) -> list[str]:
    allowed = tuple(w.rstrip("/") for w in writes)

    def named(rel: str) -> bool:
        return any(rel == a or rel.startswith(a + "/") for a in allowed)

    return sorted(rel for rel in set(before) | set(after)
                  if before.get(rel) != after.get(rel) and not named(rel))


# --- setup ----------------------------------------------------------------------------------
def setup(work: Path, log: Callable[[str], None]) -> None:
    """The model, a transcoder, graphs, a feature index, their damaged copies and the user's files."""
    import numpy as np
    import torch
    from safetensors.torch import load_file, save_file

    from graphs import load_graph, save_graph

    steps = [
        ["models", "build", "world-tiny"],
        ["transcoders", "train", "--model", "world-tiny", "--features", "32", "--tokens", "4096",
         "--out", str(work / "tc"), "--no-progress"],
        ["trace", PROMPT, "-m", "world-tiny", "-t", str(work / "tc"), "-o", str(work / "g.json"),
         "--full", str(work / "g.npz"), "--graphml", str(work / "g.graphml"), "--json"],
    ]
    for argv in steps:
        out = run_case(Case("setup", argv, "ok"), work)
        if out.code != 0 or out.exception is not None:
            raise SystemExit(f"setup step {' '.join(argv[:3])} failed: {out.exception or out.stderr[-500:]}")
        log(f"setup: {' '.join(argv[:2])} ({out.seconds:.1f} s)")
    shutil.copytree(work / "tc", work / "tc_idx")
    out = run_case(Case("setup", ["features", "index", "--model", "world-tiny", "--transcoders", str(work / "tc_idx"),
                                  "--tokens", "3000", "--json"], "ok"), work)
    if out.code != 0:
        raise SystemExit(f"setup: features index failed: {out.exception or out.stderr[-500:]}")

    def damaged(name: str, edit: Callable[[Path], None]) -> None:
        shutil.copytree(work / "tc", work / name)
        edit(work / name)

    def poison(d: Path, key_file: str, fn) -> None:
        tensors = load_file(str(d / key_file))
        key = next(iter(tensors))
        tensors[key] = fn(tensors[key])
        save_file(tensors, str(d / key_file))

    def nan_last(t):
        t = t.clone()
        t.view(-1)[-1] = float("nan")
        return t

    n_layers = len(list((work / "tc").glob("W_enc_*.safetensors")))
    damaged("tc_nan", lambda d: poison(d, "W_dec_0.safetensors", nan_last))
    damaged("tc_int", lambda d: poison(d, "W_enc_0.safetensors", lambda t: t.round().to(torch.int32)))
    damaged("tc_missing_mid", lambda d: (d / "W_enc_0.safetensors").unlink())
    damaged("tc_missing_last", lambda d: (d / f"W_dec_{n_layers - 1}.safetensors").unlink())
    damaged("tc_missing_last_enc", lambda d: (d / f"W_enc_{n_layers - 1}.safetensors").unlink())
    shutil.copytree(work / "tc_idx", work / "tc_idx_trunc")
    npz = work / "tc_idx_trunc" / "feature_index.npz"
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    graph = load_graph(work / "g.npz")
    graph.edges = np.zeros_like(graph.edges)
    save_graph(graph, work / "empty.npz")
    cache = work / "home" / "models" / "world-tiny"
    shutil.copytree(cache, work / "home2" / "models" / "world-tiny")
    weights = work / "home2" / "models" / "world-tiny" / "model.safetensors"
    state = load_file(str(weights))
    key = next(k for k in state if k.endswith("W_in"))
    state[key] = torch.zeros(*state[key].shape[:-1], state[key].shape[-1] + 1)
    save_file(state, str(weights))

    user = work / "user"
    (user / "data").mkdir(parents=True)
    (user / "notes.txt").write_text("my notes\n")
    (user / "data" / "a.txt").write_text("precious\n")
    (user / "data" / "b.bin").write_bytes(os.urandom(256))
    (user / "existing.log").write_text("my own line\n{\"step\": 999, \"note\": \"not yours\"}\n")
    (user / "real.json").write_text("{}\n")
    (user / "link.json").symlink_to(user / "real.json")
    (user / "afile").write_text("a file, not a folder\n")
    (user / SWEPT).write_text("half a graph from a killed run")  # marked as ours; pid > pid_max: dead
    (user / ".swept.json.tmp-4194305").write_text("the user's own file that looks like a temporary")
    (user / "loop1").symlink_to(user / "loop2")
    (user / "loop2").symlink_to(user / "loop1")
    os.mkfifo(user / "fifo")
    shutil.copytree(work / "tc", work / "tc_over")
    (work / "tc_over" / "README.txt").write_text("the user's note inside the output folder\n")


# --- the cases ------------------------------------------------------------------------------
def cases(work: Path, has_cuda: bool) -> list[Case]:
    M = ["--model", "world-tiny"]
    TC = ["--transcoders", "{W}/tc"]
    TR = ["trace", PROMPT, *M, "-t", "{W}/tc"]
    FID = ["fidelity", "--model", "world-tiny", "--tokens", "512", "--no-progress"]
    TRAIN = ["transcoders", "train", "--model", "world-tiny", "--features", "32", "--tokens", "4096",
             "--no-progress"]
    IV = ["intervene", PROMPT, *M, *TC]
    E = "error"
    out: list[Case] = []

    def bad(name, *argv, **kw):
        out.append(Case(name, list(argv), E, **kw))

    def ok(name, *argv, **kw):
        out.append(Case(name, list(argv), "ok", **kw))

    def any_(name, *argv, **kw):
        out.append(Case(name, list(argv), "any", **kw))

    def contains(text: str, where: str = "stdout", absent: str | None = None):
        def check(o: Outcome) -> str | None:
            s = o.stdout if where == "stdout" else o.stderr
            if text not in s:
                return f"{where} lacks {text!r}"
            if absent is not None and absent in s:
                return f"{where} has {absent!r}"
            return None
        return check

    # models
    bad("models build unknown", "models", "build", "bogus")
    bad("models predict unknown", "models", "predict", "bogus", "x")
    bad("models eval unknown", "models", "eval", "bogus")
    for top in ("0", "-1", "nan", "1e999", "abc"):
        bad(f"models predict --top {top}", "models", "predict", "world-tiny", "x", "--top", top)
    bad("models predict --device bogus", "models", "predict", "world-tiny", "x", "--device", "bogus")
    if not has_cuda:
        bad("models predict --device cuda (no CUDA)", "models", "predict", "world-tiny", "x", "--device", "cuda")
    bad("empty CIRCUITS_HOME", "models", "list", env={"CIRCUITS_HOME": ""})
    bad("CIRCUITS_HOME is a file", "models", "predict", "world-tiny", "x", env={"CIRCUITS_HOME": "{W}/user/afile"})
    ok("models list --json", "models", "list", "--json", json=True)
    ok("models predict --json", "models", "predict", "world-tiny", PROMPT, "--json", json=True)
    ok("models list: corrupt cache is not 'cached'", "models", "list", env={"CIRCUITS_HOME": "{W}/home2"},
       check=lambda o: None if re.search(r"world-tiny\s+corrupt", o.stdout) else f"world-tiny not shown corrupt: {o.stdout!r}")
    bad("models predict on a corrupt cache", "models", "predict", "world-tiny", "x", env={"CIRCUITS_HOME": "{W}/home2"},
        check=contains("models build world-tiny --force", "stderr"))
    bad("control characters are escaped", "models", "predict", "bogus\x1b[2J\x07", "x")
    bad("unknown command", "trac", PROMPT)
    bad("unknown subcommand", "models", "lst")
    bad("prune -o onto its own input", "prune", "{W}/g.npz", "-o", "{W}/g.npz")

    # transcoders info
    ok("transcoders info --json", "transcoders", "info", "{W}/tc", "--json", json=True)
    for name, path in (("missing", "{W}/nope"), ("a file", "{W}/user/notes.txt"), ("no config", "{W}/user/data"),
                       ("NaN weights", "{W}/tc_nan"), ("integer weights", "{W}/tc_int"),
                       ("missing first layer file", "{W}/tc_missing_mid"),
                       ("missing last layer file", "{W}/tc_missing_last"),
                       ("missing last encoder file", "{W}/tc_missing_last_enc"), ("viewer JSON", "{W}/g.json")):
        bad(f"transcoders info: {name}", "transcoders", "info", path)

    # transcoders train
    for flag, value in (("--features", "0"), ("--features", "-5"), ("--features", "nan"), ("--tokens", "0"),
                        ("--tokens", "-1"), ("--tokens", "1e999"), ("--tokens", str(10**15)), ("--lr", "nan"),
                        ("--lr", "-1"), ("--lr", "inf"), ("--batch-size", "0"), ("--seq-len", "1"),
                        ("--kind", "bogus"), ("--log-every", "0"), ("--seed", "nan")):
        base = TRAIN if flag not in ("--features", "--tokens") else TRAIN[:4] + (
            ["--tokens", "4096"] if flag == "--features" else ["--features", "32"]) + ["--no-progress"]
        bad(f"train {flag} {value}", *base, flag, value, "--out", "{W}/t_new")
    bad("train --out is a file", *TRAIN, "--out", "{W}/user/afile")
    bad("train --out under a file", *TRAIN, "--out", "{W}/user/afile/sub")
    bad("train --out exists", *TRAIN, "--out", "{W}/tc")
    bad("train --resume --overwrite", *TRAIN, "--out", "{W}/tc", "--resume", "--overwrite")
    bad("train --resume without a checkpoint", *TRAIN, "--out", "{W}/t_new", "--resume")
    bad("train --cache-dir of user files", *TRAIN, "--out", "{W}/t_new", "--cache-dir", "{W}/user/data",
        "--activation-tokens", "2048")
    bad("train --cache-dir is a file", *TRAIN, "--out", "{W}/t_new", "--cache-dir", "{W}/user/notes.txt",
        "--activation-tokens", "2048")
    bad("train --log is a folder", *TRAIN, "--out", "{W}/t_new", "--log", "{W}/user/data")
    bad("train --log in a missing folder", *TRAIN, "--out", "{W}/t_new", "--log", "{W}/nope/log.jsonl")
    bad("train --corpus missing", *TRAIN, "--out", "{W}/t_new", "--corpus", "{W}/nope.txt")
    bad("train --corpus is a folder", *TRAIN, "--out", "{W}/t_new", "--corpus", "{W}/user/data")
    bad("train --model unknown", "transcoders", "train", "--model", "bogus", "--out", "{W}/t_new")
    bad("train activations beyond memory", *TRAIN[:6], "--tokens", str(10**12), "--activation-tokens",
        str(10**12 - 1), "--out", "{W}/t_new", "--no-progress")
    ok("train --log appends to the user's log", *TRAIN, "--out", "{W}/t_log", "--log", "{W}/user/existing.log",
       writes=("t_log", "user/existing.log"),
       check=lambda o: None if (work / "user" / "existing.log").read_text().startswith(
           "my own line\n{\"step\": 999, \"note\": \"not yours\"}\n") else "the user's log lines were lost")
    ok("train --overwrite keeps the user's other files", *TRAIN, "--out", "{W}/tc_over", "--overwrite",
       "--seed", "5", writes=("tc_over",),
       check=lambda o: None if (work / "tc_over" / "README.txt").exists() and not (work / "tc_over" / ".new-transcoder").exists()
       else "--overwrite removed the user's file or left its staging folder")

    # fidelity
    for name, path in (("NaN weights", "{W}/tc_nan"), ("integer weights", "{W}/tc_int"),
                       ("missing layer file", "{W}/tc_missing_mid"), ("missing", "{W}/nope"),
                       ("a file", "{W}/user/notes.txt")):
        bad(f"fidelity: {name}", *FID, "--transcoders", path)
    for value in ("0", "nan", "-5", "1e999"):
        bad(f"fidelity --tokens {value}", *FID[:3], "--transcoders", "{W}/tc", "--tokens", value)
    bad("fidelity --plot is a folder", *FID, *TC, "--plot", "{W}/user/data")
    bad("fidelity --plot in a missing folder", *FID, *TC, "--plot", "{W}/nope/x.png")
    bad("fidelity --plot under a file", *FID, *TC, "--plot", "{W}/user/afile/x.png")
    ok("fidelity --json", *FID, *TC, "--json", json=True)

    # trace
    bad("trace --target X --contrast X", *TR, "--target", "Austin", "--contrast", "Austin")
    bad("trace --contrast without --target", *TR, "--contrast", "Austin")
    for name, flag, path in (("-o is a folder", "-o", "{W}/user/data"), ("-o in a missing folder", "-o", "{W}/nope/g.json"),
                             ("-o under a file", "-o", "{W}/user/afile/g.json"), ("--full under a file", "--full", "{W}/user/afile/g.npz"),
                             ("--graphml is a folder", "--graphml", "{W}/user/data"), ("-o unwritable", "-o", "/proc/g.json")):
        bad(f"trace {name}", *TR, flag, path)
    for flag, value in (("--node-threshold", "0"), ("--node-threshold", "-1"), ("--node-threshold", "2"),
                        ("--node-threshold", "nan"), ("--node-threshold", "inf"), ("--edge-threshold", "nan"),
                        ("--max-feature-nodes", "0"), ("--max-feature-nodes", "-1"), ("--max-n-logits", "0"),
                        ("--batch-size", "0"), ("--batch-size", "1e999")):
        bad(f"trace {flag} {value}", *TR, flag, value)
    for name, path in (("missing", "{W}/nope"), ("a file", "{W}/user/notes.txt"), ("NaN weights", "{W}/tc_nan"),
                       ("integer weights", "{W}/tc_int"), ("missing layer file", "{W}/tc_missing_mid"),
                       ("missing last encoder file", "{W}/tc_missing_last_enc")):
        bad(f"trace -t {name}", "trace", PROMPT, *M, "-t", path,
            check=contains(".safetensors", "stderr") if name.endswith("layer file") or "encoder" in name else None)
    bad("trace --model unknown", "trace", PROMPT, "-m", "bogus")
    bad("trace --device bogus", *TR, "--device", "bogus")
    bad("trace --target with control characters", *TR, "--target", "\x1b[31mzz\x07")
    any_("trace an empty prompt", "trace", "", *M, "-t", "{W}/tc")
    ok("trace --json", *TR, "--json", json=True)
    ok("trace -o through a symlink", *TR, "-o", "{W}/user/link.json", writes=("user/real.json",),
       check=lambda o: None if (work / "user" / "link.json").is_symlink() and
       "nodes" in json.loads((work / "user" / "real.json").read_text()) else "the symlink was replaced or its target not written")
    ok("trace -o sweeps a killed writer's temporary file", *TR, "-o", "{W}/user/swept.json",
       writes=("user/swept.json", f"user/{SWEPT}"),
       check=lambda o: None if not (work / "user" / SWEPT).exists() else "the stale temporary file is still there")
    ok("trace -o /dev/null", *TR, "-o", "/dev/null",
       check=lambda o: None if stat.S_ISCHR(os.stat("/dev/null").st_mode) else "/dev/null was replaced")
    ok("trace -o /dev/stdout (subprocess)", *TR, "-o", "/dev/stdout", subprocess=True, check=contains('"nodes"'))

    # prune
    for name, path, said in (("viewer JSON", "{W}/g.json", "--full"), ("GraphML", "{W}/g.graphml", "--full"),
                             ("a text file", "{W}/user/notes.txt", "--full"), ("missing", "{W}/nope.npz", "no graph"),
                             ("a folder", "{W}/user/data", "directory")):
        bad(f"prune {name}", "prune", path, check=contains(said, "stderr"))
    bad("prune -o is a folder", "prune", "{W}/g.npz", "-o", "{W}/user/data")
    bad("prune -o under a file", "prune", "{W}/g.npz", "-o", "{W}/user/afile/p.json")
    for value in ("nan", "0", "1.5", "-inf"):
        bad(f"prune --node-threshold {value}", "prune", "{W}/g.npz", "--node-threshold", value)
    ok("prune --json", "prune", "{W}/g.npz", "-o", "{W}/p.json", "--json", json=True, writes=("p.json",))
    ok("prune an edgeless graph says it is empty", "prune", "{W}/empty.npz", "--json", json=True,
       check=lambda o: None if "empty" in o.stdout and json.loads(o.stdout)["scores"]["replacement"] is None
       else "an edgeless graph was scored")

    # intervene
    for value in ("1e999", "x1e999", "nan", "inf", "-inf", "xnan"):
        bad(f"intervene --set =...{value}", *IV, "--set", f"0:-1:0={value}")
    any_("intervene --set a huge finite value", *IV, "--set", "0:-1:0=3e38", "--json", json=True)
    for spec in ("0:-1", "a:b:c=1", "99:-1:0=1", "0:-1:99999=1", "0:99:0=1", "0:0:0=1"):
        bad(f"intervene --set {spec}", *IV, "--set", spec)
    for flag, value in (("--top", "0"), ("--generate", "-1"), ("--layers", "9:1"), ("--layers", "a")):
        bad(f"intervene {flag} {value}", *IV, "--set", "0:-1:0=5", flag, value)
    any_("intervene -t NaN weights (lazy: only rows it reads)", "intervene", PROMPT, *M, "--transcoders",
         "{W}/tc_nan", "--set", "0:-1:0=5", "--json", json=True)
    ok("intervene --json", *IV, "--set", "0:-1:0=5", "--json", json=True)

    # features
    for flag, value in (("--tokens", "0"), ("--top", "0"), ("--batch-size", "0"), ("--before", "-1"),
                        ("--tokens", "nan")):
        bad(f"features index {flag} {value}", "features", "index", *M, "--transcoders", "{W}/tc_idx", flag, value)
    bad("features show: truncated index", "features", "show", "0:0", *M, "--transcoders", "{W}/tc_idx_trunc")
    bad("features show: malformed id", "features", "show", "a:b", *M, "--transcoders", "{W}/tc_idx")
    bad("features show: layer out of range", "features", "show", "99:0", *M, "--transcoders", "{W}/tc_idx")
    bad("features show: no index", "features", "show", "0:0", *M, "--transcoders", "{W}/tc")
    ok("features show --json", "features", "show", "0:0", *M, "--transcoders", "{W}/tc_idx", "--json", json=True)

    # demos and validate (parsing only: the runs themselves take minutes)
    for flag, value in (("--multiplier", "nan"), ("--multiplier", "inf"), ("--a", "5"), ("--top", "0")):
        bad(f"demo addition {flag} {value}", "demo", "addition", *M, *TC, flag, value)
    for flag, value in (("--inhibit", "nan"), ("--inject-scale", "inf"), ("--k", "0")):
        bad(f"demo two-hop {flag} {value}", "demo", "two-hop", *M, *TC, flag, value)
    for flag, value in (("--n", "1"), ("--inhibit", "nan"), ("--inject-scale", "-inf"), ("--top-k", "0")):
        bad(f"validate {flag} {value}", "validate", *M, *TC, flag, value)

    # view (never starts a server here)
    bad("view a missing graph", "view", "{W}/nope.json")
    bad("view a text file", "view", "{W}/user/notes.txt")
    bad("view --export-features under a file", "view", "{W}/g.json", "--export-features", "{W}/user/afile/f")
    bad("view --port 99999", "view", "{W}/g.json", "--port", "99999")
    bad("serve --port -1", "serve", *M, "--port", "-1")
    bad("serve --host unresolvable", "serve", *M, "--host", "999.1.1.1", "--port", "0")

    # issue 22: the CLI's QA pass
    bad_utf8 = "calc: 36+59=\udcff"  # the byte 0xff of `$'calc: 36+59=\\xff'`, as Python hands it over
    bad("trace: a prompt that is not UTF-8", "trace", bad_utf8, *M, "-t", "{W}/tc", check=contains("UTF-8", "stderr"))
    bad("intervene: a prompt that is not UTF-8", "intervene", bad_utf8, *M, *TC, "--set", "0:-1:0=1",
        check=contains("UTF-8", "stderr"))
    bad("models predict: a prompt that is not UTF-8 (subprocess)", "models", "predict", "world-tiny", bad_utf8,
        subprocess=True, check=contains("UTF-8", "stderr"))
    bad("models list > /dev/full (subprocess)", "models", "list", subprocess=True, stdout="full",
        check=contains("cannot write to standard output", "stderr"))
    bad("trace --json > /dev/full (subprocess)", *TR, "--json", subprocess=True, stdout="full",
        check=contains("cannot write to standard output", "stderr"))
    bad("models list, stdout closed (subprocess)", "models", "list", subprocess=True, stdout="closed",
        check=contains("standard output is closed", "stderr"))
    bad("trace -o a name too long", *TR, "-o", "{W}/user/" + "x" * 300 + ".json", check=contains("too long", "stderr"))
    bad("trace -o a folder path that does not exist", *TR, "-o", "{W}/user/newdir/", check=contains("ends in '/'", "stderr"))
    bad("trace -o a symlink loop", *TR, "-o", "{W}/user/loop1", check=contains("symlink loop", "stderr"))
    out.append(Case("Ctrl-C half a second into start-up (subprocess)", ["models", "predict", "world-tiny", PROMPT],
                    "interrupted", subprocess=True, sigint_after=0.5))
    out.append(Case("Ctrl-C two seconds into start-up (subprocess)", ["models", "predict", "world-tiny", PROMPT],
                    "interrupted", subprocess=True, sigint_after=2.0))
    bad("features index --tokens 1e10", "features", "index", *M, "--transcoders", "{W}/tc_idx", "--tokens", "10000000000",
        check=contains("more than the corpus can supply", "stderr"))
    bad("fidelity --tokens 1e10", *FID[:3], *TC, "--tokens", "10000000000", check=contains("can supply", "stderr"))
    ok("train --log /dev/full: a warning, the transcoder saved", *TRAIN, "--out", "{W}/t_new", "--log", "/dev/full",
       "--log-every", "1", check=lambda o: None if "warning: cannot write the log" in o.stderr and
       (work / "t_new" / "config.yaml").exists() else "no warning, or nothing saved")
    bad("train --out a folder another process writes", *TRAIN, "--out", "{W}/t_new", around=_held_lock,
        check=contains("is in use", "stderr"))
    ok("trace -o keeps a user's file that only looks like a temporary", *TR, "-o", "{W}/user/swept.json",
       writes=("user/swept.json", f"user/{SWEPT}"),
       check=lambda o: None if (work / "user" / ".swept.json.tmp-4194305").exists() else "the user's file was swept")
    bad("--model gpt2 says it is a hub id", "models", "predict", "gpt2", "x", env={"HF_HUB_OFFLINE": "1"},
        check=contains("as a Hugging Face hub id", "stderr"))
    bad("trace --memory-gb 1e-9 shows a real number", *TR, "--memory-gb", "1e-9",
        check=lambda o: None if "0.0 GB" not in o.stderr and re.search(r"raise --memory-gb (to|above) 0\.[0-9]*[1-9]", o.stderr)
        else "0.0 GB")
    for name, path, said in (("/dev/null", "/dev/null", "character device"), ("a folder", "{W}/user/data", "is a folder"),
                             ("a FIFO", "{W}/user/fifo", "FIFO")):
        bad(f"train --corpus {name} says what it is", *TRAIN, "--out", "{W}/t_new", "--corpus", path,
            check=contains(said, "stderr"))
    ok("models corpus world-tiny (its help allows a model)", "models", "corpus", "world-tiny", "--json", json=True)
    ok("--version", "--version", check=contains("circuits "))
    ok("-h", "trace", "-h", check=_help_check)
    ok("models list | cat, COLUMNS=0 (subprocess)", "models", "list", subprocess=True, env={"COLUMNS": "0"},
       check=lambda o: None if any(len(ln) > 80 for ln in o.stdout.splitlines()) and "world-tiny" in o.stdout
       else f"cut or empty: {o.stdout!r}")

    # help
    for command in (["trace"], ["intervene"], ["transcoders", "train"], ["fidelity"], ["features", "index"],
                    ["demo", "two-hop"], ["validate"], ["prune"], ["models", "predict"]):
        ok(f"help: {' '.join(command)}", *command, "--help", check=_help_check)
    return out


def _held_lock(work: Path):
    """A context manager: another process holds the lock of {W}/t_new while the case runs."""
    import contextlib

    @contextlib.contextmanager
    def held():
        holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from safeio.lock import folder_lock\n"
                                   "with folder_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(300)",
                                   str(work / "t_new")], stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            holder.stdout.readline()
            yield
        finally:
            holder.kill()
            holder.wait()
    return held()


def _help_check(o: Outcome) -> str | None:
    if "<bool>" in o.stdout:
        return "help shows <bool> after a flag"
    if re.search(r"<(str|path|int|float|list\[\w+\])>", o.stdout) or "{" in o.stdout.split("\n", 1)[0]:
        return "help shows Python types (<str>, <path>) or {argument}"
    if "(default: None)" in o.stdout:
        return "help shows (default: None)"
    long_lines = [ln for ln in o.stdout.splitlines() if len(ln) > 80]
    if long_lines:
        return f"help line over 80 columns: {long_lines[0]!r}"
    if "…" in o.stdout:
        return "help truncates option syntax"
    return None


# --- main -----------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run only cases whose name contains this")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--verbose", action="store_true", help="print every error line")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="circuits-qa-"))
    os.environ["CIRCUITS_HOME"] = str(work / "home")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    t0 = time.perf_counter()
    try:
        setup(work, print)
        todo = [c for c in cases(work, torch.cuda.is_available()) if args.only in c.name]
        failures = []
        for case in todo:
            before = snapshot(work)
            outcome = run_case(case, work)
            why = verdict(case, outcome)
            touched = changed_user_files(before, snapshot(work), case.writes + ("t_new",))
            if why is None and touched:
                why = f"changed files it was not asked to write: {touched[:4]}"
            if why is None and not stat.S_ISCHR(os.stat("/dev/null").st_mode):
                why = "/dev/null is no longer a device"
            last = [ln for ln in re.split(r"[\r\n]", outcome.stderr) if ln.strip()][-1:] or [""]
            shown = f"  {last[0][:110]}" if args.verbose and case.expect != "ok" else ""
            print(f"{'ok  ' if why is None else 'FAIL'} {case.expect:<5} {outcome.code:>3} {outcome.seconds:5.1f}s "
                  f"{case.name}{shown}" + ("" if why is None else f"\n       -> {why}"))
            if why is not None:
                failures.append(case.name)
            if (work / "t_new").exists():
                shutil.rmtree(work / "t_new")
        print(f"\n{len(todo) - len(failures)} of {len(todo)} cases kept every promise; {len(failures)} failed "
              f"({time.perf_counter() - t0:.0f} s in all, setup included)")
        return 1 if failures else 0
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""Issue 22's QA pass of the CLI, one test per defect: each failed before its fix.
(benchmarks/qa_bad_inputs.py runs the same cases, and more, through the real program.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from circuits.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "calc: 36+59="


def _run(*args, env=None):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "80", **(env or {})}, terminal_width=80)


def _one_error_line(result, after_bars: bool = False) -> str:
    """stderr is one line `error: ...` (after_bars: after the bars of a first use's training)."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [ln for ln in result.stderr.replace("\r", "\n").splitlines() if ln.strip()]
    if after_bars:
        lines = [ln for ln in lines if "|" not in ln and not ln.startswith(("first use", "training"))]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def _program(*args, stdout=subprocess.PIPE, **kw) -> subprocess.Popen:
    """`python -m circuits ARGS` as a separate process (the real program: signals, stdout)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "80", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-m", "circuits", *args], stdout=stdout, stderr=subprocess.PIPE,
                            env=env, cwd=ROOT, **kw)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err.decode("utf-8", "replace")


def _assert_one_line(code: int, err: str, status: int, start: str, after_bars: bool = False) -> str:
    """stderr is exactly one line starting with `start` (or, after_bars: progress bars, then it)."""
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip()]
    assert code == status and "Traceback" not in err, (code, err[-2000:])
    if after_bars:
        lines = [ln for ln in lines if "|" not in ln and not ln.startswith("first use")]
    assert len(lines) == 1 and lines[0].startswith(start), lines
    return lines[0]


# --- 1. invalid UTF-8 in a prompt ------------------------------------------------------------------
@pytest.mark.parametrize("command", [["trace", "calc: 36+59=\udcff", "-m", "world-tiny"],
                                     ["intervene", "calc: 36+59=\udcff", "--model", "world-tiny", "--set", "0:-1:0=1"],
                                     ["models", "predict", "world-tiny", "calc: 36+59=\udcff"]])
def test_a_prompt_that_is_not_utf8_is_one_line(command):
    """`circuits trace $'calc: 36+59=\\xff'`: Python hands the byte 0xff over as the lone surrogate
    \\udcff, which the tokenizer met with a TypeError traceback."""
    line = _one_error_line(_run(*command))
    assert "not valid UTF-8" in line and "0xff" in line


def test_the_prompt_check_is_the_engines_too(world_tiny):
    """The library (and the serve page's trace box, through it) refuses the same prompt."""
    from circuits.errors import CircuitsError
    from circuits.replacement.prompts import tokenize_prompt

    with pytest.raises(CircuitsError, match="not valid UTF-8"):
        tokenize_prompt(world_tiny.model, "calc: \udcff")
    assert tokenize_prompt(world_tiny.model, PROMPT).shape[0] > 1


def test_the_serve_page_refuses_a_prompt_that_is_not_utf8():
    from starlette.testclient import TestClient

    from circuits.viewer.app import ViewerState, create_app

    state = ViewerState()
    state.live = object()  # the prompt is refused before the model is used
    app = create_app(state)
    client = TestClient(app, base_url="http://127.0.0.1:8000", headers={"X-Circuits-Token": app.state.token})
    response = client.post("/api/trace", content=b'{"prompt": "calc: \\udcff"}',
                           headers={"content-type": "application/json"})
    assert response.status_code == 400 and "not valid UTF-8" in response.text


# --- 2. standard output that cannot be written ------------------------------------------------------
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("args", [["models", "list"], ["models", "list", "--json"], ["--help"]])
def test_stdout_on_a_full_device_is_one_line(args):
    with open("/dev/full", "w") as full:
        code, err = _finish(_program(*args, stdout=full))
    assert "No space left on device" in _assert_one_line(code, err, 2, "error: cannot write to standard output")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_trace_json_on_a_full_device_is_one_line(world_tiny):
    with open("/dev/full", "w") as full:
        code, err = _finish(_program("trace", PROMPT, "-m", "world-tiny", "--json", stdout=full))
    _assert_one_line(code, err, 2, "error: cannot write to standard output", after_bars=True)


def test_closed_stdout_is_one_line():
    """`circuits models list >&-` exited 0 having written nothing (and --json was a traceback)."""
    for args in (["models", "list"], ["models", "list", "--json"]):
        code, err = _finish(_program(*args, stdout=None, preexec_fn=lambda: os.close(1)))
        assert "standard output is closed" in _assert_one_line(code, err, 2, "error: ")


def test_a_reader_that_stops_early_ends_quietly():
    """`circuits models list | head -1`: no traceback, no error line, the SIGPIPE status."""
    proc = _program("models", "list")
    proc.stdout.close()  # the reader is gone before the first line
    code, err = _finish(proc)
    assert code == 141 and err.strip() == "", (code, err)


# --- 3. output names ---------------------------------------------------------------------------------
def test_output_names_the_system_cannot_hold_are_one_line(graph_npz, tmp_path):
    assert "too long" in _one_error_line(_run("prune", str(graph_npz), "-o", str(tmp_path / ("x" * 300)) + ".json"))
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    assert "symlink loop" in _one_error_line(_run("prune", str(graph_npz), "-o", str(tmp_path / "loop1")))
    assert (tmp_path / "loop1").is_symlink()
    for name in ("newdir/", "out/newdir/"):
        line = _one_error_line(_run("prune", str(graph_npz), "-o", f"{tmp_path}/{name}"))
        assert "ends in '/'" in line and "--out" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.npz", "loop1", "loop2"]


# --- 4. Ctrl-C during start-up -----------------------------------------------------------------------
@pytest.mark.parametrize("delay", [0.25, 0.5, 1.0, 2.0])
def test_ctrl_c_during_start_up_is_one_line(delay, world_tiny):
    """SIGINT while the imports run printed tracebacks (KeyboardInterrupt, or numpy's RecursionError).
    (Before the first ~0.1 s the interpreter itself is starting: no program code runs yet.)"""
    proc = _program("models", "predict", "world-tiny", PROMPT)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    code, err = _finish(proc)
    if code == 0:
        pytest.skip("the command finished before the signal came")
    _assert_one_line(code, err, 130, "interrupted")


# --- 5. token counts the corpus cannot supply -------------------------------------------------------
def test_index_and_fidelity_refuse_more_tokens_than_the_corpus_has(world_tiny, tmp_path):
    """`features index --tokens 10000000000` estimated 834 hours and `fidelity --tokens 10000000000`
    ran for ever on the endless `world` sampler; a text file's split is bounded by its bytes."""
    line = _one_error_line(_run("features", "index", "--model", "world-tiny", "--tokens", "10000000000"), after_bars=True)
    assert "more than the corpus can supply" in line and "64,321 tokens" in line  # world-tiny's training text
    tc = next(Path(os.environ["CIRCUITS_HOME"]).glob("transcoders/world-tiny/*/config.yaml")).parent
    line = _one_error_line(_run("fidelity", "--model", "world-tiny", "--transcoders", str(tc), "--tokens", "10000000000"))
    assert "held-out text has 7,136 tokens" in line
    corpus = tmp_path / "c.txt"
    corpus.write_text("".join(f"line {i} some text\n" for i in range(20)))  # lines 9 and 19 are held out
    line = _one_error_line(_run("fidelity", "--model", "world-tiny", "--transcoders", str(tc), "--tokens", "100",
                                "--corpus", str(corpus)))
    assert "at most 35 tokens" in line and "(33 bytes)" in line  # 16 + 17 bytes, a BOS each


# --- 6. a training log that cannot be written ---------------------------------------------------
TRAIN = ["transcoders", "train", "--model", "world-tiny", "--features", "32", "--tokens", "4096", "--no-progress"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_log_that_cannot_be_written_never_loses_the_training(world_tiny, tmp_path):
    """`--log /dev/full` died mid-training (rc 1) and saved nothing."""
    from transcoders.loading import load_transcoder

    result = _run(*TRAIN, "--out", str(tmp_path / "tc"), "--log", "/dev/full", "--log-every", "1")
    assert result.exit_code == 0, (result.output, result.exception)
    warnings = [ln for ln in result.stderr.splitlines() if ln.startswith("warning: cannot write the log")]
    assert len(warnings) == 1 and "No space left on device" in warnings[0]
    assert load_transcoder(tmp_path / "tc").cfg.n_features == 32


# --- 7. one writer per output folder -------------------------------------------------------------
def test_a_second_writer_of_the_same_folder_fails_at_once(world_tiny, tmp_path):
    """Three `transcoders train --out SAME` at once: two said "saved" into the same folder, and one
    that exited 0 left it missing weight files. Another process holds the folder's lock here."""
    out = tmp_path / "tc"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from safeio.lock import folder_lock\n"
         "with folder_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(120)", str(out)],
        stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == b"held"
        t0 = time.perf_counter()
        line = _one_error_line(_run(*TRAIN, "--out", str(out)))
        assert f"process {holder.pid} is writing to it" in line and time.perf_counter() - t0 < 30
        assert [p.name for p in out.iterdir()] == [".circuits-lock"]  # nothing of the second run
    finally:
        holder.kill()
        holder.wait()
    result = _run(*TRAIN, "--out", str(out))  # the dead holder's lock file is taken over
    assert result.exit_code == 0, result.output
    assert not (out / ".circuits-lock").exists() and (out / "config.yaml").exists()


def test_concurrent_trainings_into_one_folder_leave_one_whole_transcoder(world_tiny, tmp_path):
    from transcoders.loading import load_transcoder

    out = tmp_path / "tc"
    procs = [_program(*TRAIN, "--out", str(out)) for _ in range(2)]
    results = [_finish(p) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2], results
    _, err = next(r for r in results if r[0] == 2)
    assert ("is in use" in err or "already exists" in err) and "Traceback" not in err
    assert load_transcoder(out).cfg.n_features == 32 and not (out / ".circuits-lock").exists()


# --- 10. the public names ---------------------------------------------------------------------------
def test_dir_of_the_package_shows_the_five_public_names_only():
    import circuits
    import circuits.errors  # noqa: F401 - imported submodules become attributes; they are not the API
    import circuits.cli.main  # noqa: F401

    assert [n for n in dir(circuits) if not n.startswith("_")] == sorted(circuits.__all__)
    assert len(circuits.__all__) == 5 and all(getattr(circuits, n) is not None for n in circuits.__all__)


# --- 11. messages that misled --------------------------------------------------------------------
def test_a_hub_id_without_an_owner_is_said_to_be_one(hub_cache):
    """`--model gpt2` said "unknown model ... or a Hugging Face id": it is one, that cannot be fetched offline."""
    line = _one_error_line(_run("models", "predict", "gpt2", "x"))
    assert "as a Hugging Face hub id" in line and "'gpt2'" in line and "offline" in line


def test_the_memory_hint_shows_a_number_that_suffices(world_tiny):
    """`--memory-gb 1e-9` said "needs about 0.0 GB ... raise --memory-gb to 0.0"."""
    import re

    # two checks speak in turn: the forward pass's (before it runs: "above X") then the trace's ("to X")
    budget = "1e-9"
    for _ in range(3):
        result = _run("trace", PROMPT, "-m", "world-tiny", "--memory-gb", budget, "--json")
        if result.exit_code == 0:
            break
        line = _one_error_line(result, after_bars=True)
        need = re.search(r"raise --memory-gb (?:to|above) ([0-9.]+)", line).group(1)
        assert float(need) > float(budget) and f"needs about {need} GB" in line, line
        budget = need if " to " in line.split("raise")[-1] else f"{float(need) * 1.05:.3g}"
    assert result.exit_code == 0


def test_a_corpus_that_is_not_a_file_says_what_it_is(world_tiny, tmp_path):
    """`--corpus /dev/null`, a folder or a FIFO said "does not exist"."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for corpus, said in (("/dev/null", "is a character device"), (str(tmp_path), "is a folder"),
                         (str(fifo), "is a FIFO"), (str(tmp_path / "nope.txt"), "does not exist")):
        line = _one_error_line(_run(*TRAIN, "--out", str(tmp_path / "tc"), "--corpus", corpus))
        assert said in line, line
    assert not (tmp_path / "tc").exists()


def test_fidelity_takes_the_hub_ids_that_trace_takes(world_tiny, hub_cache):
    from tests.helpers.published_transcoders import make_hub_repo

    _run("trace", PROMPT, "-m", "world-tiny", "--json")  # the default transcoder, trained on first use
    tc = next(Path(os.environ["CIRCUITS_HOME"]).glob("transcoders/world-tiny/*/config.yaml")).parent
    make_hub_repo(hub_cache, "me/world-tiny-clt", {p.name: p.read_bytes() for p in tc.iterdir() if p.is_file()})
    result = _run("fidelity", "--model", "world-tiny", "--transcoders", "me/world-tiny-clt", "--tokens", "512", "--json")
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.stdout.count('"fvu_mean"') == 1


def test_models_corpus_takes_world_as_its_help_says(world_tiny):
    import json

    result = _run("models", "corpus", "world-tiny", "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert (record["tokens_train"], record["tokens_heldout"]) == (64321, 7136)


# --- 12. a newcomer's first ten minutes ---------------------------------------------------------
def test_first_use_says_what_it_builds_before_the_bars(tmp_path):
    """The first `circuits trace` built `world` for minutes with bars but never said so."""
    home = tmp_path / "home"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CIRCUITS_HOME": str(home), "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-m", "circuits", "trace", PROMPT, "-m", "world-tiny", "--json"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stderr.replace("\r", "\n").splitlines()
    first = [i for i, ln in enumerate(lines) if ln.startswith("first use: ")]
    assert len(first) == 2 and first[0] == 0, lines[:5]  # before any bar
    assert f"building the built-in model `world-tiny` (seconds), cached in {home / 'models' / 'world-tiny'}" in lines[0]
    assert "training the default CLT of `world-tiny`" in lines[first[1]] and str(home / "transcoders") in lines[first[1]]
    again = subprocess.run([sys.executable, "-m", "circuits", "trace", PROMPT, "-m", "world-tiny", "--json"],
                           capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert again.returncode == 0 and "first use" not in again.stderr  # said once: the second run finds the cache


@pytest.mark.parametrize("command", [["trace"], ["intervene"], ["models", "predict"], ["view"], ["prune"],
                                     ["features", "show"], ["transcoders", "train"], ["fidelity"]])
def test_help_speaks_click_not_python(command):
    """Usage lines showed `{prompt}`, options `<str>`, `<path>`, `<list[str]>`; `--max-feature-nodes`
    showed two defaults; there was no `-h`."""
    import re

    result = _run(*command, "-h")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert not re.search(r"<(str|path|int|float|list\[\w+\])>", text) and "{" not in text.splitlines()[0], text
    for block in re.split(r"\n  (?=-)", text):
        assert block.count("(default") <= 1, block
    assert "(default: None)" not in text


def test_version():
    result = _run("--version")
    assert result.exit_code == 0 and result.stdout.startswith("circuits ") and result.stdout.strip() != "circuits"


def test_models_list_keeps_whole_lines_in_a_pipe_and_prints_at_columns_0():
    """Piped, `models list` wrapped at column 80; with COLUMNS=0 it printed nothing (exit 0)."""
    for columns in ("80", "0", "abc"):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": columns}
        done = subprocess.run([sys.executable, "-m", "circuits", "models", "list"], capture_output=True, text=True,
                              env=env, cwd=ROOT, timeout=120)
        assert done.returncode == 0
        lines = done.stdout.splitlines()
        rows = [ln for ln in lines if ln.split() and ln.split()[0] in ("world", "world-tiny", "smollm2-135m", "gemma3-270m")]
        assert len(rows) == 4 and any(len(ln) > 80 for ln in rows), (columns, lines)
        assert all(ln.split()[0] in ("world", "world-tiny", "smollm2-135m", "gemma3-270m") or "rebuild" in ln
                   for ln in lines), lines  # no line is the tail of a wrapped one

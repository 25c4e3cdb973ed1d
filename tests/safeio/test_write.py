"""The safe-write helper: regular files replaced atomically, symlinks and special files written
through (never replaced), stale temporaries removed, wrong paths refused before any work."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from safeio import OutputError, check_output, check_output_dir, write_text
from safeio.write import TEMP_SUFFIX, is_marked_temp, remove_stale_temps, remove_stale_temps_in, temp_name

ROOT = Path(__file__).resolve().parents[2]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_symlinked_output_stays_a_link_and_its_target_is_written(tmp_path):
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "out.json"
    link.symlink_to(target)
    write_text(link, "new")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text() == "new"


def test_dangling_symlink_writes_its_target(tmp_path):
    link = tmp_path / "out.json"
    link.symlink_to(tmp_path / "later.json")
    write_text(link, "x")
    assert link.is_symlink() and (tmp_path / "later.json").read_text() == "x"


def test_device_node_is_written_through_not_replaced():
    write_text("/dev/null", "data")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_fifo_is_written_through(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    write_text(fifo, "through the pipe")
    reader.join(timeout=10)
    assert got == ["through the pipe"] and stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_dev_stdout_redirected_to_a_file_appends_and_keeps_the_file(tmp_path):
    out = tmp_path / "captured.txt"
    code = "from safeio import write_text; print('summary', flush=True); write_text('/dev/stdout', 'graph\\n')"
    with open(out, "w") as handle:
        inode = os.fstat(handle.fileno()).st_ino
        subprocess.run([sys.executable, "-c", code], stdout=handle, check=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.read_text() == "summary\ngraph\n" and out.stat().st_ino == inode


@pytest.mark.parametrize("make, message", [
    (lambda d: d, "is a directory"),
    (lambda d: d / "missing" / "out.json", "does not exist"),
    (lambda d: d / "afile" / "out.json", "is a file, not a folder"),
    (lambda d: d / "afile" / "deeper" / "out.json", "is a file, not a folder"),
])
def test_wrong_kind_of_path_is_refused_before_writing(tmp_path, make, message):
    (tmp_path / "afile").write_text("user data")
    with pytest.raises(OutputError, match=message):
        check_output(make(tmp_path))
    assert (tmp_path / "afile").read_text() == "user data"


def test_unwritable_place_is_found_before_the_work():
    with pytest.raises(OutputError, match="cannot write"):
        check_output("/proc/graph.json")
    with pytest.raises(OutputError):
        check_output_dir("/proc/version/sub")


def test_output_folder_checks(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_output_dir(tmp_path / "afile")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_output_dir(tmp_path / "afile" / "sub")
    assert check_output_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_stale_temporaries_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    target = tmp_path / "graph.json"
    dead, live = _dead_pid(), os.getppid()
    stale = tmp_path / temp_name("graph.json", dead, "abc123abc123")
    running = tmp_path / temp_name("graph.json", live, "def456def456")
    user = tmp_path / ".graph.json.notes"
    for p in (stale, running, user):
        p.write_text("x")
    write_text(target, "{}")
    assert not stale.exists()
    assert running.exists() and user.exists() and target.read_text() == "{}"


def test_files_that_only_look_like_our_temporaries_are_never_swept(tmp_path):
    """Issue 22: the sweep deleted a user's `.g.json.tmp-<dead pid>` (and would take any name of
    the form `.g.json.<dead pid>.<anything>.circuits-tmp`). Only names whose tag matches are ours."""
    dead = _dead_pid()
    ours = tmp_path / temp_name("g.json", dead, "0123456789ab")
    lookalikes = [tmp_path / f".g.json.tmp-{dead}", tmp_path / f".g.json.{dead}.k1ll3d{TEMP_SUFFIX}",
                  tmp_path / ours.name.replace(".0123456789ab.", ".0123456789ac.")]  # a token that was not ours
    for p in [ours, *lookalikes]:
        p.write_text("the user's")
    link = tmp_path / temp_name("g.json", dead, "ba9876543210")
    link.symlink_to(tmp_path / "elsewhere")  # a link with our name: not a temporary file we made
    assert remove_stale_temps(tmp_path / "g.json") == [ours]
    assert all(p.read_text() == "the user's" for p in lookalikes) and link.is_symlink()
    assert remove_stale_temps_in(tmp_path) == []


def test_temporary_names_are_marked_and_fit_the_file_system(tmp_path):
    name = "n" * 250  # fits (255 bytes), but `.<name>.<pid>.<token>...` would not
    write_text(tmp_path / name, "x")
    assert (tmp_path / name).read_text() == "x"
    made = temp_name(name, 4194303, "00aa00aa00aa")
    assert len(made.encode()) <= 255 and is_marked_temp(made)
    assert not is_marked_temp(made.replace(".00aa00aa00aa.", ".00aa00aa00ab."))
    (tmp_path / made).write_text("half")
    assert remove_stale_temps(tmp_path / name) == [tmp_path / made]


def test_folder_sweep_only_takes_marked_names(tmp_path):
    dead = _dead_pid()
    ours = tmp_path / temp_name("checkpoint.safetensors", dead, "a1a1a1a1a1a1")
    lookalike = tmp_path / f".notes.{dead}.tmp"
    ours.write_text("x")
    lookalike.write_text("user")
    assert remove_stale_temps_in(tmp_path) == [ours]
    assert lookalike.exists()
    assert remove_stale_temps(tmp_path / "notes") == []


def test_names_the_file_system_cannot_hold_are_refused_before_work(tmp_path):
    """Issue 22: a name over the file system's limit was a traceback, a symlink loop was replaced
    by a regular file, and a path ending in '/' was written as a file."""
    with pytest.raises(OutputError, match="too long for the file system"):
        check_output(tmp_path / ("x" * 300 + ".json"))
    with pytest.raises(OutputError, match="too long for the file system"):
        check_output(tmp_path / ("d/" * 3000 + "g.json"))
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    for path in (tmp_path / "loop1", tmp_path / "loop1" / "g.json"):
        with pytest.raises(OutputError, match="symlink loop"):
            check_output(path)
        with pytest.raises(OutputError, match="symlink loop"):
            write_text(path, "x")
    assert (tmp_path / "loop1").is_symlink()
    with pytest.raises(OutputError, match="ending in '/'"):
        check_output(str(tmp_path / "newdir") + "/")
    assert not (tmp_path / "newdir").exists()


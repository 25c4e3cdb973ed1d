"""$CIRCUITS_HOME: set but empty is refused (it would silently mean the current folder); a file
where the cache folder should be is named as such."""

from __future__ import annotations

import pytest

from circuits.errors import CircuitsError
from circuits.paths import circuits_home, writable_dir


@pytest.mark.parametrize("value", ["", "   "])
def test_empty_circuits_home_is_refused(monkeypatch, value):
    monkeypatch.setenv("CIRCUITS_HOME", value)
    with pytest.raises(CircuitsError, match="CIRCUITS_HOME is set but empty"):
        circuits_home()


def test_unset_circuits_home_is_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("CIRCUITS_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert circuits_home() == tmp_path / ".cache" / "circuits"


def test_a_file_where_the_cache_folder_goes_is_named(tmp_path):
    (tmp_path / "home").write_text("not a folder")
    with pytest.raises(CircuitsError, match="is a file, not a folder"):
        writable_dir(tmp_path / "home" / "models")

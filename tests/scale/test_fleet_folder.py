"""The loopback fleet writes only into a folder that is new, empty or an earlier fleet's."""

from __future__ import annotations

import pytest

from server.deploy.local import MARKER, claim_folder, main, missing_binaries


def test_a_foreign_folder_is_refused_untouched(tmp_path):
    (tmp_path / "haproxy.cfg").write_text("a user's own file")
    with pytest.raises(RuntimeError, match="not a fleet folder"):
        claim_folder(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["haproxy.cfg"]
    assert (tmp_path / "haproxy.cfg").read_text() == "a user's own file"


def test_new_empty_and_earlier_fleet_folders_are_used(tmp_path):
    new = tmp_path / "new"
    claim_folder(new)
    assert (new / MARKER).is_file()
    (new / "r0.log").write_text("an earlier fleet's log")
    claim_folder(new)  # its own: accepted again
    empty = tmp_path / "empty"
    empty.mkdir()
    claim_folder(empty)
    assert (empty / MARKER).is_file()


def test_the_command_line_refuses_in_one_line(tmp_path, capsys):
    if missing_binaries("redis-server", "haproxy"):
        pytest.skip("redis-server or haproxy not installed (make test installs them)")
    (tmp_path / "notes.txt").write_text("keep me")
    assert main(["--folder", str(tmp_path)]) == 2
    assert "not a fleet folder" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    assert not (tmp_path / MARKER).exists()

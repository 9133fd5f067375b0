"""Atomic writes (complete files or none, no temporary files left, unique temporary names) and output paths."""

from __future__ import annotations

import json
import os
import threading

import pytest

from lstmdet.errors import LstmdetError
from lstmdet.fileio import (
    atomic_open,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    prepare_file,
    prepare_folder,
)


def test_writes_text_bytes_and_json(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "héllo\n")
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    atomic_write_json(tmp_path / "c.json", {"a": [1, 2]})
    atomic_write_json(tmp_path / "d.json", {"a": [1, 2]}, indent=None)
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "c.json").read_text() == json.dumps({"a": [1, 2]}, indent=2) + "\n"
    assert (tmp_path / "d.json").read_text() == '{"a": [1, 2]}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "c.json", "d.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_json(target, {"old": True})
    with pytest.raises(RuntimeError, match="boom"), atomic_open(target) as f:
        f.write('{"new": ')
        raise RuntimeError("boom")
    with pytest.raises(TypeError):
        atomic_write_json(target, {"not json": object()})
    assert json.loads(target.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_the_target_appears_only_when_the_block_ends(tmp_path):
    target = tmp_path / "model.pt"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".model.pt.") and tmp.name.endswith(".tmp")
        assert not tmp.exists()
        tmp.write_bytes(b"weights")
        assert not target.exists()
    assert target.read_bytes() == b"weights" and not tmp.exists()


def test_a_block_that_writes_nothing_fails_without_touching_the_target(tmp_path):
    target = tmp_path / "x.txt"
    target.write_text("kept")
    with pytest.raises(FileNotFoundError), atomic_path(target):
        pass
    assert target.read_text() == "kept"


def test_temporary_names_are_unique_per_call_thread_and_process(tmp_path):
    names = []

    def grab() -> None:
        with atomic_path(tmp_path / "same.txt") as tmp:
            names.append(tmp.name)
            tmp.write_text("x")

    threads = [threading.Thread(target=grab) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    grab()
    assert len(set(names)) == 9
    assert all(f".{os.getpid()}." in name for name in names)
    assert [p.name for p in tmp_path.iterdir()] == ["same.txt"]


def test_file_permissions_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "shared.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "shared.txt").stat().st_mode & 0o777 == 0o644


def test_two_writers_of_one_file_never_share_a_temporary_file(tmp_path):
    """Two deliveries of one task writing the same final file at once: each writes a whole file of its own."""
    path = tmp_path / "summary.json"
    with atomic_open(path) as first:
        first.write("first\n")
        with atomic_open(path) as second:
            second.write("second\n")
        assert path.read_text() == "second\n"
        first.write("more of the first\n")
    assert path.read_text() == "first\nmore of the first\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_remove_outputs_removes_only_the_named_entries_and_never_follows_links(tmp_path):
    from lstmdet.fileio import remove_outputs

    out = tmp_path / "out"
    (out / "images" / "deep").mkdir(parents=True)
    (out / "images" / "deep" / "a.png").write_bytes(b"x")
    (out / "annotations.json").write_text("{}")
    (out / "mine.txt").write_text("keep")
    kept = tmp_path / "elsewhere"
    kept.mkdir()
    (kept / "b.png").write_bytes(b"y")
    (out / "link").symlink_to(kept)
    removed = remove_outputs(out, ("annotations.json", "images", "link", "missing.json"))
    assert removed == ["annotations.json", "images", "link"]
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"] and (kept / "b.png").is_file()
    assert remove_outputs(tmp_path / "nowhere", ("images",)) == []


def test_prepare_folder_creates_or_accepts_a_folder(tmp_path):
    assert prepare_folder(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir()
    assert prepare_folder(tmp_path / "a" / "b", "--out") == tmp_path / "a" / "b"  # an existing folder is fine


def test_prepare_folder_refuses_files_and_paths_that_cannot_be_created(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(LstmdetError, match=r"^--out .*afile: it is an existing file, not a folder; choose a folder"):
        prepare_folder(afile, "--out")
    with pytest.raises(LstmdetError, match=r"afile/sub: .*afile is an existing file, not a folder"):
        prepare_folder(afile / "sub", "--out")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(LstmdetError, match="broken symbolic link"):
        prepare_folder(tmp_path / "dangling" / "x")
    if os.path.isdir("/proc"):
        with pytest.raises(LstmdetError, match=r"^output folder /proc/lstmdet-out: cannot create it \("):
            prepare_folder("/proc/lstmdet-out")


def test_prepare_file_refuses_a_folder_and_creates_the_parent(tmp_path):
    assert prepare_file(tmp_path / "new" / "m.json", "--out") == tmp_path / "new" / "m.json"
    assert (tmp_path / "new").is_dir() and not (tmp_path / "new" / "m.json").exists()
    with pytest.raises(LstmdetError, match=r"^--out .* is a folder; name the file to write"):
        prepare_file(tmp_path / "new", "--out")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(LstmdetError, match=r"cannot be written: its folder .*afile: it is an existing file"):
        prepare_file(tmp_path / "afile" / "m.json", "--out")

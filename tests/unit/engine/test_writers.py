"""Output files of batch detection: atomic writes, ``detections.jsonl`` lines, resume, COCO files, drawings."""

from __future__ import annotations

from lstmdet.engine.writers import atomic_open


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

"""archive.jsonl: torn last lines dropped, damaged lines set aside with the rows after them
kept, truncation by evaluation index (the rest moved aside for a diverged run), failed appends
rolled back, and writes only by the holder of the workdir's lock."""

import errno
import json

import pytest

from hs_jax.methods import archive as archive_lib
from hs_jax.methods.archive import Archive
from hs_jax.store import workdir as workdir_lib


@pytest.fixture
def archive(tmp_path):
    """An archive in a workdir this process has locked, as in a run."""
    with workdir_lib.lock(tmp_path):
        yield Archive(tmp_path / "archive.jsonl")


def _rows(n, start=0):
    return [{"evaluation": k, "dev_utility": k / 10} for k in range(start, start + n)]


def _evaluations(archive):
    return [r["evaluation"] for r in archive.read()]


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_torn_last_line_is_dropped(archive):
    archive.append(_rows(2))
    with open(archive.path, "a") as f:
        f.write('{"evaluation": 2, "dev_u')  # a kill mid-write
    before = archive.path.read_bytes()
    assert _evaluations(archive) == [0, 1]
    assert archive.path.read_bytes() == before  # read only reads
    archive.append(_rows(1, start=2))  # not glued to the fragment
    assert _evaluations(archive) == [0, 1, 2]
    assert archive.path.read_text().count("\n") == 3
    assert not archive.damaged_path().exists()


def test_a_damaged_line_is_set_aside_and_the_rows_after_it_kept(archive):
    archive.append(_rows(5))
    lines = archive.path.read_bytes().splitlines(keepends=True)
    lines[1] = b'{"evaluation": 1, \xff garbage\n'
    lines[3] = b"[3]\n"  # valid JSON, not a row
    archive.path.write_bytes(b"".join(lines))
    assert _evaluations(archive) == [0, 2, 4]
    assert [r["evaluation"] for r in archive.repair()] == [0, 2, 4]
    assert archive.path.read_bytes() == lines[0] + lines[2] + lines[4]
    damaged = _jsonl(archive.damaged_path())
    assert [(d["line"], d["text"]) for d in damaged] == [
        (2, '{"evaluation": 1, \\xff garbage\n'),
        (4, "[3]\n"),
    ]


def test_truncate_keeps_evaluations_below_n_and_moves_diverged_rows_aside(archive):
    archive.append(_rows(5))
    assert archive.truncate(3, keep_rest=True) == 2
    assert _evaluations(archive) == [0, 1, 2]
    assert [r["evaluation"] for r in _jsonl(archive.diverged_path())] == [3, 4]
    assert archive.truncate(1) == 2  # a redone search iteration: its rows come back identical
    assert _evaluations(archive) == [0]
    assert archive.truncate(5) == 0


def test_truncate_counts_evaluations_not_lines_after_a_damaged_line(archive):
    """Evaluation 1 lost to damage: keeping 'the first 3 rows' by position would keep
    evaluation 3, which the resumed search scores again."""
    archive.append(_rows(6))
    lines = archive.path.read_bytes().splitlines(keepends=True)
    lines[1] = b"#\n"
    archive.path.write_bytes(b"".join(lines))
    assert archive.truncate(3) == 3
    assert _evaluations(archive) == [0, 2]


def test_a_failed_append_leaves_no_row(archive, monkeypatch):
    """A full disk at the fsync (the rows are already in the file): the file is cut back, and
    the error names the archive in one line."""
    archive.append(_rows(2))
    before = archive.path.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(archive_lib.os, "fsync", full)
    with pytest.raises(workdir_lib.WorkdirError) as e:
        archive.append(_rows(3, start=2))
    assert str(e.value).startswith(f"{archive.path}: No space left on device while appending 3")
    assert "\n" not in str(e.value)
    assert archive.path.read_bytes() == before


def test_only_the_lock_holder_writes(tmp_path):
    archive = Archive(tmp_path / "archive.jsonl")
    for write in (lambda: archive.append(_rows(1)), archive.repair, lambda: archive.truncate(0)):
        with pytest.raises(workdir_lib.WorkdirError, match="does not hold its lock"):
            write()
    assert not archive.path.exists()
    assert archive.read() == []
    with workdir_lib.lock(tmp_path):
        archive.append(_rows(1))
    assert _evaluations(archive) == [0]

"""archive.jsonl: torn last lines dropped, truncation keeps the prefix and, for a diverged run,
moves the rest aside instead of losing it."""

import json

from hs_jax.archive import Archive


def test_torn_last_line_is_dropped(tmp_path):
    archive = Archive(tmp_path / "archive.jsonl")
    archive.append([{"evaluation": 0}, {"evaluation": 1}])
    with open(archive.path, "a") as f:
        f.write('{"evaluation": 2, "dev_u')  # a kill mid-write
    assert [r["evaluation"] for r in archive.read()] == [0, 1]
    assert archive.path.read_text().count("\n") == 2


def test_truncate_keeps_the_prefix_and_moves_diverged_rows_aside(tmp_path):
    archive = Archive(tmp_path / "archive.jsonl")
    archive.append([{"evaluation": k} for k in range(5)])
    archive.truncate(3, keep_rest=True)
    assert [r["evaluation"] for r in archive.read()] == [0, 1, 2]
    kept = [json.loads(line) for line in archive.diverged_path().read_text().splitlines()]
    assert [r["evaluation"] for r in kept] == [3, 4]
    archive.truncate(1)  # a redone search iteration: its rows come back identical
    assert [r["evaluation"] for r in archive.read()] == [0]

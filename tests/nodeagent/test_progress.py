"""The runner → agent progress file."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodeagent import progress


def test_a_report_reads_back(tmp_path: Path) -> None:
    assert progress.read(tmp_path) is None
    progress.report(tmp_path, 2, 8)
    assert progress.read(tmp_path) == (2, 8)
    progress.report(tmp_path, 8, 8)
    assert progress.read(tmp_path) == (8, 8)


@pytest.mark.parametrize(("done", "total"), [(5, 4), (-1, 4), (0, 0)])
def test_impossible_progress_is_refused(tmp_path: Path, done: int, total: int) -> None:
    with pytest.raises(ValueError, match="done <= total"):
        progress.report(tmp_path, done, total)
    assert progress.read(tmp_path) is None


@pytest.mark.parametrize("text", ["", "{", '{"done": 1}', '{"done": 9, "total": 4}', '["x"]'])
def test_a_garbled_file_reads_as_no_progress(tmp_path: Path, text: str) -> None:
    (tmp_path / progress.FILENAME).write_text(text)
    assert progress.read(tmp_path) is None

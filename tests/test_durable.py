"""One way to make a rename durable, shared by the sink, the state and compaction."""

from __future__ import annotations

from pathlib import Path

import pytest

import asyncingest.sink.parquet as parquet
import asyncingest.state.checkpoint as checkpoint
import asyncingest.state.compact as compact
from asyncingest.sink import chunked, durable


def test_the_sink_the_state_and_compaction_fsync_folders_with_one_function() -> None:
    assert parquet.fsync_dir is checkpoint.fsync_dir is compact.fsync_dir is durable.fsync_dir
    # compaction and the current table fsync their files through sink.chunked
    assert parquet.fsync_file is chunked.fsync_file is durable.fsync_file


def test_fsync_of_a_folder_and_a_file_succeeds_on_what_exists(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    durable.fsync_file(tmp_path / "f")
    durable.fsync_dir(tmp_path)


def test_fsync_dir_refuses_a_file(tmp_path: Path) -> None:
    """A folder fsync of something that is not a folder is a bug in the caller, not a no-op."""
    path = tmp_path / "f"
    path.write_bytes(b"x")
    with pytest.raises(NotADirectoryError):
        durable.fsync_dir(path)

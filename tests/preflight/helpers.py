"""Constants and small helpers shared by the preflight tests."""

from __future__ import annotations

from pathlib import Path

MIB = 1024 * 1024
TMPFS_BYTES = 16 * MIB
TMPFS_INODES = 200


def fill_file(path: Path, size: int) -> None:
    """Write a file of exactly ``size`` bytes."""
    with path.open("wb") as handle:
        remaining = size
        chunk = b"\0" * MIB
        while remaining > 0:
            handle.write(chunk[: min(remaining, MIB)])
            remaining -= MIB


def make_empty_files(folder: Path, count: int) -> None:
    for index in range(count):
        (folder / f"empty-{index}").touch()

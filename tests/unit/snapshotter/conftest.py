"""A scratch directory on the real filesystem, removed after each test (tmp_path is kept)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def scratch() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ctrd-unit-", dir="/var/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path)

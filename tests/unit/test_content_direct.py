"""Where the local store cannot bypass the page cache, uploads still land whole.

The direct path itself runs through the whole content conformance suite (its `local-direct`
subject). These cases cover the filesystems that refuse it: at `open(2)` (EINVAL), or only at
the first write (an alignment the filesystem does not accept). Those cannot be made real on
this machine's ext4, so the refusal is injected at the system call.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from supervisor.content import local
from supervisor.content.local import LocalStore
from supervisor.errors import DataLoss

SIZE = 100_000  # 8 KiB through the cache, then stages of 12 KiB and a tail


@pytest.fixture(autouse=True)
def small_stages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "DIRECT_AFTER", 8 << 10)
    monkeypatch.setattr(local, "DIRECT_STAGE", 12 << 10)


def upload(root: Path, chunk: int = 3000) -> tuple[bytes, Path]:
    """Write SIZE random bytes in chunks and commit; the blob's bytes and path."""
    data = os.urandom(SIZE)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()

    async def run() -> Path:
        store = LocalStore(root)
        writer = await store.writer("ref", total=SIZE, expected=digest)
        for start in range(0, SIZE, chunk):
            await writer.write(data[start : start + chunk])
        assert await writer.commit(SIZE, digest) == digest
        return store.blob_path(digest)

    return data, asyncio.run(run())


def test_a_filesystem_refusing_o_direct_at_open_gets_every_byte_through_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    real_open = os.open
    refused = []

    def open_(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & os.O_DIRECT:
            refused.append(path)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(local.os, "open", open_)
    data, blob = upload(tmp_path)
    assert len(refused) == 1  # asked once, then never again for that upload
    assert blob.read_bytes() == data


def test_a_filesystem_refusing_direct_writes_gets_the_stages_through_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    refusals = []

    def pwrite(fd: int, data: Any, offset: int) -> int:
        refusals.append(offset)
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(local.os, "pwrite", pwrite)
    data, blob = upload(tmp_path)
    assert refusals[0] == 8 << 10  # the first stage, right after the cached head
    assert blob.read_bytes() == data


def test_a_disk_error_in_a_direct_write_fails_the_upload_and_keeps_what_was_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    real_pwrite = os.pwrite
    written = []

    def pwrite(fd: int, data: Any, offset: int) -> int:
        if written:
            raise OSError(errno.EIO, "Input/output error")
        written.append(offset)
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(local.os, "pwrite", pwrite)
    data = os.urandom(SIZE)

    async def run() -> None:
        store = LocalStore(tmp_path)
        writer = await store.writer("ref", total=SIZE)

        async def send_all() -> None:
            for start in range(0, SIZE, 3000):
                await writer.write(data[start : start + 3000])
            await writer.commit(SIZE, "")

        with pytest.raises(DataLoss, match="Input/output error"):
            await send_all()
        status = await store.status("ref")  # the writer is closed: the file speaks
        assert status.offset == (8 << 10) + (12 << 10)
        assert (store.ingest_dir("ref") / "data").read_bytes() == data[: status.offset]

    asyncio.run(run())

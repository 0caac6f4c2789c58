"""The tar reader and writer: round trips, agreement with Python's tarfile, and errors."""

from __future__ import annotations

import contextlib
import io
import os
import tarfile

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.diff.tarformat import (
    DIRECTORY,
    REGULAR,
    SYMLINK,
    ByteStream,
    Header,
    TarFormatError,
    TarReader,
    encode,
    end_of_archive,
    parse_pax,
)
from tests.unit.diff.layers import entry, tar

NAMES = st.lists(
    st.binary(min_size=1, max_size=40).filter(lambda b: b"\0" not in b and b"/" not in b),
    min_size=1,
    max_size=8,
).map(b"/".join)
HEADERS = st.builds(
    Header,
    name=NAMES,
    type=st.sampled_from([REGULAR, SYMLINK, DIRECTORY]),
    mode=st.integers(0, 0o7777),
    uid=st.integers(0, 2**40),
    gid=st.integers(0, 2**40),
    mtime=st.integers(0, 2**40).map(lambda s: s * 10**9),
    linkname=st.one_of(st.just(b""), NAMES),
    xattrs=st.dictionaries(
        st.sampled_from([b"user.a", b"user.b", b"security.capability"]), st.binary(max_size=64)
    ),
    size=st.just(0),
    atime=st.none(),
    devmajor=st.just(0),
    devminor=st.just(0),
)


def read_all(data: bytes, chunk: int = 7) -> list[tuple[Header, bytes]]:
    """Every entry with its data, the stream fed in awkward chunks."""
    reader = TarReader(ByteStream(data[i : i + chunk] for i in range(0, len(data), chunk)))
    out = []
    while (header := reader.next()) is not None:
        out.append((header, _data(reader) if header.size else b""))
    return out


def _data(reader: TarReader) -> bytes:
    r, w = os.pipe()
    try:
        reader.copy_data(w)
        os.close(w)
        w = -1
        with os.fdopen(r, "rb") as f:
            r = -1
            return f.read()
    finally:
        for fd in (r, w):
            if fd >= 0:
                os.close(fd)


@given(HEADERS, st.binary(max_size=2000))
def test_what_we_write_we_read_back(header: Header, content: bytes) -> None:
    if header.type != REGULAR:
        content = b""
    header = header._replace(size=len(content))
    data = encode(header) + content + bytes(-len(content) % 512) + end_of_archive()
    ((back, body),) = read_all(data)
    assert back == header
    assert body == content


@given(HEADERS)
def test_pythons_tarfile_reads_what_we_write(header: Header) -> None:
    data = encode(header) + end_of_archive()
    with tarfile.open(fileobj=io.BytesIO(data), encoding="utf-8", errors="surrogateescape") as t:
        (info,) = t.getmembers()
    assert info.name.encode("utf-8", "surrogateescape") == header.name.rstrip(b"/")
    assert (info.mode, info.uid, info.gid, info.mtime) == (
        header.mode,
        header.uid,
        header.gid,
        header.mtime // 10**9,
    )


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_we_read_what_pythons_tarfile_writes(fmt: int) -> None:
    long = "d/" * 60 + "name"
    data = tar(entry(long, data=b"hello", uid=1, gid=2, mode=0o640), fmt=fmt)
    ((header, body),) = read_all(data)
    assert (header.name, header.uid, header.gid, header.mode) == (long.encode(), 1, 2, 0o640)
    assert body == b"hello"


def test_devices_round_trip() -> None:
    header = Header(name=b"dev/x", type=b"3", mode=0o600, devmajor=259, devminor=2**20)
    ((back, _),) = read_all(encode(header) + end_of_archive())
    assert (back.devmajor, back.devminor) == (259, 2**20)


def test_base_256_numbers() -> None:
    data = tar(entry("big", uid=8**8, gid=8**9, mtime=8**12), fmt=tarfile.GNU_FORMAT)
    ((header, _),) = read_all(data)
    assert (header.uid, header.gid, header.mtime) == (8**8, 8**9, 8**12 * 10**9)


def test_a_header_type_only_entry_carries_no_data_whatever_its_size_says() -> None:
    data = bytearray(tar(entry("d/", tarfile.DIRTYPE), entry("f", data=b"f")))
    data[124:136] = b"00000001000\0"  # the directory claims 512 bytes
    data[148:156] = b"%06o\0 " % (sum(data[:148]) + 256 + sum(data[156:512]))
    assert [h.name for h, _ in read_all(bytes(data))] == [b"d/", b"f"]


def test_pax_times_keep_their_fraction() -> None:
    data = tar(entry("f", pax_headers={"mtime": "1.25", "atime": "-2.5"}))
    ((header, _),) = read_all(data)
    assert (header.mtime, header.atime) == (1_250_000_000, -2_500_000_000)


@given(st.binary(max_size=300))
def test_pax_parsing_raises_only_its_own_error(data: bytes) -> None:
    with contextlib.suppress(TarFormatError):
        parse_pax(data)


@given(st.binary(min_size=512, max_size=2048))
def test_reading_garbage_raises_only_its_own_error(data: bytes) -> None:
    with contextlib.suppress(TarFormatError):
        read_all(data)

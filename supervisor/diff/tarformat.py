"""The tar format as layers use it: reading headers from a byte stream, writing them back.

Reading accepts what Go's `archive/tar` (containerd's reader) accepts: V7, USTAR (with its
name prefix), GNU (`L`/`K` long names, base-256 numbers) and PAX (`x` records; `g` global
headers are skipped, as containerd ignores them), header checksums signed or unsigned, the V7
convention that a regular entry whose name ends in `/` is a directory, and a stream that ends
cleanly at a header boundary without its end-of-archive blocks. It refuses sparse files,
multi-volume and other exotic types, malformed numbers and records, and extended headers over
1 MiB (Go's limit too), so a hostile header costs at most that much memory. Names stay bytes,
as the kernel sees them: nothing here decides whether a name is safe to create (see
`supervisor.diff.apply`).

Writing produces PAX-format entries as Go's tar writer does for containerd's differ: a USTAR
header, preceded by a PAX record set only when a field does not fit USTAR (long or non-ASCII
names, large numbers) or when there are xattrs.

`ByteStream` is the reader's source: it pulls chunks from an iterator (a decompressor) and
hands out exact slices, writing file data to its file without copying it.
Every function here is pure over its inputs except `ByteStream.copy_to`, which writes to a
file descriptor; format errors are `TarFormatError`, which callers turn into typed errors
naming the layer and entry.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import NamedTuple

BLOCK = 512
MAX_EXTENDED = 1 << 20  # bytes of one PAX record set or GNU long name (Go: maxSpecialFileSize)

# Entry types (the `typeflag` byte).
REGULAR = b"0"
HARDLINK = b"1"
SYMLINK = b"2"
CHARDEV = b"3"
BLOCKDEV = b"4"
DIRECTORY = b"5"
FIFO = b"6"
_CONTIGUOUS = b"7"  # "reserved"; GNU tar and Go read it as a regular file
_PAX = b"x"
_PAX_GLOBAL = b"g"
_GNU_LONGNAME = b"L"
_GNU_LONGLINK = b"K"
_GNU_SPARSE = b"S"
_HEADER_ONLY = frozenset((HARDLINK, SYMLINK, CHARDEV, BLOCKDEV, DIRECTORY, FIFO))
_KNOWN = _HEADER_ONLY | {REGULAR}
_EXTENDED = frozenset((_PAX, _PAX_GLOBAL, _GNU_LONGNAME, _GNU_LONGLINK))

XATTR_PREFIX = b"SCHILY.xattr."
_USTAR_MAGIC = b"ustar\x0000"
_GNU_MAGIC = b"ustar  \x00"
_HEADER = struct.Struct("100s8s8s8s12s12s8sc100s8s32s32s8s8s155s12x")
_OCTAL_DIGITS = b"01234567"
_ZERO_BLOCK = bytes(BLOCK)
_NO_XATTRS: Mapping[bytes, bytes] = MappingProxyType({})


class TarFormatError(ValueError):
    """The stream is not a tar we accept; the message says why."""


class Header(NamedTuple):
    """One entry, after its extended headers were folded in. Times in nanoseconds.

    A NamedTuple rather than a frozen dataclass: it is made once per entry, and a frozen
    dataclass costs ten times as much to build, which shows at 20,000 entries."""

    name: bytes
    type: bytes
    mode: int = 0o644  # permission bits and setuid/setgid/sticky only
    uid: int = 0
    gid: int = 0
    size: int = 0  # bytes of data that follow (0 for every type but regular files)
    mtime: int = 0
    atime: int | None = None
    linkname: bytes = b""
    devmajor: int = 0
    devminor: int = 0
    xattrs: Mapping[bytes, bytes] = _NO_XATTRS


# --- reading ---------------------------------------------------------------------------------


class ByteStream:
    """Exact reads over a chunk iterator, without copying what goes to a file."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buf = b""
        self._view = memoryview(self._buf)
        self._pos = 0

    def _pull(self) -> bool:
        for chunk in self._chunks:
            if chunk:
                self._buf, self._view, self._pos = chunk, memoryview(chunk), 0
                return True
        return False

    def read(self, n: int) -> bytes:
        """Exactly `n` bytes, or fewer only at the end of the stream."""
        end = self._pos + n
        if end <= len(self._buf):
            out = self._buf[self._pos : end]
            self._pos = end
            return out
        parts = [self._buf[self._pos :]]
        have = len(parts[0])
        self._pos = len(self._buf)
        while have < n and self._pull():
            take = min(n - have, len(self._buf))
            parts.append(self._buf[:take])
            self._pos = take
            have += take
        return b"".join(parts)

    def copy_to(self, fd: int, n: int) -> int:
        """Write the next `n` bytes to `fd` straight from the chunks; returns bytes written."""
        done = 0
        while done < n:
            if self._pos >= len(self._buf) and not self._pull():
                break
            take = min(n - done, len(self._buf) - self._pos)
            view = self._view[self._pos : self._pos + take]
            while view:
                view = view[os.write(fd, view) :]
            self._pos += take
            done += take
        return done

    def skip(self, n: int) -> int:
        done = 0
        while done < n:
            if self._pos >= len(self._buf) and not self._pull():
                break
            take = min(n - done, len(self._buf) - self._pos)
            self._pos += take
            done += take
        return done

    def drain(self) -> None:
        """Pull everything left."""
        self._pos = len(self._buf)
        while self._pull():
            self._pos = len(self._buf)


class TarReader:
    """The entries of a tar stream, in order. The caller may consume an entry's data with
    `copy_data`; whatever it leaves is skipped by the next call to `next`."""

    def __init__(self, stream: ByteStream) -> None:
        self._stream = stream
        self._remaining = 0  # data bytes of the current entry not consumed yet
        self._padding = 0
        self.index = 0  # number of the last header block read, from 1 (for error messages)

    def copy_data(self, fd: int) -> None:
        n = self._remaining
        if self._stream.copy_to(fd, n) != n:
            raise TarFormatError(f"the stream ends inside the entry's data ({n} bytes expected)")
        self._remaining = 0

    def next(self) -> Header | None:
        """The next entry, or None after the end-of-archive marker (or a clean end)."""
        skip = self._remaining + self._padding
        if skip and self._stream.skip(skip) != skip:
            raise TarFormatError("the stream ends inside an entry's data")
        self._remaining = self._padding = 0
        pax: dict[bytes, bytes] = {}
        longname: bytes | None = None
        longlink: bytes | None = None
        while True:
            block = self._stream.read(BLOCK)
            if not block and not (pax or longname is not None or longlink is not None):
                return None  # Go accepts a stream without end-of-archive blocks
            self.index += 1
            if len(block) != BLOCK:
                raise TarFormatError("the stream ends inside a header")
            if block == _ZERO_BLOCK:
                # Go: a zero block must be followed by another one, or by the end.
                second = self._stream.read(BLOCK)
                if second and second != _ZERO_BLOCK:
                    raise TarFormatError("a zero block is followed by data")
                return None
            header = _parse_block(block, pax, longname, longlink)
            size = header.size
            kind = header.type
            if kind in _EXTENDED:
                if size > MAX_EXTENDED:
                    raise TarFormatError(
                        f"an extended header of {size} bytes (more than {MAX_EXTENDED})"
                    )
                data = self._stream.read(size)
                padding = -size % BLOCK
                if len(data) != size or self._stream.skip(padding) != padding:
                    raise TarFormatError("the stream ends inside an extended header")
                if kind == _PAX:
                    pax.update(parse_pax(data))
                elif kind == _GNU_LONGNAME:
                    longname = data.split(b"\0", 1)[0]
                elif kind == _GNU_LONGLINK:
                    longlink = data.split(b"\0", 1)[0]
                continue  # a global header applies to nothing (containerd ignores them)
            self._remaining = header.size
            self._padding = -header.size % BLOCK
            return header


def _parse_block(
    block: bytes, pax: dict[bytes, bytes], longname: bytes | None, longlink: bytes | None
) -> Header:
    """One header block, with the extended headers before it folded in."""
    (name, mode, uid, gid, size, mtime, chksum, kind, linkname, magic, _uname, _gname,
     devmajor, devminor, prefix) = _HEADER.unpack(block)  # fmt: skip
    checksum = sum(block) - sum(block[148:156]) + 256
    try:
        stored = _number(chksum, "checksum")
    except TarFormatError:
        stored = -1
    if stored != checksum and stored != _signed_sum(block):
        raise TarFormatError("a header with a bad checksum (not a tar stream?)")
    fields = (mode, uid, gid, size, mtime)
    try:  # every field plain octal: the common case, in a few C calls
        if b"".join(fields).translate(None, b"01234567 \0"):
            raise ValueError
        values = [int(f.strip(b" \0") or b"0", 8) for f in fields]
    except ValueError:  # base-256, NUL-cut or malformed: the careful way
        values = [_number(f, what) for f, what in zip(fields, _NAMES, strict=True)]
    if kind == _GNU_SPARSE:
        raise TarFormatError("sparse files are not supported")
    name = name.split(b"\0", 1)[0]
    if magic == _USTAR_MAGIC:
        prefix = prefix.split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    if kind == b"\0":  # V7: a trailing slash marks a directory
        kind = DIRECTORY if name.endswith(b"/") else REGULAR
    elif kind == _CONTIGUOUS:
        kind = REGULAR
    major = minor = 0
    if kind in (CHARDEV, BLOCKDEV) and magic in (_USTAR_MAGIC, _GNU_MAGIC):
        major, minor = _number(devmajor, "devmajor"), _number(devminor, "devminor")
    if kind not in _KNOWN and kind not in _EXTENDED:
        raise TarFormatError(f"an entry of unsupported type {kind!r}")
    if kind in _HEADER_ONLY:
        values[3] = 0  # Go reads no data for these types, whatever the size field says
    if kind in _EXTENDED or (not pax and longname is None and longlink is None):
        return Header(
            name,
            kind,
            values[0] & 0o7777,
            values[1],
            values[2],
            values[3],
            values[4] * 1_000_000_000,
            None,
            linkname.split(b"\0", 1)[0],
            major,
            minor,
        )
    if longname is not None:
        name = longname
    link = longlink if longlink is not None else linkname.split(b"\0", 1)[0]
    return Header(
        name=pax.get(b"path", name),
        type=kind,
        mode=values[0] & 0o7777,
        uid=_pax_int(pax, b"uid", values[1]),
        gid=_pax_int(pax, b"gid", values[2]),
        size=values[3] if kind in _HEADER_ONLY else _pax_int(pax, b"size", values[3]),
        mtime=_pax_time(pax[b"mtime"]) if b"mtime" in pax else values[4] * 1_000_000_000,
        atime=_pax_time(pax[b"atime"]) if b"atime" in pax else None,
        linkname=pax.get(b"linkpath", link),
        devmajor=major,
        devminor=minor,
        xattrs={k[len(XATTR_PREFIX) :]: v for k, v in pax.items() if k.startswith(XATTR_PREFIX)},
    )


_NAMES = ("mode", "uid", "gid", "size", "mtime")


def _signed_sum(block: bytes) -> int:
    total = sum(b - 256 if b > 127 else b for b in block)
    return total - sum(b - 256 if b > 127 else b for b in block[148:156]) + 256


def _number(field_: bytes, what: str) -> int:
    if field_ and field_[0] & 0x80:  # GNU base-256
        if field_[0] == 0xFF:
            raise TarFormatError(f"a negative {what}")
        return int.from_bytes(bytes([field_[0] & 0x7F]) + field_[1:], "big")
    text = field_.strip(b" \0").split(b"\0", 1)[0]  # as Go: trim, then up to a NUL
    if not text:
        return 0
    if text.strip(_OCTAL_DIGITS):
        raise TarFormatError(f"a malformed {what} field {field_!r}")
    return int(text, 8)


def parse_pax(data: bytes) -> dict[bytes, bytes]:
    """The records of a PAX extended header (`"<len> <key>=<value>\\n"` each)."""
    records: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0:  # some writers pad with NULs
            break
        space = data.find(b" ", pos, pos + 21)
        if space < 0 or not data[pos:space].isdigit():
            raise TarFormatError("a malformed PAX record length")
        length = int(data[pos:space])
        end = pos + length
        if length <= space - pos + 1 or end > len(data) or data[end - 1] != 0x0A:
            raise TarFormatError("a malformed PAX record")
        key, eq, value = data[space + 1 : end - 1].partition(b"=")
        if not eq or not key:
            raise TarFormatError("a PAX record without a key")
        if key.startswith(b"GNU.sparse."):
            raise TarFormatError("sparse files are not supported")
        records[key] = value
        pos = end
    return records


def _pax_int(pax: dict[bytes, bytes], key: bytes, default: int) -> int:
    value = pax.get(key)
    if value is None:
        return default
    if not value.isdigit() or len(value) > 20:
        raise TarFormatError(f"a malformed PAX {key.decode()} {value[:40]!r}")
    return int(value)


def _pax_time(value: bytes) -> int:
    """Nanoseconds from a PAX time (`[-]seconds[.fraction]`)."""
    negative = value.startswith(b"-")
    seconds, _, fraction = value.removeprefix(b"-").partition(b".")
    if not seconds.isdigit() or len(seconds) > 19 or (fraction and not fraction.isdigit()):
        raise TarFormatError(f"a malformed PAX time {value[:40]!r}")
    ns = int(seconds) * 1_000_000_000 + int((fraction[:9] or b"0").ljust(9, b"0"))
    return -ns if negative else ns


# --- writing ---------------------------------------------------------------------------------


def encode(header: Header) -> bytes:
    """The header block(s) of one entry: a PAX record set if needed, then USTAR."""
    pax: dict[bytes, bytes] = {}
    name = header.name
    if len(name) > 100 or not name.isascii():
        pax[b"path"] = name
        name = name[:100]
    linkname = header.linkname
    if len(linkname) > 100 or not linkname.isascii():
        pax[b"linkpath"] = linkname
        linkname = linkname[:100]
    seconds = header.mtime // 1_000_000_000
    fields: list[tuple[bytes, int, int]] = [
        (b"uid", header.uid, 8),
        (b"gid", header.gid, 8),
        (b"size", header.size, 12),
        (b"mtime", seconds, 12),
    ]
    numbers: dict[bytes, bytes] = {}
    for key, value, width in fields:
        if 0 <= value < 8 ** (width - 1):
            numbers[key] = _octal(value, width)
        else:
            pax[key] = str(value).encode()
            numbers[key] = _octal(0, width)
    for key, attribute in header.xattrs.items():
        pax[XATTR_PREFIX + key] = attribute
    block = _ustar(
        header.type, name, linkname, header.mode, header.devmajor, header.devminor, numbers
    )
    if not pax:
        return block
    records = b"".join(_pax_record(k, v) for k, v in pax.items())
    base = header.name.rstrip(b"/").rpartition(b"/")[2]
    pax_numbers = {
        b"uid": _octal(0, 8),
        b"gid": _octal(0, 8),
        b"size": _octal(len(records), 12),
        b"mtime": numbers[b"mtime"],
    }
    if len(records) >= 8**11:
        raise ValueError("extended header too large")
    pax_block = _ustar(_PAX, (b"PaxHeaders/" + base)[:100], b"", 0o644, 0, 0, pax_numbers)
    return pax_block + records + bytes(-len(records) % BLOCK) + block


def _ustar(
    kind: bytes,
    name: bytes,
    linkname: bytes,
    mode: int,
    major: int,
    minor: int,
    numbers: dict[bytes, bytes],
) -> bytes:
    """One USTAR block; names are written as they are (truncated by the caller)."""
    block = _HEADER.pack(
        name,
        _octal(mode & 0o7777, 8),
        numbers[b"uid"],
        numbers[b"gid"],
        numbers[b"size"],
        numbers[b"mtime"],
        b" " * 8,
        kind,
        linkname,
        _USTAR_MAGIC,
        b"",
        b"",
        _device(major),
        _device(minor),
        b"",
    )
    return _with_checksum(block)


def end_of_archive() -> bytes:
    return bytes(2 * BLOCK)


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def _device(value: int) -> bytes:
    if value < 8**7:
        return _octal(value, 8)
    if value >= 1 << 56:
        raise ValueError(f"device number {value} too large for a tar header")
    return bytes([0x80]) + value.to_bytes(7, "big")  # GNU base-256, as Go reads it


def _with_checksum(block: bytes) -> bytes:
    return block[:148] + b"%06o\0 " % sum(block) + block[156:]


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length = len(str(length)) + len(body)
    return str(length).encode() + body

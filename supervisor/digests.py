"""OCI digests (`algorithm:hex`): parsing with clear errors, and hashers for each algorithm."""

from __future__ import annotations

import hashlib
import re

from supervisor.errors import InvalidArgument

_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}
_HEX = re.compile(r"[a-f0-9]+")


def parse(digest: str) -> tuple[str, str]:
    """Split and validate a digest; InvalidArgument names it when malformed."""
    algorithm, sep, encoded = digest.partition(":")
    if not sep:
        raise InvalidArgument(f'invalid digest "{digest}": missing algorithm')
    if algorithm not in _LENGTHS:
        raise InvalidArgument(f'invalid digest "{digest}": unsupported algorithm "{algorithm}"')
    if len(encoded) != _LENGTHS[algorithm] or not _HEX.fullmatch(encoded):
        raise InvalidArgument(f'invalid digest "{digest}": invalid checksum digest format')
    return algorithm, encoded


def validate(digest: str) -> str:
    parse(digest)
    return digest


def hasher(algorithm: str = "sha256") -> hashlib._Hash:
    return hashlib.new(algorithm)


def of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"

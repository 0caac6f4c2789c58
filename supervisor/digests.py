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


def chain_ids(diff_ids: list[str]) -> list[str]:
    """The OCI chainIDs of a layer stack: chain(n) = sha256(chain(n-1) + " " + diffID(n))."""
    out: list[str] = []
    for diff_id in diff_ids:
        if out:
            diff_id = "sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest()
        out.append(diff_id)
    return out

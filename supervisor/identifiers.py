"""Validation of the names people choose: namespaces, container ids, lease ids, and labels.

containerd's rule, which its clients already obey: 1 to 76 characters, runs of letters and
digits joined by single `.`, `_` or `-`, never starting or ending with a separator. Labels are
free-form but a key and its value together may not exceed 4096 bytes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from supervisor.errors import InvalidArgument

MAX_LENGTH = 76
MAX_LABEL_SIZE = 4096
PATTERN = r"^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$"
_IDENTIFIER = re.compile(PATTERN)


def validate(name: str) -> str:
    """Return `name` if it is a valid identifier, else raise InvalidArgument naming it."""
    if not name:
        raise InvalidArgument("identifier must not be empty")
    if len(name) > MAX_LENGTH:
        raise InvalidArgument(f'identifier "{name}" greater than maximum length ({MAX_LENGTH})')
    if not _IDENTIFIER.match(name):
        raise InvalidArgument(f'identifier "{name}" must match {PATTERN}')
    return name


def validate_label(key: str, value: str) -> None:
    if not key:
        raise InvalidArgument("label key must not be empty")
    size = len(key.encode()) + len(value.encode())
    if size > MAX_LABEL_SIZE:
        raise InvalidArgument(
            f'label "{key}": key and value length ({size} bytes) greater than maximum size '
            f"({MAX_LABEL_SIZE} bytes)"
        )


def validate_labels(labels: Mapping[str, str]) -> dict[str, str]:
    for key, value in labels.items():
        validate_label(key, value)
    return dict(labels)

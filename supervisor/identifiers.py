"""Validation of the names people choose: namespaces, container ids, lease ids, and labels.

containerd's rule, which its clients already obey: 1 to 76 characters, runs of letters and
digits joined by single `.`, `_` or `-`, never starting or ending with a separator. Labels are
free-form but a key and its value together may not exceed 4096 bytes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from supervisor.errors import InvalidArgument, Unknown

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
    """containerd's labels.Validate: the size only (see `require_label_keys`)."""
    encoded = key.encode()
    if len(encoded) + len(value.encode()) > MAX_LABEL_SIZE:
        shown = encoded[:10].decode(errors="replace")  # containerd names the key's first bytes
        raise InvalidArgument(
            f"label key and value greater than maximum size ({MAX_LABEL_SIZE} bytes), key: {shown}"
        )


def validate_labels(labels: Mapping[str, str], what: str = "") -> dict[str, str]:
    """The labels, if each is valid; the error's words start with `what: ` when given
    (containerd's stores name the field: `image.Labels: label key and value ...`)."""
    try:
        for key, value in labels.items():
            validate_label(key, value)
    except InvalidArgument as e:
        if what:
            raise InvalidArgument(f"{what}: {e.detail}") from None
        raise
    return dict(labels)


def require_label_keys(labels: Mapping[str, str], writing: str = "") -> None:
    """containerd checks no label key for presence: its database refuses an empty one as the
    labels are written ("key required"), an error it answers UNKNOWN, in the words of the
    store's write step (`writing: failed to set label ""="v": key required`)."""
    for key, value in labels.items():
        if not key:
            words = f'failed to set label "{key}"={json.dumps(value, ensure_ascii=False)}: '
            words += "key required"
            raise Unknown(f"{writing}: {words}" if writing else words, plain=True)

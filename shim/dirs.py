"""Directories made under a parent that someone else may remove once it is empty.

The daemon removes a namespace's directory (`tasks/<ns>`, `logs/<ns>`) when its last entry
goes. A directory being made for another entry at the same moment can lose its parent between
making the parent and making itself; making it again is then the answer, not an error.
"""

from __future__ import annotations

import os

TRIES = 8


def make_dirs(path: str | os.PathLike[str], mode: int = 0o777, parent_mode: int = 0o777) -> bool:
    """`path` and its missing parents; True if `path` was made here, False if it was there."""
    parent = os.path.dirname(os.fspath(path))
    for attempt in range(TRIES):
        try:
            os.makedirs(parent, mode=parent_mode, exist_ok=True)
        except FileExistsError:  # made by the other side, and gone again before the check
            continue
        try:
            os.mkdir(path, mode)
            return True
        except FileExistsError:
            return False
        except FileNotFoundError:  # the parent went between the two steps
            if attempt == TRIES - 1:
                raise
    os.mkdir(path, mode)  # a last try: its error is the answer
    return True

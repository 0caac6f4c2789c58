"""The real ctr prints the same words, exits the same way and makes the same RPCs against ctrd
as against a real containerd (started by the test; see tests/support/compat.py).

Table-driven: each case sets up its state through ctr itself on both daemons, in a namespace
of its own, then runs one ctr command line on both and compares exit code, masked output and
the RPC sequence (method and status code).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support import compat

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def both() -> Iterator[compat.Both]:
    with compat.Both.started() as pair:
        yield pair


@dataclass(frozen=True)
class Case:
    name: str
    command: tuple[str, ...]
    setup: tuple[tuple[str, ...], ...] = ()
    masks: tuple[compat.Mask, ...] = ()
    calls: compat.CallOrder = "ordered"


CASES = (
    Case("namespaces-ls", ("namespaces", "ls")),
    Case(
        "namespaces-create-existing",
        ("namespaces", "create", "{ns}"),
        setup=(("namespaces", "create", "{ns}"),),
    ),
)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_ctr_says_what_containerd_says(both: compat.Both, case: Case) -> None:
    ns = f"compat-{case.name}"
    for command in case.setup:
        both.setup(*(arg.replace("{ns}", ns) for arg in command), ns=ns)
    pair = both.ctr(*(arg.replace("{ns}", ns) for arg in case.command), ns=ns, masks=case.masks)
    compat.assert_same(pair, case.calls)

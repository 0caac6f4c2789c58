"""Kubernetes' CRI validation suite (critest, cri-tools 1.26.1) against ctrd, as a ratchet.

`critest_passing.txt` beside this file lists the specs known to pass on ctrd (one full spec
text a line, as critest prints them); the test runs exactly those against a CRI node
(`tests/support/cri.py`: critest's images through the mirrors, a real CNI bridge) and every
one must pass. The list only grows as the CRI's parts land: a line taken out needs a reason
in the commit that takes it. The pinned-digest image spec is never listed.

`CTRD_CRITEST_ALL=1` runs every spec (but that one) instead and prints those that pass but
are not listed yet (lines to add). By hand, outside pytest: `python -m tests.support.cri --help`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.cri import CriNode, focus_on, run_critest

pytestmark = pytest.mark.integration

PASSING = Path(__file__).with_name("critest_passing.txt")


def known_to_pass() -> list[str]:
    lines = (line.strip() for line in PASSING.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


@pytest.mark.timeout(900)
def test_every_critest_spec_known_to_pass_on_ctrd_passes(cri_node: CriNode, short_tmp: Path):
    known = known_to_pass()
    assert len(set(known)) == len(known), "a spec is listed twice"
    run_all = os.environ.get("CTRD_CRITEST_ALL") == "1"
    run = run_critest(cri_node, short_tmp / "critest", () if run_all else focus_on(known))
    print(f"critest on ctrd: {run.summary()} ({len(known)} listed as passing)")
    by_name = {spec.name: spec for spec in run.specs}
    unlisted = sorted(s.name for s in run.specs if s.status == "passed" and s.name not in known)
    if unlisted:
        print("passing but not listed in critest_passing.txt:\n" + "\n".join(unlisted))
    missing = [name for name in known if name not in by_name]
    assert not missing, f"listed specs that critest 1.26.1 does not have: {missing}"
    broken = [
        f"{name}: {by_name[name].status}: {by_name[name].message.strip()[:500]}"
        for name in known
        if by_name[name].status != "passed"
    ]
    log = run.log.read_text(errors="replace")
    assert not broken, "\n".join(broken) + f"\n--- critest log (end) ---\n{log[-6000:]}"

"""shim.runcseccomp: runc's exec filter rebuilt (its bytes against what runc loaded:
tests/integration/test_nsexec.py)."""

from __future__ import annotations

import struct

import pytest

from shim import runcseccomp

PROFILE = {
    "default_action": 2,  # Errno (EPERM)
    "architectures": ["amd64", "x86", "x32"],
    "syscalls": [
        {"name": "read", "action": 4, "errnoRet": None, "args": []},
        {"name": "pwritev2", "action": 4, "errnoRet": None, "args": []},
        {"name": "personality", "action": 4, "errnoRet": None,
         "args": [{"index": 0, "value": 8, "value_two": 0, "op": 1}]},
        {"name": "no_such_call", "action": 4, "errnoRet": None, "args": []},
        {"name": "mkdir", "action": 2, "errnoRet": None, "args": []},  # = the default: skipped
    ],
}  # fmt: skip


def _instructions(program: bytes) -> list[tuple[int, int, int, int]]:
    return [struct.unpack_from("=HBBI", program, i) for i in range(0, len(program), 8)]


def test_the_stub_sends_newer_syscalls_to_enosys_before_the_filter():
    program = _instructions(runcseccomp.program(PROFILE))
    stub = program[:14]  # runc's for two audit architectures, x86_64 with x32
    assert stub[0] == (0x20, 0, 0, 4)  # load the architecture
    assert stub[1] == (0x15, 2, 0, 0x40000003)  # i386
    assert stub[2] == (0x15, 4, 0, 0xC000003E)  # x86_64 (and x32)
    assert stub[9][3] == 328  # x86_64: pwritev2, the profile's highest number
    assert stub[10][3] == 0x40000000 | 547  # x32's, bit 30 set
    assert stub[13] == (0x06, 0, 0, 0x00050026)  # ERRNO(ENOSYS)
    assert (0x06, 0, 0, 0x00050001) in program[14:]  # libseccomp's default: ERRNO(EPERM)


def test_allowing_defaults_get_no_stub_and_every_order_is_one_of_runcs():
    allowing = {**PROFILE, "default_action": 4}
    program = runcseccomp.program(allowing)
    assert _instructions(program)[0] != (0x20, 0, 0, 4) or len(program) < 14 * 8
    assert runcseccomp.variants(allowing) == [program]
    orders = runcseccomp.variants(PROFILE)
    assert runcseccomp.program(PROFILE) == orders[0]
    assert len(orders) == 4  # two audit architectures, each loop in either order


@pytest.mark.parametrize(
    ("config", "why"),
    [
        ({**PROFILE, "listener_path": "/run/agent.sock"}, "notify"),
        ({**PROFILE, "architectures": ["riscv64"]}, "architecture riscv64"),
        ({**PROFILE, "default_action": 7}, "action 7"),
        ({"architectures": []}, "does not read"),
    ],
)
def test_what_it_leaves_to_runc(config, why):
    with pytest.raises(runcseccomp.Unsupported, match=why):
        runcseccomp.program(config)

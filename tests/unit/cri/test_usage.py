"""What the CRI's stats are made of: cgroup files reduced as containerd reduces them (v1 and
v2: this host is v1, so v2 is tested on files only), CPU rates, /proc/net/dev, pod cgroups
named by systemd slices, and the writable layers' cache."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from supervisor.cri import usage
from supervisor.runtime.metrics import CgroupV1, CgroupV2

GIB = 1 << 30


def _files(directory: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def test_v1_memory_and_cpu_are_reduced_as_containerds_cri(tmp_path: Path):
    _files(
        tmp_path,
        {
            "cpuacct.usage": "123456789\n",
            "memory.usage_in_bytes": "10000\n",
            "memory.limit_in_bytes": f"{GIB}\n",
            "memory.stat": (
                "rss 1\ninactive_file 5\npgfault 1\n"
                "total_rss 4000\ntotal_inactive_file 3000\ntotal_pgfault 77\ntotal_pgmajfault 3\n"
            ),
            "pids.current": "4\n",
        },
    )
    got = usage.sample(CgroupV1(dict.fromkeys(("cpuacct", "memory", "pids"), tmp_path)))
    assert got.cpu == 123456789
    assert got.memory == usage.Memory(
        usage=10000, working_set=7000, available=GIB - 7000, rss=4000,
        page_faults=77, major_page_faults=3,
    )  # fmt: skip
    assert got.processes == 4
    assert got.at > 0


def test_v1_unlimited_memory_has_nothing_available_and_the_working_set_floors_at_zero(
    tmp_path: Path,
):
    _files(
        tmp_path,
        {
            "memory.usage_in_bytes": "100\n",
            "memory.limit_in_bytes": "9223372036854771712\n",
            "memory.stat": "total_inactive_file 500\n",
        },
    )
    got = usage.sample(CgroupV1({"memory": tmp_path}))
    assert got.memory is not None
    assert (got.memory.working_set, got.memory.available) == (0, 0)
    assert got.cpu is None  # no cpuacct hierarchy: no CPU figures rather than a false 0


def test_v2_files_are_reduced_as_containerds_cri(tmp_path: Path):
    _files(
        tmp_path,
        {
            "cpu.stat": "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n",
            "memory.current": "8192\n",
            "memory.max": "65536\n",
            "memory.stat": "anon 4096\nfile 4096\ninactive_file 1024\npgfault 9\npgmajfault 1\n",
            "pids.current": "2\n",
        },
    )
    got = usage.sample(CgroupV2(tmp_path))
    assert got.cpu == 2_500_000
    assert got.memory == usage.Memory(
        usage=8192, working_set=7168, available=65536 - 7168, rss=4096,
        page_faults=9, major_page_faults=1,
    )  # fmt: skip
    assert got.processes == 2


def test_v2_memory_max_unlimited_has_nothing_available(tmp_path: Path):
    _files(tmp_path, {"memory.current": "10\n", "memory.max": "max\n"})
    got = usage.sample(CgroupV2(tmp_path))
    assert got.memory is not None
    assert (got.memory.working_set, got.memory.available) == (10, 0)


def test_a_pod_without_a_cgroup_is_the_sum_of_its_containers():
    one = usage.Sample(1, 100, usage.Memory(1, 2, 3, 4, 5, 6), 1)
    two = usage.Sample(2, None, None, 2)
    three = usage.Sample(3, 50, usage.Memory(10, 20, 30, 40, 50, 60), 3)
    assert usage.add([one, two, three], 9) == usage.Sample(
        9, 150, usage.Memory(11, 22, 33, 44, 55, 66), 6
    )


def test_nano_cores_are_the_cpu_used_between_two_samples_of_one_key():
    rates = usage.CpuRates()
    assert rates.rate("a", 1_000_000_000, 5_000) == 0  # first sample
    assert rates.rate("a", 3_000_000_000, 1_000_005_000) == 500_000_000  # half a core
    assert rates.rate("b", 3_000_000_000, 7) == 0  # keys are separate
    assert rates.rate("a", 3_000_000_000, 2_000_000_000) == 0  # no time passed
    assert rates.rate("a", 4_000_000_000, 10) == 0  # counter went back (a new cgroup)
    rates.keep(["b"])
    assert rates.rate("a", 5_000_000_000, 1_000_000_010) == 0  # forgotten: first again


def test_net_dev_lines_give_every_interface_but_loopback():
    text = (
        "Inter-|   Receive                                                |  Transmit\n"
        " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets "
        "errs drop fifo colls carrier compressed\n"
        "    lo:     140       2    0    0    0     0          0         0      140       2"
        "    0    0    0     0       0          0\n"
        "  eth0:  123456     100    3    0    0     0          0         0     7890      50"
        "    4    0    0     0       0          0\n"
        "  net1:1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n"
    )
    assert usage.parse_net_dev(text) == [
        usage.Interface("eth0", rx_bytes=123456, rx_errors=3, tx_bytes=7890, tx_errors=4),
        usage.Interface("net1", rx_bytes=1, rx_errors=3, tx_bytes=9, tx_errors=11),
    ]


def test_net_dev_is_read_inside_the_namespace_a_pin_names():
    # Our own namespace's file serves as a pin: what the thread reads there is our /proc/net/dev.
    inside = {i.name for i in usage.net_dev("/proc/self/ns/net")}
    assert inside == {i.name for i in usage.parse_net_dev(Path("/proc/net/dev").read_text())}
    assert usage.net_dev("/nonexistent/pin") == []


@pytest.mark.parametrize(
    ("parent", "path"),
    [
        ("kubepods.slice", "/kubepods.slice"),
        (
            "kubepods-burstable-pod12.slice",
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod12.slice",
        ),
    ],
)
def test_a_systemd_slice_is_nested_as_systemd_nests_it(parent: str, path: str):
    assert usage.systemd_slice_path(parent) == path


def test_a_cgroupfs_parent_is_found_in_each_hierarchy():
    where = usage.of_parent("/kubepods/besteffort/podx")
    match where:
        case CgroupV1(directories):
            assert all(str(d).endswith("/kubepods/besteffort/podx") for d in directories.values())
        case CgroupV2(directory):
            assert str(directory).endswith("/kubepods/besteffort/podx")
        case None:
            pytest.fail("no cgroup hierarchy mounted")
    assert where is not None
    assert not usage.exists(where)


def test_a_writable_layer_is_measured_once_per_ttl():
    calls: list[int] = []

    async def measure() -> tuple[int, int]:
        calls.append(1)
        return 4096 * len(calls), len(calls)

    async def run() -> None:
        layers = usage.LayerUsage(ttl=60, wait=1)
        first = await layers.get("c", measure)
        assert (first.used_bytes, first.inodes_used) == (4096, 1)
        assert first.at > 0
        assert await layers.get("c", measure) == first
        assert len(calls) == 1
        layers.keep([])
        assert (await layers.get("c", measure)).used_bytes == 8192

    asyncio.run(run())


def test_a_slow_measure_answers_the_last_value_and_is_taken_when_done():
    release = asyncio.Event()

    async def slow() -> tuple[int, int]:
        await release.wait()
        return 100, 2

    async def run() -> None:
        layers = usage.LayerUsage(ttl=0, wait=0.01)
        assert await layers.get("c", slow) == usage.LayerSize(0, 0, 0)  # not measured yet
        release.set()
        await asyncio.sleep(0)
        got = await layers.get("c", slow)  # the same walk, finished: no second one
        assert (got.used_bytes, got.inodes_used) == (100, 2)

    asyncio.run(run())


def test_a_patient_caller_waits_for_the_first_measure_only():
    """ImageFsInfo's way: the first walk is waited for whole; later ones, past the ttl, answer
    the last value while a slow walk goes on."""
    gate = asyncio.Event()
    walks: list[int] = []

    async def walk() -> tuple[int, int]:
        walks.append(1)
        if len(walks) > 1:
            await gate.wait()
        await asyncio.sleep(0.05)  # longer than `wait`
        return 1000 * len(walks), len(walks)

    async def run() -> None:
        fs = usage.LayerUsage(ttl=0, wait=0.01)
        first = await fs.get("", walk, patient=True)
        assert (first.used_bytes, first.inodes_used) == (1000, 1)
        assert await fs.get("", walk, patient=True) == first  # the second walk is slow
        gate.set()
        await asyncio.sleep(0.1)
        second = await fs.get("", walk, patient=True)
        assert (second.used_bytes, second.at > first.at) == (2000, True)

    asyncio.run(run())


def test_a_failed_measure_is_not_kept_and_is_tried_again():
    attempts: list[int] = []

    async def failing() -> tuple[int, int]:
        attempts.append(1)
        raise FileNotFoundError("the snapshot went")

    async def run() -> None:
        layers = usage.LayerUsage(ttl=60, wait=0.01)
        assert await layers.get("c", failing) == usage.LayerSize(0, 0, 0)
        assert await layers.get("c", failing) == usage.LayerSize(0, 0, 0)

    asyncio.run(run())
    assert len(attempts) == 2

"""Task metrics: real cgroups read as containerd reads them, packed so that ctr decodes them.

The real-cgroup tests create cgroups with unique names, move a child process into them, and
remove both (the process by pid) even when they fail. v1 needs the controllers mounted under
/sys/fs/cgroup/<hierarchy> (legacy or hybrid hosts); v2 uses whichever cgroup2 mount exists.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc_tools
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory

from supervisor.api.io.containerd.cgroups.v1 import metrics_pb2 as v1
from supervisor.api.io.containerd.cgroups.v2 import metrics_pb2 as v2
from supervisor.errors import NotFound
from supervisor.runtime import metrics
from supervisor.runtime.metrics import CgroupV1, CgroupV2

MIB = 1024 * 1024
BURN_SECONDS = 0.05
# Waits for a line on stdin (sent once it is in its cgroups), burns CPU, says so, then sleeps.
BURNER = f"""
import sys, time
sys.stdin.readline()
start = time.process_time()
while time.process_time() - start < {BURN_SECONDS}:
    pass
print("burnt", flush=True)
time.sleep(60)
"""

GOCODE_SRC = Path("/usr/share/gocode/src")
CGROUPS_REPO = GOCODE_SRC / "github.com" / "containerd" / "cgroups"
GOGO_INCLUDE = GOCODE_SRC / "github.com" / "gogo" / "protobuf"


# --- helpers -----------------------------------------------------------------------------------


def _unique_name() -> str:
    return f"ctrd-test-{uuid.uuid4().hex[:12]}"


def _own_v1_cgroups(controllers: set[str]) -> dict[str, Path]:
    """This process's cgroup directory per controller, in the /sys/fs/cgroup/<hierarchy> layout."""
    found = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, hierarchy, path = line.split(":", 2)
        base = Path("/sys/fs/cgroup") / hierarchy
        for name in hierarchy.split(","):
            if name in controllers and base.is_dir():
                found[name] = base / path.lstrip("/")
    return found


def _cgroup2_mount() -> Path | None:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        before, _, after = line.partition(" - ")
        if after.split()[0] == "cgroup2":
            return Path(before.split()[4])
    return None


def _rmdir(directory: Path) -> None:
    # A killed process leaves its cgroup a moment after wait() returns.
    for _ in range(100):
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            time.sleep(0.02)
    directory.rmdir()


@contextlib.contextmanager
def _made_cgroups(parents: list[Path]) -> Iterator[list[Path]]:
    """A new cgroup (one unique name) below each parent, removed on exit."""
    name = _unique_name()
    made: list[Path] = []
    try:
        for parent in parents:
            (parent / name).mkdir()
            made.append(parent / name)
        yield made
    finally:
        for directory in reversed(made):
            _rmdir(directory)


def _move(pid: int, directory: Path) -> None:
    (directory / "cgroup.procs").write_text(f"{pid}\n")


def _burn(burner: subprocess.Popen[str]) -> None:
    assert burner.stdin is not None
    assert burner.stdout is not None
    burner.stdin.write("go\n")
    burner.stdin.flush()
    assert burner.stdout.readline() == "burnt\n"


@pytest.fixture
def burner() -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-c", BURNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        yield process
    finally:
        os.kill(process.pid, 9)
        process.wait()
        assert process.stdin is not None
        assert process.stdout is not None
        process.stdin.close()
        process.stdout.close()


@pytest.fixture
def v1_cgroups() -> Iterator[dict[str, Path]]:
    """A fresh cgroup below ours in the memory, cpu, cpuacct and pids hierarchies."""
    own = _own_v1_cgroups({"memory", "cpu", "cpuacct", "pids"})
    if len(own) < 4:
        pytest.skip(f"no cgroup v1 memory, cpu, cpuacct and pids hierarchies here (found {own})")
    parents = sorted(set(own.values()))
    with _made_cgroups(parents) as made:
        by_parent = dict(zip(parents, made, strict=True))
        yield {controller: by_parent[parent] for controller, parent in own.items()}


@pytest.fixture
def v2_cgroup() -> Iterator[Path]:
    mount = _cgroup2_mount()
    if mount is None:
        pytest.skip("no cgroup2 hierarchy mounted here")
    with _made_cgroups([mount]) as (made,):
        yield made


# --- real cgroups ------------------------------------------------------------------------------


def test_v1_metrics_of_a_process_report_its_limits_and_usage(v1_cgroups, burner):
    (v1_cgroups["memory"] / "memory.limit_in_bytes").write_text(str(64 * MIB))
    (v1_cgroups["pids"] / "pids.max").write_text("16")
    for directory in set(v1_cgroups.values()):
        _move(burner.pid, directory)
    _burn(burner)

    packed = metrics.collect(burner.pid)

    assert packed.type_url == "io.containerd.cgroups.v1.Metrics"
    got = v1.Metrics.FromString(packed.value)
    assert got.memory.usage.limit == 64 * MIB
    assert got.memory.hierarchical_memory_limit == 64 * MIB
    assert got.HasField("memory_oom_control")
    for entry in ("usage", "swap", "kernel", "kernel_tcp"):
        assert got.memory.HasField(entry)  # ctr dereferences memory.usage unchecked
    assert got.pids.current >= 1
    assert got.pids.limit == 16
    assert got.cpu.usage.total >= BURN_SECONDS * 1e9 * 0.8
    assert sum(got.cpu.usage.per_cpu) == got.cpu.usage.total
    assert got.cpu.HasField("throttling")


def test_v1_unlimited_pids_read_as_zero_like_containerd(v1_cgroups, burner):
    _move(burner.pid, v1_cgroups["pids"])
    got = v1.Metrics.FromString(metrics.collect(burner.pid).value)
    assert got.pids.current >= 1
    assert got.pids.limit == 0


def test_v2_metrics_of_a_process_report_its_cpu_usage(v2_cgroup, burner):
    _move(burner.pid, v2_cgroup)
    _burn(burner)

    got = metrics.v2_metrics(v2_cgroup)

    assert got.cpu.usage_usec >= BURN_SECONDS * 1e6 * 0.8
    assert got.cpu.usage_usec >= got.cpu.user_usec
    if (v2_cgroup / "pids.current").exists():
        assert got.pids.current >= 1
    if (v2_cgroup / "memory.max").exists():
        assert got.memory.usage_limit == 2**64 - 1  # "max"
    for field in ("pids", "cpu", "memory", "io", "rdma"):
        assert got.HasField(field)
    packed = metrics.pack(got)
    assert packed.type_url == "io.containerd.cgroups.v2.Metrics"
    assert v2.Metrics.FromString(packed.value) == got


def test_a_process_only_in_the_unified_hierarchy_is_read_as_v2(v2_cgroup, burner):
    _move(burner.pid, v2_cgroup)
    # On a hybrid host the process is in v1 hierarchies too; its unified line alone is what a
    # pure cgroup2 host shows.
    unified = [
        line
        for line in Path(f"/proc/{burner.pid}/cgroup").read_text().splitlines()
        if line.startswith("0::")
    ]
    mountinfo = Path("/proc/self/mountinfo").read_text()
    assert metrics.locate("\n".join(unified), mountinfo) == CgroupV2(v2_cgroup)


def test_a_missing_process_is_not_found():
    process = subprocess.Popen(["true"])
    process.wait()
    with pytest.raises(NotFound, match=f"process {process.pid}"):
        metrics.collect(process.pid)


# --- locating cgroups (pure) ------------------------------------------------------------------

HYBRID_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
"""
UNIFIED_MOUNTINFO = """\
25 22 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw
"""


def test_hybrid_hosts_use_the_v1_controllers():
    proc_cgroup = "9:name=systemd:/x\n8:pids:/ctr/a\n4:memory:/ctr/a\n2:cpu,cpuacct:/ctr/a\n0::/x\n"
    assert metrics.locate(proc_cgroup, HYBRID_MOUNTINFO) == CgroupV1(
        {
            "pids": Path("/sys/fs/cgroup/pids/ctr/a"),
            "memory": Path("/sys/fs/cgroup/memory/ctr/a"),
            "cpu": Path("/sys/fs/cgroup/cpu,cpuacct/ctr/a"),
            "cpuacct": Path("/sys/fs/cgroup/cpu,cpuacct/ctr/a"),
        }
    )


def test_pure_cgroup2_hosts_use_the_unified_hierarchy():
    located = metrics.locate("0::/system.slice/ctr-a.scope\n", UNIFIED_MOUNTINFO)
    assert located == CgroupV2(Path("/sys/fs/cgroup/system.slice/ctr-a.scope"))


def test_mount_roots_are_stripped_and_escapes_decoded():
    mountinfo = "50 1 0:40 /outer /mnt/cg\\040two rw - cgroup2 cgroup2 rw\n"
    assert metrics.locate("0::/outer/inner\n", mountinfo) == CgroupV2(Path("/mnt/cg two/inner"))


def test_cgroups_that_are_not_mounted_locate_nothing():
    assert metrics.locate("4:memory:/a\n0::/a\n", "") is None


# --- parsing and missing files ----------------------------------------------------------------


def test_missing_files_leave_zeros_and_the_submessages_ctr_needs(tmp_path):
    directories = dict.fromkeys(metrics.V1_CONTROLLERS, tmp_path)
    got = v1.Metrics.FromString(metrics.pack(metrics.v1_metrics(directories)).value)
    assert got.HasField("cpu")
    assert got.cpu.HasField("usage")
    assert not got.HasField("memory")  # containerd sets it only with memory.stat
    assert not got.HasField("pids")
    assert metrics.v2_metrics(tmp_path / "gone").HasField("cpu")


def test_v1_files_are_read_like_containerd(tmp_path):
    files = {
        "memory.stat": "cache 10\nrss 20\npgpgin 3\nhierarchical_memsw_limit 99\nswap 7\n",
        "memory.limit_in_bytes": "1048576\n",
        "memory.memsw.usage_in_bytes": "5\n",
        "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        "cpuacct.usage": "300\n",
        "cpuacct.usage_percpu": "100 200 \n",
        "cpu.stat": "nr_periods 4\nnr_throttled 1\nthrottled_time 77\n",
        "pids.current": "3\n",
        "pids.max": "max\n",
        "hugetlb.2MB.usage_in_bytes": "4194304\n",
        "hugetlb.2MB.failcnt": "1\n",
        "blkio.throttle.io_serviced": "8:0 Read 5\n8:0 Write 6\nTotal 11\n",
        "rdma.current": "mlx4_0 hca_handle=2 hca_object=2000\n",
        "rdma.max": "mlx4_0 hca_handle=max hca_object=4\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    got = metrics.v1_metrics(dict.fromkeys(metrics.V1_CONTROLLERS, tmp_path))
    assert (got.memory.cache, got.memory.rss, got.memory.pg_pg_in) == (10, 20, 3)
    assert got.memory.hierarchical_swap_limit == 99
    assert got.memory.usage.limit == MIB
    assert got.memory.swap.usage == 5
    assert got.memory_oom_control.oom_kill == 2
    assert (got.cpu.usage.total, list(got.cpu.usage.per_cpu)) == (300, [100, 200])
    assert (got.cpu.throttling.periods, got.cpu.throttling.throttled_time) == (4, 77)
    assert (got.pids.current, got.pids.limit) == (3, 0)
    assert got.hugetlb == [v1.HugetlbStat(pagesize="2MB", usage=4 * MIB, failcnt=1)]
    assert [(e.op, e.major, e.minor, e.value) for e in got.blkio.io_serviced_recursive] == [
        ("Read", 8, 0, 5),
        ("Write", 8, 0, 6),
    ]
    assert got.rdma.limit == [v1.RdmaEntry(device="mlx4_0", hca_handles=2**32 - 1, hca_objects=4)]


def test_v1_hierarchical_totals_are_read_under_containerds_names(tmp_path):
    # memory.stat says total_pgfault; MemoryStat calls it total_pg_fault (kubelet's page
    # faults in the CRI's stats come from it).
    (tmp_path / "memory.stat").write_text(
        "pgfault 1\ntotal_pgfault 10\ntotal_pgmajfault 2\ntotal_pgpgin 3\ntotal_pgpgout 4\n"
    )
    got = metrics.v1_metrics({"memory": tmp_path}).memory
    assert (got.pg_fault, got.total_pg_fault, got.total_pg_maj_fault) == (1, 10, 2)
    assert (got.total_pg_pg_in, got.total_pg_pg_out) == (3, 4)


def test_v2_files_are_read_like_containerd(tmp_path):
    files = {
        "pids.current": "2\n",
        "pids.max": "max\n",
        "cpu.stat": "usage_usec 9\nuser_usec 5\nsystem_usec 4\nnr_throttled 1\n",
        "memory.stat": "anon 100\nfile 200\npgfault 3\n",
        "memory.current": "4096\n",
        "memory.max": "8192\n",
        "memory.swap.max": "max\n",
        "memory.events": "low 0\nhigh 1\nmax 2\noom 3\noom_kill 4\n",
        "io.stat": "8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0\n\n",
        "hugetlb.1GB.current": "0\n",
        "hugetlb.1GB.max": "max\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    got = metrics.v2_metrics(tmp_path)
    assert (got.pids.current, got.pids.limit) == (2, 2**64 - 1)
    assert (got.cpu.usage_usec, got.cpu.user_usec, got.cpu.nr_throttled) == (9, 5, 1)
    assert (got.memory.anon, got.memory.file, got.memory.pgfault) == (100, 200, 3)
    assert (got.memory.usage, got.memory.usage_limit) == (4096, 8192)
    assert (got.memory.swap_usage, got.memory.swap_limit) == (0, 2**64 - 1)
    assert got.memory_events == v2.MemoryEvents(high=1, max=2, oom=3, oom_kill=4)
    assert list(got.io.usage) == [v2.IOEntry(major=8, minor=0, rbytes=1, wbytes=2, rios=3, wios=4)]
    assert list(got.hugetlb) == [v2.HugeTlbStat(pagesize="1GB", current=0, max=2**64 - 1)]


def test_blkio_lines_get_device_names_from_partitions():
    devices = metrics.parse_partitions("major minor  #blocks  name\n\n 254 0 268435456 vda\n")
    entries = metrics.parse_blkio("254:0 Read 7\n254:0 9\nTotal 7\ngarbage\n", devices)
    assert entries == [
        v1.BlkIOEntry(op="Read", device="/dev/vda", major=254, minor=0, value=7),
        v1.BlkIOEntry(op="", device="/dev/vda", major=254, minor=0, value=9),
    ]


# --- what ctr decodes -------------------------------------------------------------------------


def _containerd_message_class(proto: str, full_name: str) -> type:
    """The message class compiled from Debian's containerd/cgroups proto (the one ctr uses)."""
    if not (CGROUPS_REPO / proto).is_file():
        if os.environ.get("CTRD_ALLOW_MISSING_CONTAINERD_PROTOS") == "1":
            pytest.skip("Debian's containerd/cgroups protos are not installed")
        pytest.fail("apt-get install golang-github-containerd-cgroups-dev")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.pb"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"-I{Path(grpc_tools.__file__).parent / '_proto'}",
                f"-I{GOCODE_SRC}",
                f"-I{GOGO_INCLUDE}",
                f"--descriptor_set_out={out}",
                "--include_imports",
                str(CGROUPS_REPO / proto),
            ],
            check=True,
            capture_output=True,
        )
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(full_name))


def _same_as_containerd_reads_it(packed: bytes, ours: object, theirs_class: type) -> None:
    theirs = theirs_class.FromString(packed)
    assert theirs.SerializeToString() == packed  # nothing unknown to them
    as_dict = json_format.MessageToDict
    assert as_dict(theirs, preserving_proto_field_name=True) == as_dict(
        ours, preserving_proto_field_name=True
    )


def test_containerds_own_v1_proto_decodes_what_we_pack():
    ours = v1.Metrics.FromString(metrics.collect(os.getpid()).value)
    ours.hugetlb.add(pagesize="2MB", usage=1)
    ours.blkio.io_serviced_recursive.add(op="Read", device="/dev/vda", major=254, value=3)
    ours.rdma.current.add(device="mlx4_0", hca_handles=2**32 - 1)
    theirs = _containerd_message_class("stats/v1/metrics.proto", "io.containerd.cgroups.v1.Metrics")
    _same_as_containerd_reads_it(metrics.pack(ours).value, ours, theirs)


def test_containerds_own_v2_proto_decodes_what_we_pack(tmp_path):
    (tmp_path / "memory.events").write_text("oom 1\n")
    (tmp_path / "io.stat").write_text("8:0 rbytes=1 wbytes=2 rios=3 wios=4\n")
    (tmp_path / "hugetlb.2MB.current").write_text("5\n")
    ours = metrics.v2_metrics(tmp_path)
    ours.cpu.usage_usec = 12
    theirs = _containerd_message_class("v2/stats/metrics.proto", "io.containerd.cgroups.v2.Metrics")
    _same_as_containerd_reads_it(metrics.pack(ours).value, ours, theirs)


def test_metrics_of_a_cgroup_path_that_is_gone_or_not_cgroupfs_are_not_found():
    for path in ("/ctrd-test-no-such-cgroup/x", "relative/x", "system.slice:ctrd:x"):
        with pytest.raises(NotFound):
            metrics.collect_path(path)


def test_metrics_of_a_cgroup_path_read_the_cgroup_it_names():
    own = Path("/proc/self/cgroup").read_text().splitlines()[0].rsplit(":", 1)[1]
    assert metrics.collect_path(own).type_url in ("io.containerd.cgroups.v1.Metrics",
                                          "io.containerd.cgroups.v2.Metrics")  # fmt: skip


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cache 4096\nrss 8192\n", {"cache": 4096, "rss": 8192}),  # the usual file
        ("cache 4096\nrss 8192", {"cache": 4096, "rss": 8192}),  # no last newline
        ("a 1\n\nb 2\n", {"a": 1, "b": 2}),  # a blank line
        ("a -1\nb 2\n", {"a": 0, "b": 2}),  # negative: 0, as containerd's parseUint
        ("a 99999999999999999999999\nb 1\n", {"b": 1}),  # overflow: left out
        ("a 1 x\nb\n", {}),  # words that pair up across lines are not pairs
        ("total 5\nfoo bar\n", {"total": 5}),
        ("", {}),
    ],
)
def test_key_value_files_read_as_containerd_reads_them(text: str, expected: dict[str, int]) -> None:
    assert metrics._parse_kv(text) == expected

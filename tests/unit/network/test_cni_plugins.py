"""supervisor.network.cni.pod with fake plugins (shell scripts that log what they were given):
the CNI protocol as a runtime speaks it, the record kept before and after, the locks."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest

from supervisor.cri.model import DnsConfig, PodRef, PortMapping
from supervisor.errors import FailedPrecondition
from supervisor.metadata.db import Database
from supervisor.network.cni.invoke import PluginError
from supervisor.network.cni.pod import CniPodNetwork
from supervisor.network.cni.store import AttachmentStore

SANDBOX = "a" * 64
POD = PodRef(SANDBOX, "web", "default", "uid-1")
HANG = "31.4159"  # seconds a hanging plugin's child sleeps: found by it in /proc
IP_RESULT = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "eth0", "sandbox": "/netns"}],
    "ips": [
        {"address": "fd00::2/64", "interface": 0},
        {"address": "10.9.0.2/24", "gateway": "10.9.0.1", "interface": 0},
    ],
}
LO_RESULT = {
    "cniVersion": "0.3.1",
    "interfaces": [{"name": "lo", "sandbox": "/netns"}],
    "ips": [{"version": "4", "address": "127.0.0.1/8", "interface": 0}],
}

# A fake plugin: logs its stdin and CNI_* environment, answers ADD with its canned result
# (fakemeta passes fakeip's on, as portmap does), sleeps when told, fails when told.
PLUGIN = """#!/bin/sh
log={log}
me=$(basename "$0")
in=$(cat)
n=$(ls "$log" | wc -l)
printf '%s' "$in" > "$log/$n-$CNI_COMMAND-$me-$CNI_IFNAME.stdin"
env | grep '^CNI_' | sort > "$log/$n-$CNI_COMMAND-$me-$CNI_IFNAME.env"
echo "start $(date +%s%N) $CNI_CONTAINERID" >> {times}
[ -f {slow} ] && sleep 0.3
echo "end $(date +%s%N) $CNI_CONTAINERID" >> {times}
if [ "$me" = hang ] && [ "$CNI_COMMAND" = ADD ]; then sleep {hang}; fi
if [ "$me" = fail ] && [ "$CNI_COMMAND" = ADD ]; then
  echo '{{"cniVersion":"1.0.0","code":7,"msg":"boom","details":"bad subnet"}}'; exit 1
fi
[ "$CNI_COMMAND" = ADD ] || exit 0
if [ "$me" = loopback ]; then cat {results}/loopback; else cat {results}/fakeip; fi
"""


class Lab:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.bin = base / "bin"
        self.log = base / "log"
        self.conf = base / "net.d"
        self.cache = base / "cache"
        self.times = base / "times"
        self.slow = base / "slow"
        self.netns = base / "netns"  # a plain file: not a namespace, so DELs get ""
        for d in (self.bin, self.log, self.conf, base / "results"):
            d.mkdir()
        self.netns.write_text("")
        (base / "results" / "fakeip").write_text(json.dumps(IP_RESULT))
        (base / "results" / "loopback").write_text(json.dumps(LO_RESULT))
        script = PLUGIN.format(
            log=self.log, times=self.times, slow=self.slow, results=base / "results", hang=HANG
        )
        for name in ("fakeip", "fakemeta", "fail", "hang", "loopback"):
            (self.bin / name).write_text(script)
            (self.bin / name).chmod(0o755)
        self.plugins = [
            {"type": "fakeip", "ipam": {"type": "none"}},
            {"type": "fakemeta", "capabilities": {"portMappings": True, "dns": False}},
        ]

    def write_conf(self, plugins: list[dict[str, Any]] | None = None) -> None:
        conflist = {"cniVersion": "1.0.0", "name": "fakenet", "plugins": plugins or self.plugins}
        (self.conf / "10-fake.conflist").write_text(json.dumps(conflist))

    def calls(self) -> list[str]:
        """`COMMAND plugin ifname` for each run, in the order they started."""
        names = sorted(
            (p.name for p in self.log.glob("*.stdin")), key=lambda n: int(n.split("-")[0])
        )
        return [" ".join(n.removesuffix(".stdin").split("-")[1:]) for n in names]

    def stdin(self, call: str) -> dict[str, Any]:
        match = [
            p
            for p in self.log.glob("*.stdin")
            if p.name.endswith(call.replace(" ", "-") + ".stdin")
        ]
        return dict(json.loads(match[-1].read_text()))

    def env(self, call: str) -> dict[str, str]:
        match = [
            p for p in self.log.glob("*.env") if p.name.endswith(call.replace(" ", "-") + ".env")
        ]
        lines = match[-1].read_text().splitlines()
        return dict(line.split("=", 1) for line in lines)


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    return Lab(tmp_path)


def run(lab: Lab, body: Any, timeout: float | None = None) -> Any:
    async def main() -> Any:
        db = await Database.open(lab.base / "meta.db")
        try:
            net = CniPodNetwork(db, str(lab.conf), [str(lab.bin)], str(lab.cache), timeout)
            return await body(net, AttachmentStore(db))
        finally:
            await db.close()

    return asyncio.run(main())


def test_add_runs_the_list_in_order_with_args_capabilities_and_prev_result(lab: Lab):
    lab.write_conf()

    async def body(net: CniPodNetwork, store: AttachmentStore) -> Any:
        return await net.setup(
            POD, str(lab.netns), [PortMapping("tcp", 80, 8080), PortMapping("tcp", 81, 0)],
            DnsConfig(("10.96.0.10",)), {"k": "v"},
        )  # fmt: skip

    address = run(lab, body)
    assert (address.ip, address.additional_ips) == ("10.9.0.2", ("fd00::2",))
    calls = lab.calls()
    assert sorted(calls) == ["ADD fakeip eth0", "ADD fakemeta eth0", "ADD loopback lo"]
    assert calls.index("ADD fakeip eth0") < calls.index("ADD fakemeta eth0")
    env = lab.env("ADD fakeip eth0")
    assert env["CNI_ARGS"] == (
        f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;"
        f"K8S_POD_INFRA_CONTAINER_ID={SANDBOX};K8S_POD_UID=uid-1"
    )
    assert (env["CNI_CONTAINERID"], env["CNI_NETNS"], env["CNI_PATH"]) == (
        SANDBOX, str(lab.netns), str(lab.bin),
    )  # fmt: skip
    first, second = lab.stdin("ADD fakeip eth0"), lab.stdin("ADD fakemeta eth0")
    assert (first["name"], first["cniVersion"]) == ("fakenet", "1.0.0")
    assert "prevResult" not in first
    assert "runtimeConfig" not in first
    assert second["prevResult"] == IP_RESULT
    # only what the plugin declared (dns is false), host ports > 0 only
    assert second["runtimeConfig"] == {
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""}]
    }
    assert lab.stdin("ADD loopback lo")["name"] == "cni-loopback"
    cached = json.loads((lab.cache / "results" / f"fakenet-{SANDBOX}-eth0").read_text())
    assert cached["kind"] == "cniCacheV1"
    assert cached["result"] == IP_RESULT
    assert base64.b64decode(cached["config"]) == (lab.conf / "10-fake.conflist").read_bytes()
    assert cached["cniArgs"][0] == ["IgnoreUnknown", "1"]


def test_teardown_dels_in_reverse_from_the_record_whatever_the_dir_holds_now(lab: Lab):
    lab.write_conf()

    async def body(net: CniPodNetwork, store: AttachmentStore) -> Any:
        await net.setup(POD, str(lab.netns), [PortMapping("tcp", 80, 8080)], None, {})
        (lab.conf / "10-fake.conflist").unlink()  # the operator removed the network meanwhile
        await net.teardown(SANDBOX, str(lab.netns))
        left = await store.sandboxes()
        await net.teardown(SANDBOX, "")  # again: nothing to do, no error
        return left

    assert run(lab, body) == []
    dels = [c for c in lab.calls() if c.startswith("DEL")]
    assert [c for c in dels if c.endswith("eth0")] == ["DEL fakemeta eth0", "DEL fakeip eth0"]
    assert sorted(dels) == ["DEL fakeip eth0", "DEL fakemeta eth0", "DEL loopback lo"]
    meta = lab.stdin("DEL fakemeta eth0")
    assert meta["prevResult"] == IP_RESULT  # the stored result, to every plugin
    assert lab.stdin("DEL fakeip eth0")["prevResult"] == IP_RESULT
    assert meta["runtimeConfig"]["portMappings"][0]["hostPort"] == 8080  # the ADD's args
    assert lab.env("DEL fakeip eth0")["CNI_NETNS"] == ""  # not a namespace: gone
    assert list((lab.cache / "results").iterdir()) == []


def test_a_failed_add_is_deleted_at_once_and_says_which_plugin_and_why(lab: Lab):
    lab.write_conf([*lab.plugins, {"type": "fail"}])

    async def body(net: CniPodNetwork, store: AttachmentStore) -> Any:
        with pytest.raises(PluginError) as failed:
            await net.setup(POD, str(lab.netns), [], None, {})
        return failed.value, await store.sandboxes()

    error, left = run(lab, body)
    assert str(error) == (
        f'failed to setup network for sandbox "{SANDBOX}": '
        'plugin type="fail" name="fakenet" failed (add): boom; bad subnet'
    )
    assert error.code == 7
    assert left == []
    assert [c for c in lab.calls() if c.endswith("eth0") and c.startswith("DEL")] == [
        "DEL fail eth0", "DEL fakemeta eth0", "DEL fakeip eth0",
    ]  # fmt: skip


def test_the_record_is_written_before_the_first_plugin_runs(lab: Lab):
    lab.write_conf()
    lab.slow.write_text("")

    async def body(net: CniPodNetwork, store: AttachmentStore) -> Any:
        setup = asyncio.create_task(net.setup(POD, str(lab.netns), [], None, {}))
        while not list(lab.log.glob("*.stdin")):  # noqa: ASYNC110 (a file another process writes)
            await asyncio.sleep(0.01)
        during = await store.of(SANDBOX)
        await setup
        return during, await store.of(SANDBOX)

    during, after = run(lab, body)
    assert [(a.ifname, a.network, a.result) for a in during] == [
        ("lo", "cni-loopback", ""), ("eth0", "fakenet", ""),
    ]  # fmt: skip
    assert json.loads(after[1].result) == IP_RESULT


def test_one_sandbox_at_a_time_different_sandboxes_together(lab: Lab):
    lab.write_conf([lab.plugins[0]])
    lab.slow.write_text("")
    other = PodRef("b" * 64, "db", "default", "uid-2")

    async def body(net: CniPodNetwork, store: AttachmentStore) -> Any:
        await asyncio.gather(
            net.setup(POD, str(lab.netns), [], None, {}),
            net.teardown(SANDBOX, ""),  # waits for the setup: then finds its record
            net.setup(other, str(lab.netns), [], None, {}),
        )
        return await store.sandboxes()

    started = time.monotonic()
    assert run(lab, body) == ["b" * 64]
    elapsed = time.monotonic() - started
    spans: dict[str, list[tuple[int, int]]] = {}
    starts: dict[str, list[int]] = {}
    for line in lab.times.read_text().splitlines():
        what, at, sandbox = line.split()
        if what == "start":
            starts.setdefault(sandbox, []).append(int(at))
        else:
            spans.setdefault(sandbox, []).append((starts[sandbox].pop(0), int(at)))
    mine = sorted(spans[SANDBOX])
    # the ADDs (lo and eth0 together), then the DELs: never one of each at once
    adds, dels = mine[:2], mine[2:]
    assert max(end for _, end in adds) <= min(start for start, _ in dels)
    assert elapsed < 1.5  # b's setup ran beside a's, not after its teardown


def test_not_ready_refuses_setup_in_containerds_words(lab: Lab):
    async def body(net: CniPodNetwork, store: AttachmentStore) -> Any:
        with pytest.raises(FailedPrecondition) as failed:
            await net.setup(POD, str(lab.netns), [], None, {})
        return str(failed.value), await store.sandboxes()

    message, left = run(lab, body)
    assert message.startswith(
        f'failed to setup network for sandbox "{SANDBOX}": cni plugin not initialized'
    )
    assert left == []
    assert lab.calls() == []


def test_a_missing_plugin_is_named_with_the_dirs_searched(lab: Lab):
    lab.write_conf([{"type": "nosuch"}])

    async def body(net: CniPodNetwork, store: AttachmentStore) -> Any:
        with pytest.raises(FailedPrecondition) as failed:
            await net.setup(POD, str(lab.netns), [], None, {})
        return str(failed.value)

    assert run(lab, body) == (
        f'failed to setup network for sandbox "{SANDBOX}": '
        f'plugin type="nosuch" name="fakenet" failed (add): '
        f'failed to find plugin "nosuch" in path [{lab.bin}]'
    )


def test_bandwidth_annotations_become_the_bandwidth_capability(lab: Lab):
    lab.write_conf([lab.plugins[0], {"type": "fakemeta", "capabilities": {"bandwidth": True}}])
    annotations = {
        "kubernetes.io/ingress-bandwidth": "10M",
        "kubernetes.io/egress-bandwidth": "1Gi",
    }

    async def body(net: CniPodNetwork, store: AttachmentStore) -> Any:
        return await net.setup(POD, str(lab.netns), [], None, annotations)

    run(lab, body)
    assert lab.stdin("ADD fakemeta eth0")["runtimeConfig"] == {
        "bandwidth": {
            "ingressRate": 10_000_000, "ingressBurst": 2**32 - 1,
            "egressRate": 2**30, "egressBurst": 2**32 - 1,
        }
    }  # fmt: skip


def test_a_result_without_an_eth0_address_is_undone_in_containerds_words(lab: Lab):
    lab.write_conf([{"type": "loopback"}])  # answers with lo's address only

    async def body(net: CniPodNetwork, store: AttachmentStore) -> Any:
        with pytest.raises(FailedPrecondition) as failed:
            await net.setup(POD, str(lab.netns), [], None, {})
        return str(failed.value), await store.sandboxes()

    message, left = run(lab, body)
    assert message.endswith(f'failed to find network info for sandbox "{SANDBOX}"')
    assert left == []
    assert sorted(c for c in lab.calls() if c.startswith("DEL")) == [
        "DEL loopback eth0", "DEL loopback lo",
    ]  # fmt: skip


def test_the_address_carries_the_merged_result_as_containerd_shows_it(lab: Lab):
    lab.write_conf()

    async def body(net: CniPodNetwork, store: AttachmentStore) -> Any:
        return await net.setup(POD, str(lab.netns), [], None, {})

    shown = json.loads(run(lab, body).result)
    assert shown["Interfaces"]["eth0"] == {
        "IPConfigs": [
            {"IP": "fd00::2", "Gateway": None},
            {"IP": "10.9.0.2", "Gateway": "10.9.0.1"},
        ],
        "Mac": "",
        "Sandbox": "/netns",
    }
    assert shown["Interfaces"]["lo"]["IPConfigs"] == [{"IP": "127.0.0.1", "Gateway": None}]
    assert len(shown["DNS"]) == 2


def test_reconcile_dels_recorded_pods_not_live_but_never_one_set_up_since_start(lab: Lab):
    lab.write_conf([lab.plugins[0]])
    earlier = PodRef("c" * 64, "old", "default", "uid-3")

    async def before_restart(net: CniPodNetwork, store: AttachmentStore) -> Any:
        await net.setup(earlier, str(lab.netns), [], None, {})

    async def after_restart(net: CniPodNetwork, store: AttachmentStore) -> Any:
        await net.setup(POD, str(lab.netns), [], None, {})  # a RunPodSandbox racing recovery
        await net.reconcile(set())
        return await store.sandboxes()

    run(lab, before_restart)
    assert run(lab, after_restart) == [SANDBOX]
    assert sorted(c for c in lab.calls() if c.startswith("DEL")) == [
        "DEL fakeip eth0", "DEL loopback lo",
    ]  # fmt: skip
    assert lab.env("DEL fakeip eth0")["CNI_CONTAINERID"] == "c" * 64


def sleepers() -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if (proc / "cmdline").read_bytes() == f"sleep\0{HANG}\0".encode():
                found.append(int(proc.name))
        except (OSError, ValueError):
            continue
    return found


def test_a_plugin_that_does_not_answer_is_killed_with_its_children_and_undone(lab: Lab):
    lab.write_conf([lab.plugins[0], {"type": "hang"}])

    async def body(net: CniPodNetwork, store: AttachmentStore) -> Any:
        with pytest.raises(PluginError) as failed:
            await net.setup(POD, str(lab.netns), [], None, {})
        return str(failed.value), await store.sandboxes()

    started = time.monotonic()
    message, left = run(lab, body, timeout=0.5)
    assert time.monotonic() - started < 10
    assert message.endswith(
        'plugin type="hang" name="fakenet" failed (add): no answer in 0.5s (killed)'
    )
    assert left == []  # DELed (hang's DEL answers at once) and forgotten
    assert sleepers() == []  # the plugin's own child went with it

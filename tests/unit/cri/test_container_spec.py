"""The CRI container's spec, users and security context as containerd 1.6's CRI makes them
(pure parts: no daemon; the host's facts given)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from supervisor.api.runtime.v1 import api_pb2 as cri
from supervisor.config import load
from supervisor.cri import model, security, users
from supervisor.cri import spec as specs
from supervisor.errors import FailedPrecondition, InvalidArgument

HOST = specs.Host(
    capabilities=["CAP_CHOWN", "CAP_SYS_ADMIN", "CAP_NET_ADMIN"], oom_score_adj=-100,
    cgroup2=True, apparmor=False, devices=lambda: [{"path": "/dev/null"}],
)  # fmt: skip
PASSWD = "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"
GROUP = "root:x:0:\napp:x:1000:\nstaff:x:50:app\nwheel:x:10:root,app\n"


def _sandbox(tmp_path: Path, **changes: Any) -> model.SandboxRecord:
    files = tmp_path / "files"
    files.mkdir(exist_ok=True)
    for name in ("hostname", "hosts", "resolv.conf"):
        (files / name).write_text("x\n")
    values: dict[str, Any] = {
        "id": "s" * 64, "name": "p_ns_uid_0", "config": b"", "created_at": 1,
        "state": model.SandboxState.READY,
        "namespaces": model.Namespaces(network="/pins/net", ipc="/pins/ipc", uts="/pins/uts"),
        "files": str(files), "shm": "/pins/shm", "hostname": "pod",
    }  # fmt: skip
    values.update(changes)
    return model.SandboxRecord(**values)


def _spec(tmp_path: Path, config: cri.ContainerConfig, **changes: Any) -> dict[str, Any]:
    pod = cri.PodSandboxConfig(metadata=cri.PodSandboxMetadata(name="p", namespace="ns"))
    inputs = specs.Inputs(
        id="c" * 64, namespace="k8s.io", config=config,
        sandbox_config=changes.pop("sandbox_config", pod), sandbox=_sandbox(tmp_path, **changes),
        image_config={"Entrypoint": ["/entry"], "Cmd": ["cmd"], "Env": ["A=image", "B=image"]},
        image_name="docker.io/library/x:latest", user=users.User(0, 0, (0,)),
    )  # fmt: skip
    return specs.build(inputs, HOST)


def test_command_and_args_follow_dockers_rule():
    image = {"Entrypoint": ["/entry"], "Cmd": ["cmd"]}
    assert specs.command(cri.ContainerConfig(), image) == ["/entry", "cmd"]
    assert specs.command(cri.ContainerConfig(args=["a"]), image) == ["/entry", "a"]
    assert specs.command(cri.ContainerConfig(command=["/c"]), image) == ["/c"]
    assert specs.command(cri.ContainerConfig(command=["/c"], args=["a"]), image) == ["/c", "a"]
    with pytest.raises(InvalidArgument, match="no command specified"):
        specs.command(cri.ContainerConfig(), {})


def test_env_hostname_and_cwd(tmp_path: Path):
    config = cri.ContainerConfig(envs=[cri.KeyValue(key="B", value="cri")], working_dir="/w/../x")
    spec = _spec(tmp_path, config)
    env = spec["process"]["env"]
    assert env[1:] == ["HOSTNAME=pod", "A=image", "B=cri"]
    assert spec["process"]["cwd"] == "/x"
    assert spec["process"]["args"] == ["/entry", "cmd"]


def test_mounts_pod_files_cgroup_and_cri_mounts_sorted_by_depth(tmp_path: Path):
    deep, top = tmp_path / "deep", tmp_path / "link"
    deep.mkdir()
    top.symlink_to(deep)
    config = cri.ContainerConfig(
        mounts=[
            cri.Mount(container_path="/a/b/c", host_path=str(top), readonly=True),
            cri.Mount(container_path="/a", host_path=str(tmp_path / "made")),
            cri.Mount(container_path="/etc/hosts", host_path=str(deep)),
        ],
        linux=cri.LinuxContainerConfig(
            security_context=cri.LinuxContainerSecurityContext(readonly_rootfs=True)
        ),
    )
    spec = _spec(tmp_path, config)
    by_dest = {m["destination"]: m for m in spec["mounts"]}
    assert "/run" not in by_dest
    assert by_dest["/sys/fs/cgroup"]["options"][-1] == "ro"
    assert by_dest["/etc/hostname"]["options"] == ["rbind", "rprivate", "ro"]  # read-only root
    assert by_dest["/etc/hosts"]["source"] == str(deep)  # the CRI's mount wins
    assert by_dest["/dev/shm"]["source"] == "/pins/shm"
    assert by_dest["/a/b/c"]["source"] == str(deep)  # symlink resolved
    assert by_dest["/a/b/c"]["options"] == ["rbind", "rprivate", "ro"]
    assert (tmp_path / "made").is_dir()
    binds = [m["destination"] for m in spec["mounts"] if m["type"] == "bind"]
    assert binds.index("/a") < binds.index("/a/b/c")
    assert [m["destination"] for m in spec["mounts"]].count("/dev/shm") == 1
    assert spec["root"]["readonly"] is True


def test_namespaces_by_pid_mode_and_host_ones(tmp_path: Path):
    def spaces(mode: int, **changes: Any) -> dict[str, str]:
        options = cri.NamespaceOption(pid=mode)
        context = cri.LinuxContainerSecurityContext(namespace_options=options)
        config = cri.ContainerConfig(linux=cri.LinuxContainerConfig(security_context=context))
        spec = _spec(tmp_path, config, **changes)
        return {n["type"]: n.get("path", "") for n in spec["linux"]["namespaces"]}

    assert spaces(specs.CONTAINER) == {
        "mount": "", "network": "/pins/net", "ipc": "/pins/ipc", "uts": "/pins/uts",
        "pid": "", "cgroup": "",
    }  # fmt: skip
    shared = model.Namespaces(network="/n", ipc="/i", uts="/u", pid="/proc/9/ns/pid")
    assert spaces(specs.POD, namespaces=shared)["pid"] == "/proc/9/ns/pid"
    host = model.Namespaces(host_network=True, host_ipc=True, host_pid=True)
    assert spaces(specs.NODE, namespaces=host) == {"mount": "", "cgroup": ""}
    with pytest.raises(FailedPrecondition):
        spaces(specs.TARGET)


def test_resources_cgroup_path_and_oom_score_adj_clamp(tmp_path: Path):
    resources = cri.LinuxContainerResources(
        cpu_period=100000, cpu_quota=50000, cpu_shares=512, memory_limit_in_bytes=1 << 26,
        cpuset_cpus="0", oom_score_adj=-900, unified={"memory.high": "1000000"},
        hugepage_limits=[cri.HugepageLimit(page_size="2MB", limit=1 << 21)],
    )  # fmt: skip
    config = cri.ContainerConfig(linux=cri.LinuxContainerConfig(resources=resources))
    spec = _spec(tmp_path, config, cgroup_parent="/kubepods/pod1")
    linux = spec["linux"]
    assert linux["resources"]["cpu"] == {
        "period": 100000, "quota": 50000, "shares": 512, "cpus": "0",
    }  # fmt: skip
    assert linux["resources"]["memory"] == {"limit": 1 << 26}
    assert linux["resources"]["unified"] == {"memory.high": "1000000"}
    assert linux["resources"]["hugepageLimits"] == [{"pageSize": "2MB", "limit": 1 << 21}]
    assert linux["cgroupsPath"] == "/kubepods/pod1/" + "c" * 64
    assert spec["process"]["oomScoreAdj"] == -100  # raised to the daemon's own
    host = specs.Host(**{**HOST.__dict__, "hugetlb": False})
    pod = cri.PodSandboxConfig()
    inputs = specs.Inputs(
        id="c" * 64, namespace="k8s.io", config=config, sandbox_config=pod,
        sandbox=_sandbox(tmp_path), image_config={"Cmd": ["sh"]}, image_name="x",
        user=users.User(0, 0, (0,)),
    )  # fmt: skip
    assert "hugepageLimits" not in specs.build(inputs, host)["linux"]["resources"]
    assert specs.cgroups_path("kubepods-burstable-pod1.slice", "id") == (
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice"
        "/cri-containerd-id.scope"
    )


def test_privileged_needs_a_privileged_pod_and_drops_the_confinement(tmp_path: Path):
    context = cri.LinuxContainerSecurityContext(
        privileged=True, masked_paths=["/proc/kcore"], readonly_paths=["/proc/sys"],
        seccomp=cri.SecurityProfile(profile_type=cri.SecurityProfile.RuntimeDefault),
    )  # fmt: skip
    config = cri.ContainerConfig(linux=cri.LinuxContainerConfig(security_context=context))
    with pytest.raises(InvalidArgument, match="no privileged container allowed in sandbox"):
        _spec(tmp_path, config)
    pod = cri.PodSandboxConfig(
        linux=cri.LinuxPodSandboxConfig(
            security_context=cri.LinuxSandboxSecurityContext(privileged=True)
        )
    )
    spec = _spec(tmp_path, config, sandbox_config=pod)
    assert spec["process"]["capabilities"]["bounding"] == HOST.capabilities
    assert "maskedPaths" not in spec["linux"]
    assert "readonlyPaths" not in spec["linux"]
    assert "seccomp" not in spec["linux"]
    assert spec["linux"]["devices"] == [{"path": "/dev/null"}]
    assert {"cgroup"} - {n["type"] for n in spec["linux"]["namespaces"]}  # no cgroup ns


def test_capabilities_all_first_then_each():
    def caps(add: list[str], drop: list[str]) -> list[str]:
        context = cri.LinuxContainerSecurityContext(
            capabilities=cri.Capability(add_capabilities=add, drop_capabilities=drop)
        )
        return security.capability_sets(context, ["CAP_A", "CAP_B"])

    assert caps(["ALL"], ["A"]) == ["CAP_B"]
    assert caps(["NET_ADMIN"], ["ALL"]) == ["CAP_NET_ADMIN"]
    assert caps([], ["CHOWN"]) == [c for c in security.DEFAULT_CAPABILITIES if c != "CAP_CHOWN"]
    assert security.capability_sets(cri.LinuxContainerSecurityContext(), []) == list(
        security.DEFAULT_CAPABILITIES
    )


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("", None),
        ("runtime/default", (0, "")),
        ("docker/default", (0, "")),
        ("unconfined", (1, "")),
        ("localhost//p.json", (2, "/p.json")),
    ],
)
def test_deprecated_seccomp_strings(path: str, expected: Any):
    context = cri.LinuxContainerSecurityContext(seccomp_profile_path=path)
    assert security.seccomp_profile(context) == expected


def test_a_seccomp_path_without_localhost_is_refused():
    context = cri.LinuxContainerSecurityContext(seccomp_profile_path="/p.json")
    with pytest.raises(InvalidArgument, match=r'invalid profile "/p\.json"'):
        security.seccomp_profile(context)


def test_users_by_containerds_rules(tmp_path: Path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text(PASSWD)
    (tmp_path / "etc" / "group").write_text(GROUP)
    root = (str(tmp_path),)
    assert users.resolve("", root) == users.User(0, 0, (0, 10))
    assert users.resolve("1000", root) == users.User(1000, 1000, (10, 50, 1000))
    assert users.resolve("app", root, [7]) == users.User(1000, 1000, (7, 10, 50, 1000))
    assert users.resolve("1000:50", root) == users.User(1000, 50, (10, 50))
    assert users.resolve("app:wheel", root) == users.User(1000, 10, (10, 50))
    assert users.resolve("4242", root) == users.User(4242, 0, (0,))
    assert users.resolve("4242:7", None) == users.User(4242, 7, (7,))
    for bad in ("nobody", "app:nogroup", "a:b:c"):
        with pytest.raises(InvalidArgument):
            users.resolve(bad, root)
    assert users.user_string("", 5, 6) == "5:6"
    assert users.user_string("app", 5, None) == "app"
    with pytest.raises(InvalidArgument, match='user group "6" is specified without user'):
        users.user_string("", None, 6)


def test_mount_of_finds_the_deepest_mount_above_a_path():
    table = [("/", "shared:1"), ("/tmp", "master:2"), ("/tmp/x", ""), ("/tmpfoo", "shared:3")]
    assert specs.mount_of("/tmp/x/y", table) == ("/tmp/x", "")
    assert specs.mount_of("/tmp/y", table) == ("/tmp", "master:2")
    assert specs.mount_of("/tmpf", table) == ("/", "shared:1")


def test_the_config_keys(tmp_path: Path):
    path = tmp_path / "c.toml"
    path.write_text("[cri]\nrestrict_oom_score_adj = false\nmax_container_log_line_size = -1\n")
    config = load(str(path)).cri
    assert (config.restrict_oom_score_adj, config.max_container_log_line_size) == (False, -1)
    assert load(None).cri.restrict_oom_score_adj is True

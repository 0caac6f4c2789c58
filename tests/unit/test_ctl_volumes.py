"""ctl.volumes' pure parts: docker's volume objects and order, inspect's HostConfig, completion."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from ctl import volopts, volumes
from supervisor.api.ctrd.services.volumes.v1 import volumes_pb2


def test_volumes_list_in_natural_order_as_docker_sorts_them():
    names = ["v10", "v9", "a", "v1", "B", "v100", "v2x", "v2"]
    assert sorted(names, key=volumes.natural) == ["B", "a", "v1", "v2", "v2x", "v9", "v10", "v100"]


def test_inspect_object_has_dockers_keys_in_order_with_sorted_maps():
    volume = volumes_pb2.Volume(
        name="data", driver="local", mountpoint="/r/volumes/default/data/_data",
        created_at=Timestamp(seconds=1796538000, nanos=5), labels={"z": "1", "a": "2"},
        options={"type": "tmpfs", "o": "size=1m", "device": "tmpfs"}, scope="local",
    )  # fmt: skip
    shown = volumes.inspected(volume)
    assert list(shown) == ["CreatedAt", "Driver", "Labels", "Mountpoint", "Name", "Options",
                           "Scope"]  # fmt: skip
    assert shown["CreatedAt"] == "2026-12-06T06:20:00Z"
    assert list(shown["Labels"]) == ["a", "z"]
    assert list(shown["Options"]) == ["device", "o", "type"]
    assert volumes.inspected(volumes_pb2.Volume(name="x"))["Labels"] == {}


def test_host_config_shows_what_run_was_given():
    storage = volopts.parse(["vv:/v", "/h:/h"], ["type=tmpfs,dst=/t"], ["/u:size=1m"], ["c1"])
    labels = volopts.labels(storage)
    assert volumes.host_config(labels) == {
        "Binds": ["vv:/v", "/h:/h"],
        "VolumesFrom": ["c1"],
        "Mounts": [{"Type": "tmpfs", "Target": "/t"}],
        "Tmpfs": {"/u": "size=1m"},
    }
    assert volumes.host_config({}) == {"Binds": None, "VolumesFrom": None}


def test_completion_offers_volumes_and_containers_for_volumes_from():
    from ctl.completion import script

    bash = script("bash")
    assert "_shtab_ctrctl_volume_rm_pos_0_COMPGEN=_ctrctl_volumes" in bash
    assert "_shtab_ctrctl_volume_inspect_pos_0_COMPGEN=_ctrctl_volumes" in bash
    assert "_shtab_ctrctl_run___volumes_from_COMPGEN=_ctrctl_containers" in bash
    assert "ctrctl __names volumes" in bash

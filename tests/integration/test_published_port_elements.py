"""The daemon's published ports as elements of its table's maps: a container's ports come and go
as element changes of the same table (not a rewrite of it), and a map someone else flushes is
noticed and written again."""

from __future__ import annotations

from typing import Any

from supervisor.network import nft
from tests.integration.test_published_ports import free_port
from tests.integration.test_tasks import pull, run, wait_for


def table_handle(table: str) -> int:
    """The table's handle: a whole rewrite deletes the table and makes a new one, with another."""
    items: list[dict[str, Any]] = nft.list_table(table)["nftables"]
    (found,) = [i["table"]["handle"] for i in items if "table" in i]
    return int(found)


def run_published(ctrd, ref: str, name: str, port: int) -> None:
    run(ctrd, "-d", "--label", "ctrd.io/networks=bridge", "--label", f"ctrd.io/ports={port}:80",
        ref, name, "sleep", "1000")  # fmt: skip


def remove(ctrd, name: str) -> None:
    ctrd.ctr("tasks", "kill", "-s", "KILL", name)
    wait_for(lambda: ctrd.ctr("tasks", "delete", name, check=False).returncode == 0)


def elements(table: str) -> int:
    found = nft.fingerprint(table)
    return -1 if found is None else found.elements


def test_a_containers_ports_are_added_and_removed_as_elements_of_the_same_table(
    ctrd, busybox_image
):
    ref = pull(ctrd, busybox_image)
    table = ctrd.nft_table
    run_published(ctrd, ref, "p1", free_port())
    handle = table_handle(table)
    assert elements(table) == 1
    run_published(ctrd, ref, "p2", free_port())
    assert elements(table) == 2
    assert table_handle(table) == handle  # not written anew: two elements changed
    remove(ctrd, "p2")
    assert elements(table) == 1
    assert table_handle(table) == handle
    assert "firewall_update_refused" not in ctrd.log()
    remove(ctrd, "p1")


def test_a_flushed_map_of_published_ports_is_written_again(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    table = ctrd.nft_table
    run_published(ctrd, ref, "f1", free_port())
    shape = nft.fingerprint(table)
    assert shape is not None
    assert shape.elements == 1
    nft.run(f"flush map inet {table} {nft.PUBLISH_ANY}")  # the rules stay, the ports go
    assert nft.fingerprint(table) != shape
    wait_for(lambda: nft.fingerprint(table) == shape, timeout=10)
    assert "firewall_restored" in ctrd.log()
    remove(ctrd, "f1")

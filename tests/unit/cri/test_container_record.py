"""The CRI container record: JSON round trip, state derived from its times, id prefixes."""

from __future__ import annotations

from dataclasses import replace

import pytest

from supervisor.cri import model
from supervisor.cri.containers import ContainerRecord, ContainerState, pick, record_of
from supervisor.errors import InvalidArgument, NotFound
from supervisor.metadata.containers import Container


def _record(cid: str = "ab" * 32, **changes: object) -> ContainerRecord:
    base = ContainerRecord(
        id=cid, name="c_p_ns_uid_0", sandbox_id="cd" * 32, config=b"\x0a\x03\x0a\x01c",
        image="docker.io/library/busybox:latest", image_ref="sha256:" + "ef" * 32,
        created_at=1,
    )  # fmt: skip
    return replace(base, **changes)  # type: ignore[arg-type]


def test_record_round_trips_through_json_with_its_config_bytes() -> None:
    record = _record(log_path="/var/log/pods/x/c/0.log", exit_code=137, reason="OOMKilled")
    assert ContainerRecord.from_json(record.to_json()) == record


def test_record_from_json_ignores_keys_a_newer_daemon_wrote() -> None:
    record = _record()
    data = record.to_json().replace(b"{", b'{"future": 1, ', 1)
    assert ContainerRecord.from_json(data) == record


def test_state_follows_the_times_as_containerd_derives_it() -> None:
    assert _record().state is ContainerState.CREATED
    assert _record(started_at=2).state is ContainerState.RUNNING
    assert _record(started_at=2, finished_at=3).state is ContainerState.EXITED
    assert _record(finished_at=3).state is ContainerState.EXITED  # a start that failed
    assert _record(started_at=2, unknown=True).state is ContainerState.UNKNOWN


def test_pick_takes_the_full_id_or_a_unique_prefix() -> None:
    a, b = _record("ab" * 32), _record("ac" + "00" * 31)
    assert pick([a, b], "ab" * 32) is a
    assert pick([a, b], "ac") is b
    with pytest.raises(InvalidArgument, match="ambiguous"):
        pick([a, b], "a")
    with pytest.raises(NotFound):
        pick([a, b], "ff")


def test_record_of_reads_only_cri_containers() -> None:
    record = _record()
    ext = {model.CONTAINER_EXTENSION: (model.CONTAINER_TYPE_URL, record.to_json())}
    labels = {model.KIND_LABEL: model.KIND_CONTAINER}
    assert (
        record_of(Container(record.id, "io.containerd.runc.v2", labels=labels, extensions=ext))
        == record
    )
    assert record_of(Container(record.id, "io.containerd.runc.v2", extensions=ext)) is None
    sandbox = {model.KIND_LABEL: model.KIND_SANDBOX}
    assert record_of(Container(record.id, "io.containerd.runc.v2", labels=sandbox)) is None

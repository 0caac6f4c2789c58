"""The container label that asks for networks: read by Tasks.Create without loading netlink."""

from __future__ import annotations

from collections.abc import Mapping

NETWORKS_LABEL = "ctrd.io/networks"  # NAME[,NAME]: the networks a container's task joins


def label_networks(labels: Mapping[str, str]) -> list[str]:
    """The networks a container's `ctrd.io/networks` label names, in order, without blanks."""
    return [name.strip() for name in labels.get(NETWORKS_LABEL, "").split(",") if name.strip()]

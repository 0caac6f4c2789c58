"""The container labels that ask for networking, read by Tasks.Create without loading netlink.

They are the whole contract between a client and the daemon's network plumbing, so a container
made by the real `ctr` (`ctr run --label ctrd.io/networks=front ...`) gets exactly what
`ctrctl run --network front` gets. Every value is plain text, lists comma-separated:

- `ctrd.io/networks` (`--network`, `network connect`): `NAME[,NAME...]`, the networks joined,
  in order; the first gives the default route.
- `ctrd.io/ports` (`-p`, `-P`): docker's `-p` values,
  `[ip:][hostPort[-end]:]containerPort[-end][/tcp|udp]`; without a host port one is picked.
- `ctrd.io/ip` (`--ip`): an IPv4 address on the first network.
- `ctrd.io/network-aliases` (`--network-alias`): names the container also answers to on its
  first network (docker's `--network-alias` is scoped to the network `run` joins).
- `ctrd.io/network-aliases.NETWORK` (`network connect --alias`): names it answers to on
  NETWORK (as named in `ctrd.io/networks`), kept for its next starts, as docker keeps an
  endpoint's aliases.
- `ctrd.io/dns`, `ctrd.io/dns-search`, `ctrd.io/dns-options` (`--dns`, `--dns-search`,
  `--dns-option`): resolv.conf's nameservers, search domains and options.
- `ctrd.io/extra-hosts` (`--add-host`): `NAME:IP` lines added to /etc/hosts.
- `ctrd.io/network-container` (`--network container:NAME`): the id of a container whose
  network namespace (and /etc files) this one shares.

The container's name for the embedded DNS is ctrctl's `ctrctl.name` label, else its id; a 64-hex
id also answers by its first 12 characters (docker's short id).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

NETWORKS_LABEL = "ctrd.io/networks"
PORTS_LABEL = "ctrd.io/ports"
IP_LABEL = "ctrd.io/ip"
ALIASES_LABEL = "ctrd.io/network-aliases"
NETWORK_ALIASES_PREFIX = ALIASES_LABEL + "."  # + a network's name: its own aliases
DNS_LABEL = "ctrd.io/dns"
DNS_SEARCH_LABEL = "ctrd.io/dns-search"
DNS_OPTIONS_LABEL = "ctrd.io/dns-options"
EXTRA_HOSTS_LABEL = "ctrd.io/extra-hosts"
NETWORK_CONTAINER_LABEL = "ctrd.io/network-container"
NAME_LABEL = "ctrctl.name"  # ctrctl's container name: the DNS name of its containers

NETWORK_LABELS = (NETWORKS_LABEL, NETWORK_CONTAINER_LABEL)  # either makes Tasks.Create plumb


def label_list(labels: Mapping[str, str], key: str) -> list[str]:
    """The comma-separated values of label `key`, in order, stripped, without blanks."""
    return [value.strip() for value in labels.get(key, "").split(",") if value.strip()]


def label_networks(labels: Mapping[str, str]) -> list[str]:
    """The networks a container's `ctrd.io/networks` label names, in order, without blanks."""
    return label_list(labels, NETWORKS_LABEL)


def network_aliases_label(network: str) -> str:
    """The label holding the aliases a container was given on `network` by a connect."""
    return NETWORK_ALIASES_PREFIX + network


def wants_network(labels: Mapping[str, str]) -> bool:
    """Whether Tasks.Create has network plumbing to do for a container with these labels."""
    return bool(label_networks(labels)) or bool(labels.get(NETWORK_CONTAINER_LABEL, "").strip())


@dataclass(frozen=True)
class NetworkSettings:
    """Everything the labels ask of the network plumbing, parsed but not yet validated."""

    networks: tuple[str, ...] = ()
    ports: tuple[str, ...] = ()
    ip: str = ""
    aliases: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    dns_options: tuple[str, ...] = ()
    extra_hosts: tuple[str, ...] = ()
    network_container: str = ""
    name: str = ""
    network_aliases: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (network, its aliases)

    def aliases_on(self, network: str) -> tuple[str, ...]:
        """The aliases the container has on `network`: `--network-alias` ones on the first,
        and those a connect gave on that network."""
        first = self.aliases if self.networks[:1] == (network,) else ()
        given = next((names for net, names in self.network_aliases if net == network), ())
        return tuple(dict.fromkeys((*first, *given)))

    @classmethod
    def from_labels(cls, labels: Mapping[str, str]) -> NetworkSettings:
        return cls(
            networks=tuple(label_networks(labels)),
            ports=tuple(label_list(labels, PORTS_LABEL)),
            ip=labels.get(IP_LABEL, "").strip(),
            aliases=tuple(label_list(labels, ALIASES_LABEL)),
            dns=tuple(label_list(labels, DNS_LABEL)),
            dns_search=tuple(label_list(labels, DNS_SEARCH_LABEL)),
            dns_options=tuple(label_list(labels, DNS_OPTIONS_LABEL)),
            extra_hosts=tuple(label_list(labels, EXTRA_HOSTS_LABEL)),
            network_container=labels.get(NETWORK_CONTAINER_LABEL, "").strip(),
            name=labels.get(NAME_LABEL, "").strip(),
            network_aliases=tuple(
                (key[len(NETWORK_ALIASES_PREFIX) :], tuple(label_list(labels, key)))
                for key in sorted(labels)
                if key.startswith(NETWORK_ALIASES_PREFIX)
            ),
        )

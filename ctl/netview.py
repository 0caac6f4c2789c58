"""How ctrctl shows a container's network, in docker's shapes, from `ListEndpoints` answers.

Pure functions (no gRPC): endpoints are the API's `Endpoint` messages (or anything with their
fields), labels a container's. They give:

- `port_map`: docker's `NetworkSettings.Ports`, `{"80/tcp": [{"HostIp", "HostPort"}]}`, an
  exposed port without a binding `null`; only while the container has endpoints (a stopped
  one has no ports, as under docker);
- `displayable_ports`: `ps`'s PORTS cell, by docker/cli's DisplayablePorts rules: sorted by
  private port, IP, public port, type; ports published on the same number grouped into
  ranges (`0.0.0.0:8000-8001->8000-8001/tcp`), exposed ones by type (`80-81/tcp`), other
  mappings listed after the groups (`0.0.0.0:8080->80/tcp`);
- `port_lines`: `ctrctl port`'s lines (`80/tcp -> 0.0.0.0:8080`) or one port's frontends;
- `network_settings`: `inspect`'s `NetworkSettings`, one entry in `Networks` per network the
  container is given or connected to, with the top-level address fields filled from the
  default `bridge` network only, as dockerd fills them;
- `host_config`: the networking part of `inspect`'s `HostConfig`, as the command line gave it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ctl.netopts import (
    CONTAINER_PREFIX,
    DEFAULT_NETWORK,
    EXPOSED_LABEL,
    NETWORK_MODE_LABEL,
    PUBLISH_ALL_LABEL,
    PUBLISH_LABEL,
)
from supervisor.network.labels import (
    IP_LABEL,
    NETWORK_CONTAINER_LABEL,
    NetworkSettings,
    label_list,
    label_networks,
)
from supervisor.network.portspec import port_bindings

ANY_ADDRESS = "0.0.0.0"  # an empty host_ip: every address, as docker shows it


class NoPublicPort(Exception):
    """`ctrctl port C PORT` for a port that is not published (docker's words, exit 1)."""


@dataclass(frozen=True, order=True)
class Port:
    """docker's types.Port, one row of a container's ports (public_port 0: only exposed)."""

    private_port: int
    ip: str = ""
    public_port: int = 0
    type: str = "tcp"


def _bindings(endpoints: Iterable[Any]) -> dict[str, list[dict[str, str]]]:
    """The published ports of a container's endpoints by `PORT/PROTO`, each binding once."""
    found: dict[str, list[dict[str, str]]] = {}
    for endpoint in endpoints:
        for p in endpoint.ports:
            binding = {"HostIp": p.host_ip or ANY_ADDRESS, "HostPort": str(p.host_port)}
            listed = found.setdefault(f"{p.container_port}/{p.protocol}", [])
            if binding not in listed:
                listed.append(binding)
    return found


def _port_key(key: str) -> tuple[int, str]:
    number, _, protocol = key.partition("/")
    return (int(number) if number.isdigit() else 0, protocol)


def port_map(
    labels: Mapping[str, str], endpoints: Sequence[Any]
) -> dict[str, list[dict[str, str]] | None]:
    """docker's NetworkSettings.Ports (keys sorted as Go's JSON sorts them); {} without
    endpoints."""
    if not endpoints:
        return {}
    ports: dict[str, list[dict[str, str]] | None] = dict.fromkeys(label_list(labels, EXPOSED_LABEL))
    ports.update(_bindings(endpoints))
    return dict(sorted(ports.items()))


def container_ports(labels: Mapping[str, str], endpoints: Sequence[Any]) -> list[Port]:
    """The container's ports as dockerd lists them for `ps`."""
    rows = []
    for key, bindings in port_map(labels, endpoints).items():
        number, protocol = _port_key(key)
        if not bindings:
            rows.append(Port(number, type=protocol))
            continue
        rows += [Port(number, b["HostIp"], int(b["HostPort"]), protocol) for b in bindings]
    return rows


def _group(key: str, first: int, last: int) -> str:
    """docker/cli's formGroup."""
    ip, _, protocol = key.rpartition("/")
    group = str(first) if first == last else f"{first}-{last}"
    if ip:
        group = f"{ip}:{group}->{group}"
    return f"{group}/{protocol}"


def displayable_ports(ports: Iterable[Port]) -> str:
    """docker/cli's DisplayablePorts (its quirks too: a group broken by a gap is emitted at
    once, the group that follows keeps the first one's place among the keys)."""
    groups: dict[str, list[int]] = {}  # key -> [first, last], keys in creation order
    result: list[str] = []
    mappings: list[str] = []
    for port in sorted(ports):
        key = port.type
        if port.ip:
            if port.public_port != port.private_port:
                mappings.append(f"{port.ip}:{port.public_port}->{port.private_port}/{port.type}")
                continue
            key = f"{port.ip}/{port.type}"
        group = groups.get(key)
        if group is None:
            groups[key] = [port.private_port, port.private_port]
        elif port.private_port == group[1] + 1:
            group[1] = port.private_port
        else:
            result.append(_group(key, group[0], group[1]))
            groups[key] = [port.private_port, port.private_port]
    result += [_group(key, first, last) for key, (first, last) in groups.items()]
    return ", ".join(result + mappings)


def port_lines(
    labels: Mapping[str, str], endpoints: Sequence[Any], container: str, private: str = ""
) -> list[str]:
    """docker's `port` output: every binding as `80/tcp -> 0.0.0.0:8080` (sorted by port), or
    with `private` (`PORT[/PROTO]`) its bindings as `0.0.0.0:8080`. NoPublicPort with
    docker's words for a port without one; ValueError for a port that does not parse."""
    ports = port_map(labels, endpoints)
    if not private:
        return [
            f"{key} -> {b['HostIp']}:{b['HostPort']}"
            for key in sorted(ports, key=_port_key)
            for b in ports[key] or []
        ]
    number, sep, protocol = private.partition("/")
    protocol = protocol if sep and protocol else "tcp"
    if not number.isdigit() or int(number) > 0xFFFF:
        raise ValueError(f'strconv.ParseUint: parsing "{number}": invalid syntax')
    key = f"{int(number)}/{protocol}"
    bindings = ports.get(key)
    if not bindings:
        raise NoPublicPort(f"Error: No public port '{number}/{protocol}' published for {container}")
    return [f"{b['HostIp']}:{b['HostPort']}" for b in bindings]


# --- inspect -----------------------------------------------------------------------------------


def _address(endpoint: Any | None) -> tuple[str, int]:
    if endpoint is None or not endpoint.address:
        return "", 0
    ip, _, prefix = endpoint.address.partition("/")
    return ip, int(prefix) if prefix.isdigit() else 0


def endpoint_settings(
    endpoint: Any | None, ip: str = "", aliases: Sequence[str] = ()
) -> dict[str, Any]:
    """docker's EndpointSettings for one network: from the endpoint while there is one, else
    what the container was given (`ip`, `aliases`), the rest empty."""
    address, prefix = _address(endpoint)
    found_aliases = list(endpoint.aliases) if endpoint is not None else list(aliases)
    return {
        "IPAMConfig": {"IPv4Address": ip} if ip else None,
        "Links": None,
        "Aliases": found_aliases or None,
        "NetworkID": endpoint.network_id if endpoint is not None else "",
        "EndpointID": "",
        "Gateway": endpoint.gateway if endpoint is not None else "",
        "IPAddress": address,
        "IPPrefixLen": prefix,
        "IPv6Gateway": "",
        "GlobalIPv6Address": "",
        "GlobalIPv6PrefixLen": 0,
        "MacAddress": endpoint.mac if endpoint is not None else "",
        "DriverOpts": None,
    }


def network_settings(
    labels: Mapping[str, str], endpoints: Sequence[Any], host_network: bool = False
) -> dict[str, Any]:
    """docker's NetworkSettings for a container with these labels and endpoints;
    `host_network`: its spec has no network namespace of its own (`--network host`)."""
    by_name = {e.network_name: e for e in endpoints}
    networks: dict[str, Any] = {}
    given = label_networks(labels)
    for index, name in enumerate(given):
        ip = labels.get(IP_LABEL, "").strip() if index == 0 else ""
        aliases = list(NetworkSettings.from_labels(labels).aliases_on(name))
        networks[name] = endpoint_settings(by_name.get(name), ip, aliases)
    for name, endpoint in by_name.items():
        if name not in networks:  # connected after create
            networks[name] = endpoint_settings(endpoint)
    if not networks and not labels.get(NETWORK_CONTAINER_LABEL, "").strip():
        networks["host" if host_network else "none"] = endpoint_settings(None)
    default = by_name.get(DEFAULT_NETWORK)
    address, prefix = _address(default)
    return {
        "Bridge": "",
        "SandboxID": "",
        "HairpinMode": False,
        "LinkLocalIPv6Address": "",
        "LinkLocalIPv6PrefixLen": 0,
        "Ports": port_map(labels, endpoints),
        "SandboxKey": "",
        "SecondaryIPAddresses": None,
        "SecondaryIPv6Addresses": None,
        "EndpointID": "",
        "Gateway": default.gateway if default is not None else "",
        "GlobalIPv6Address": "",
        "GlobalIPv6PrefixLen": 0,
        "IPAddress": address,
        "IPPrefixLen": prefix,
        "IPv6Gateway": "",
        "MacAddress": default.mac if default is not None else "",
        "Networks": networks,
    }


def host_config(labels: Mapping[str, str], host_network: bool = False) -> dict[str, Any]:
    """The networking part of docker's HostConfig, as the command line gave it (docker keeps
    it so): NetworkMode (`default` without --network, `container:<id>`), PortBindings (every
    -p, also under host or none, which publish nothing), PublishAllPorts, Dns, DnsOptions,
    DnsSearch, ExtraHosts. A container ctrctl did not make (ctr's labels) shows what its
    labels ask the daemon for."""
    settings = NetworkSettings.from_labels(labels)
    mode = labels.get(NETWORK_MODE_LABEL, "").strip()
    if mode:
        publish = label_list(labels, PUBLISH_LABEL)
    else:
        publish = list(settings.ports)
        if settings.network_container:
            mode = CONTAINER_PREFIX + settings.network_container
        elif settings.networks:
            mode = settings.networks[0]
        else:
            mode = "host" if host_network else "none"
    bindings: dict[str, list[dict[str, str]]] = {}
    for text in publish:
        try:
            found = port_bindings(text)
        except ValueError:  # a label not written by ctrctl: shown without it
            continue
        for key, host_ip, host_port in found:
            bindings.setdefault(key, []).append({"HostIp": host_ip, "HostPort": host_port})
    return {
        "NetworkMode": mode,
        "PortBindings": dict(sorted(bindings.items())),  # Go's JSON sorts a map's keys
        "PublishAllPorts": labels.get(PUBLISH_ALL_LABEL) == "true",
        "Dns": list(settings.dns),
        "DnsOptions": list(settings.dns_options),
        "DnsSearch": list(settings.dns_search),
        "ExtraHosts": list(settings.extra_hosts) or None,
    }

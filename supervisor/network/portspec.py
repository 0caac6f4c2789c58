"""Docker's `-p` syntax, read without the rest of `supervisor.network.ports`: what `ctrctl run
-p` needs before it asks the daemon for anything (the CLI imports this alone: ~1 ms, where the
whole ports module and `ipaddress` cost ~6 ms a run).

`parse_publish` (pure) reads one `-p` value with the rules and the error words of docker's
`nat.ParsePortSpec` (go-connections v0.4, the one docker 20.10 uses); see
`supervisor.network.ports` for the rules. `ipaddress` is imported only when a host address is
given.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from supervisor.errors import InvalidArgument

if TYPE_CHECKING:
    from ipaddress import IPv4Address

Proto = Literal["tcp", "udp"]

MIN_PORT = 1
MAX_PORT = 65535


@dataclass(frozen=True)
class PortRequest:
    """One host port asked for: `host_ip` None is every address (docker's 0.0.0.0),
    `host_port` 0 lets the kernel pick one; `host_port_end` > `host_port` asks for the first
    free port of `host_port..host_port_end`."""

    proto: Proto
    host_ip: IPv4Address | None
    host_port: int
    container_port: int
    host_port_end: int = 0


_DIGITS = re.compile(r"[0-9]+")


def parse_publish(text: str) -> list[PortRequest]:
    """The host ports one `-p` value asks for, in container-port order.

    Raises `InvalidArgument` with docker's words (`Invalid containerPort: x`, `Invalid hostPort:
    x`, `Invalid ip address: x`, `Invalid proto: x`, `No port specified: x<empty>`, `Invalid
    ranges specified for container and host Ports: x and y`).
    """
    raw_ip, host_part, container_part = _split_parts(text)
    proto_text, container_text = _split_proto(container_part)
    host_ip = _parse_host_ip(raw_ip)
    if not container_text:
        raise _invalid(f"No port specified: {text}<empty>")
    container = _port_range(container_text, allow_zero=False)
    if container is None:
        raise _invalid(f"Invalid containerPort: {container_text}")
    start, end = container
    host: tuple[int, int] | None = None
    if host_part:
        host = _port_range(host_part, allow_zero=True)
        if host is None:
            raise _invalid(f"Invalid hostPort: {host_part}")
        if end - start != host[1] - host[0] and end != start:
            raise _invalid(
                "Invalid ranges specified for container and host Ports: "
                f"{container_text} and {host_part}"
            )
    proto = _parse_proto(proto_text)
    if host is None:
        return [PortRequest(proto, host_ip, 0, port) for port in range(start, end + 1)]
    if start == end and host[0] != host[1]:
        return [PortRequest(proto, host_ip, host[0], start, host_port_end=host[1])]
    return [
        PortRequest(proto, host_ip, host[0] + offset, start + offset)
        for offset in range(end - start + 1)
    ]


def port_bindings(text: str) -> list[tuple[str, str, str]]:
    """One valid `-p` value as docker's HostConfig.PortBindings keeps it (nat.ParsePortSpecs):
    (`port/proto`, the host address as given, the host port or range as given, "" for none),
    a container range paired port by port with a host range of its length."""
    raw_ip, host_part, container_part = _split_parts(text)
    proto, container_text = _split_proto(container_part)
    host_ip = raw_ip[1:-1] if raw_ip.startswith("[") and raw_ip.endswith("]") else raw_ip
    start, _, end = container_text.partition("-")
    first, last = int(start), int(end or start)
    low = host_part.partition("-")[0]
    if first == last or not host_part:
        hosts = [host_part] * (last - first + 1)
    else:
        hosts = [str(int(low) + offset) for offset in range(last - first + 1)]
    return [
        (f"{port}/{proto.lower()}", host_ip, host)
        for port, host in zip(range(first, last + 1), hosts, strict=True)
    ]


def _invalid(message: str) -> InvalidArgument:
    return InvalidArgument(message, plain=True)


def _split_parts(text: str) -> tuple[str, str, str]:
    """ip, host port, container port: the last two `:`-fields are the ports, the rest the ip."""
    parts = text.split(":")
    if len(parts) == 1:
        return "", "", parts[0]
    if len(parts) == 2:
        return "", parts[0], parts[1]
    return ":".join(parts[:-2]), parts[-2], parts[-1]


def _split_proto(text: str) -> tuple[str, str]:
    """(proto, port) of `port[/proto]`; tcp when none is given, ("", "") without a port."""
    port, _, proto = text.partition("/")
    if not port:
        return "", ""
    return proto or "tcp", port


def _parse_host_ip(raw: str) -> IPv4Address | None:
    text = raw[1:-1] if raw.startswith("[") and raw.endswith("]") else raw
    if not text:
        return None
    from ipaddress import IPv4Address, IPv6Address, ip_address

    try:
        address = ip_address(text)
    except ValueError:
        raise _invalid(f"Invalid ip address: {text}") from None
    if isinstance(address, IPv6Address):
        raise _invalid(
            f"Invalid ip address: {text}: ctrd publishes ports on IPv4 host addresses only"
        )
    return None if address == IPv4Address("0.0.0.0") else address


def _port_range(text: str, *, allow_zero: bool) -> tuple[int, int] | None:
    """`port` or `start-end` within 1-65535 (a lone 0 too when `allow_zero`); None if invalid."""
    ends = text.split("-")
    if len(ends) > 2 or not all(_DIGITS.fullmatch(e) for e in ends):
        return None
    start, end = int(ends[0]), int(ends[-1])
    if allow_zero and len(ends) == 1 and start == 0:
        return 0, 0
    if not MIN_PORT <= start <= end <= MAX_PORT:
        return None
    return start, end


def _parse_proto(text: str) -> Proto:
    proto = text.lower()
    if proto == "tcp":
        return "tcp"
    if proto == "udp":
        return "udp"
    if proto == "sctp":
        raise _invalid(f"Invalid proto: {text}: ctrd does not publish sctp ports")
    raise _invalid(f"Invalid proto: {text}")

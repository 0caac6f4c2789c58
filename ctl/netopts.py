"""`ctrctl run/create`'s network flags, checked as docker checks them and turned into labels.

The labels are the contract with the daemon (supervisor/network/labels.py): Tasks.Create reads
them and plumbs the container. This module is pure (no gRPC, no I/O) and owns:

- the network mode of `--network`: docker's `bridge` when none is given (`default` and
  `bridge` name it too), `host` and `none` (modes, no label), `container:NAME|ID` (the
  caller resolves NAME to an id first), else a ctrd network's name;
- docker's checks and words: `-p` by the daemon's own parser (nat.ParsePortSpec's words; the
  long `published=,target=` syntax converted first, as the CLI does), `--expose` as the CLI's
  parseRunOpts, `--add-host`/`--dns`/`--dns-search` as the CLI's flag validators
  (`invalid argument "x" for "--dns" flag: x is not an ip address`), `--ip` as dockerd's
  verifyNetworkingConfig, and runconfig's conflicts with `container:` mode (checked in
  validateNetContainerMode's order);
- the published and exposed ports: `-P` publishes every exposed port (the image's
  `ExposedPorts`, `--expose`'s and `-p`'s), each as `PORT/PROTO` with a host port picked,
  unless `-p` already publishes it; with `--network host` or `none` published ports are
  dropped (under host with docker's warning).

`validate` runs first, before the image is pulled or anything made; `labels` then at create,
with the image's config.

ctrctl keeps the exposed ports in its own label (`ctrctl.exposed-ports`), where `ps` and
`inspect` find the ports to show as exposed but not published, as dockerd keeps ExposedPorts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from supervisor.errors import InvalidArgument
from supervisor.network.labels import (  # constants: loads no netlink
    ALIASES_LABEL,
    DNS_LABEL,
    DNS_OPTIONS_LABEL,
    DNS_SEARCH_LABEL,
    EXTRA_HOSTS_LABEL,
    IP_LABEL,
    NETWORK_CONTAINER_LABEL,
    NETWORKS_LABEL,
    PORTS_LABEL,
)

if TYPE_CHECKING:
    from supervisor.network.portspec import PortRequest

DEFAULT_NETWORK = "bridge"  # docker's default network, which the daemon makes on first use
MODES = ("host", "none")  # modes without a ctrd network; `container:` is the third
CONTAINER_PREFIX = "container:"
EXPOSED_LABEL = "ctrctl.exposed-ports"  # `80/tcp,53/udp`: what ps and inspect show as exposed
# What inspect's HostConfig shows as the command line gave it (docker keeps it so):
NETWORK_MODE_LABEL = "ctrctl.network-mode"  # `default` when --network is not given
PUBLISH_LABEL = "ctrctl.publish"  # the -p values (standard notation), also where dropped
PUBLISH_ALL_LABEL = "ctrctl.publish-all"  # "true" with -P
PROTOCOLS = ("tcp", "udp", "sctp")  # nat's validateProto
HOST_GATEWAY = "host-gateway"  # --add-host's special value, left to the daemon

# runconfig/errors.go (dockerd 20.10)
CONFLICT_HOSTNAME = "conflicting options: hostname and the network mode"
CONFLICT_DNS = "conflicting options: dns and the network mode"
CONFLICT_HOSTS = "conflicting options: custom host-to-IP mapping and the network mode"
CONFLICT_PUBLISH = "conflicting options: port publishing and the container type network mode"
CONFLICT_EXPOSE = "conflicting options: port exposing and the container type network mode"
UNSUPPORTED_IP = "user specified IP address is supported on user defined networks only"
UNSUPPORTED_ALIAS = "network-scoped alias is supported only for containers in user defined networks"
INVALID_CONTAINER_MODE = "Invalid network mode: invalid container format container:<name|id>"
PORTS_DISCARDED = "WARNING: Published ports are discarded when using host network mode"

_ALPHA = re.compile(r"[a-zA-Z]")
_LABEL = r"(:?[a-zA-Z0-9]|(:?[a-zA-Z0-9][a-zA-Z0-9\-]*[a-zA-Z0-9]))"
_DOMAIN = re.compile(rf"^(:?{_LABEL}(:?\.{_LABEL})*)\.?\s*$")  # opts.domainRegexp


@dataclass(frozen=True)
class NetworkFlags:
    """The network flags of `run/create` as given (`network` "" or "default": the default)."""

    network: str = ""
    publish: Sequence[str] = ()
    publish_all: bool = False
    expose: Sequence[str] = ()
    ip: str = ""
    aliases: Sequence[str] = ()
    dns: Sequence[str] = ()
    dns_search: Sequence[str] = ()
    dns_options: Sequence[str] = ()
    extra_hosts: Sequence[str] = ()
    hostname: str = ""


# --- modes -------------------------------------------------------------------------------------


def network_name(network: str) -> str:
    """The network `--network` asks for: docker's default `bridge` for "" and `default`."""
    return DEFAULT_NETWORK if network in ("", "default") else network


def is_container_mode(network: str) -> bool:
    return network.startswith(CONTAINER_PREFIX)


def container_of(network: str) -> str:
    """The container NAME|ID of `container:NAME|ID`; docker's error when it is missing."""
    target = network.removeprefix(CONTAINER_PREFIX)
    if not target or ":" in target:
        raise ValueError(INVALID_CONTAINER_MODE)
    return target


def is_user_defined(network: str) -> bool:
    """docker's IsUserDefined: neither the default bridge, a mode, nor `container:`."""
    name = network_name(network)
    return name != DEFAULT_NETWORK and name not in MODES and not is_container_mode(name)


def joins_network(network: str) -> bool:
    """Whether the container joins a ctrd network (the default `bridge` too)."""
    name = network_name(network)
    return name not in MODES and not is_container_mode(name)


# --- ports -------------------------------------------------------------------------------------


def _port_number(text: str) -> int:
    """Go's strconv.ParseUint(text, 10, 16), with its words."""
    if not re.fullmatch(r"[0-9]+", text):
        raise ValueError(f'strconv.ParseUint: parsing "{text}": invalid syntax')
    if int(text) > 0xFFFF:
        raise ValueError(f'strconv.ParseUint: parsing "{text}": value out of range')
    return int(text)


def port_range(text: str) -> tuple[int, int]:
    """nat.ParsePortRange: `N` or `N-M` (M >= N); ValueError with nat's words."""
    if not text:
        raise ValueError("Empty string specified for ports.")
    if "-" not in text:
        number = _port_number(text)
        return number, number
    start_text, end_text = text.split("-")[:2]
    start, end = _port_number(start_text), _port_number(end_text)
    if end < start:
        raise ValueError(f"Invalid range specified for the Port: {text}")
    return start, end


def split_proto_port(text: str) -> tuple[str, str]:
    """nat.SplitProtoPort: (protocol, port), tcp when none is given."""
    parts = text.split("/")
    if not text or not parts[0]:
        return "", ""
    if len(parts) == 1 or not parts[1]:
        return "tcp", parts[0]
    return parts[1], parts[0]


def parse_publish(text: str) -> list[PortRequest]:
    """One `-p` value (after standard_publish) by the daemon's own parser
    (supervisor.network.portspec: nat.ParsePortSpec's words, and what ctrd cannot publish, IPv6
    host addresses and sctp, refused before anything is made). ValueError with its words.
    Imported here: a run without `-p` does without it (~1 ms; `ipaddress` ~2.5 ms more when
    a host address is given)."""
    from supervisor.network import portspec  # the parser alone: no sockets, no netlink

    try:
        return portspec.parse_publish(text)
    except InvalidArgument as e:
        raise ValueError(str(e)) from None


def _key(request: PortRequest) -> str:
    return f"{request.container_port}/{request.proto}"


def standard_publish(text: str) -> str:
    """The CLI's convertToStandardNotation: `published=8080,target=80[,protocol=udp]` is
    `8080:80/udp`; any other value stays as given."""
    if "=" not in text:
        return text
    params = {"protocol": "tcp"}
    for param in text.split(","):
        key, sep, value = param.partition("=")
        if not sep:
            raise ValueError(
                f"invalid publish opts format (should be name=value but got '{param}')"
            )
        params[key] = value.split("=")[0]
    return f"{params.get('published', '')}:{params.get('target', '')}/{params['protocol']}"


def parse_expose(text: str) -> list[str]:
    """`--expose PORT[-END][/PROTO]` as the CLI reads it: the ports, `80/tcp` each."""
    if ":" in text:
        raise ValueError(f"invalid port format for --expose: {text}")
    protocol, port = split_proto_port(text)
    try:
        start, end = port_range(port)
    except ValueError as e:
        raise ValueError(f"invalid range format for --expose: {text}, error: {e}") from None
    return [f"{number}/{protocol}" for number in range(start, end + 1)]


def image_exposed(image_config: Mapping[str, Any]) -> list[str]:
    """The image config's ExposedPorts (`{"80/tcp": {}}`), as `80/tcp` each, in order."""
    exposed = image_config.get("ExposedPorts") or {}
    if not isinstance(exposed, Mapping):
        return []
    found = []
    for key in exposed:
        protocol, port = split_proto_port(str(key))
        try:
            start, end = port_range(port)
        except ValueError:
            continue  # dockerd would have refused the image; nothing to publish
        found += [f"{number}/{protocol.lower()}" for number in range(start, end + 1)]
    return found


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


# --- checks ------------------------------------------------------------------------------------


def _flag_error(value: str, flag: str, why: str) -> ValueError:
    return ValueError(f'invalid argument "{value}" for "{flag}" flag: {why}')


def _ip(text: str) -> str:
    """opts.ValidateIPAddress: the address, normalized; ValueError when it is none."""
    try:
        import ipaddress  # only for a flag given

        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise ValueError(f"{text} is not an ip address") from None


def check_extra_host(text: str) -> str:
    """opts.ValidateExtraHost: `NAME:IP` (IPv6 after the first colon), or `NAME:host-gateway`."""
    name, sep, address = text.partition(":")
    if not sep or not name:
        raise _flag_error(text, "--add-host", f'bad format for add-host: "{text}"')
    if address != HOST_GATEWAY:
        try:
            _ip(address)
        except ValueError:
            raise _flag_error(
                text, "--add-host", f'invalid IP address in add-host: "{address}"'
            ) from None
    return text


def check_dns(text: str) -> str:
    try:
        return _ip(text)
    except ValueError as e:
        raise _flag_error(text, "--dns", str(e)) from None


def check_dns_search(text: str) -> str:
    """opts.ValidateDNSSearch: `.` or a domain name (a trailing dot dropped)."""
    value = text.strip(" ")
    if value == ".":
        return value
    found = _DOMAIN.match(value) if _ALPHA.search(value) else None
    if found is None or len(found.group(1)) >= 255:
        raise _flag_error(text, "--dns-search", f"{value} is not a valid domain")
    return found.group(1)


def check_ip(text: str) -> str:
    """dockerd's verifyNetworkingConfig: an IPv4 address (or an IPv4-mapped IPv6 one)."""
    import ipaddress  # only for --ip given

    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"invalid IPv4 address: {text}") from None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is None:
            raise ValueError(f"invalid IPv4 address: {text}")
        return str(address.ipv4_mapped)
    return str(address)


def validate(flags: NetworkFlags) -> list[str]:
    """docker's checks of the flags, before anything is made: ValueError with docker's words
    for a bad value or a conflict; else the warnings to print (docker prints them on stderr
    and goes on)."""
    dns = [check_dns(v) for v in flags.dns]
    for value in flags.dns_search:
        check_dns_search(value)
    extra_hosts = [check_extra_host(v) for v in flags.extra_hosts]
    mappings = [m for text in flags.publish for m in parse_publish(standard_publish(text))]
    exposed = [p for text in flags.expose for p in parse_expose(text)]
    name = network_name(flags.network)
    if is_container_mode(name):
        container_of(name)
        _check_container_mode(flags, dns, extra_hosts, mappings, exposed)
    if flags.ip:
        check_ip(flags.ip)
        if not is_user_defined(name):
            raise ValueError(UNSUPPORTED_IP)
    if flags.aliases and not is_user_defined(name):
        raise ValueError(UNSUPPORTED_ALIAS)
    if name == "host" and (mappings or flags.publish_all):
        return [PORTS_DISCARDED]
    return []


def labels(
    flags: NetworkFlags, image_config: Mapping[str, Any], network_container: str = ""
) -> dict[str, str]:
    """The labels asking the daemon for what `flags` (already validated) say, for an image
    with `image_config`; `network_container` is the id `container:NAME` resolved to."""
    name = network_name(flags.network)
    if is_container_mode(name):
        return {
            NETWORK_CONTAINER_LABEL: network_container,
            NETWORK_MODE_LABEL: CONTAINER_PREFIX + network_container,
        }
    publish = [standard_publish(text) for text in flags.publish]
    given = {NETWORK_MODE_LABEL: flags.network or "default"}
    if publish:
        given[PUBLISH_LABEL] = ",".join(publish)
    if flags.publish_all:
        given[PUBLISH_ALL_LABEL] = "true"
    mappings = [m for text in publish for m in parse_publish(text)]
    given_exposed = [p for text in flags.expose for p in parse_expose(text)]
    exposed = _unique([*image_exposed(image_config), *given_exposed, *(_key(m) for m in mappings)])
    if flags.publish_all:
        published = {_key(m) for m in mappings}
        publish += [port for port in exposed if port not in published]
    found: dict[str, str] = dict(given)
    if joins_network(name):
        found[NETWORKS_LABEL] = name
    else:
        publish = []  # docker drops them (with a warning under host networking)
    ip = check_ip(flags.ip) if flags.ip else ""
    dns = [check_dns(v) for v in flags.dns]
    dns_search = [check_dns_search(v) for v in flags.dns_search]
    for key, values in (
        (PORTS_LABEL, publish),
        (IP_LABEL, [ip] if ip else []),
        (ALIASES_LABEL, flags.aliases),
        (DNS_LABEL, dns),
        (DNS_SEARCH_LABEL, dns_search),
        (DNS_OPTIONS_LABEL, flags.dns_options),
        (EXTRA_HOSTS_LABEL, flags.extra_hosts),
    ):
        if values:
            found[key] = ",".join(values)
    if exposed:
        found[EXPOSED_LABEL] = ",".join(exposed)
    return found


def _check_container_mode(
    flags: NetworkFlags,
    dns: Sequence[str],
    extra_hosts: Sequence[str],
    mappings: Sequence[PortRequest],
    exposed: Sequence[str],
) -> None:
    """runconfig's validateNetContainerMode, in its order (links and MAC: no such flags)."""
    if flags.hostname:
        raise ValueError(CONFLICT_HOSTNAME)
    if dns:
        raise ValueError(CONFLICT_DNS)
    if extra_hosts:
        raise ValueError(CONFLICT_HOSTS)
    if mappings or flags.publish_all:
        raise ValueError(CONFLICT_PUBLISH)
    if exposed:
        raise ValueError(CONFLICT_EXPOSE)

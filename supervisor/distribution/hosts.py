"""Where a registry is reached: its mirrors in order, then the registry itself.

A `HostConfig` per registry domain (docker.io, host:port) lists mirrors and says whether plain
HTTP may be used. The scheme rule: plain HTTP only for loopback hosts (127.0.0.0/8, ::1,
localhost) and hosts configured insecure; HTTPS for every other. A mirror may be written as
`host[:port]` or as an `http(s)://host[:port]` URL; an `http://` mirror that the rule does not
allow is refused when the endpoints are planned, rather than silently upgraded. Mirrors of a
registry other than docker.io are asked with `?ns=<domain>`, as containerd asks them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from supervisor.distribution.reference import DOCKER_DOMAIN, endpoint_host
from supervisor.errors import InvalidArgument


@dataclass(frozen=True)
class HostConfig:
    mirrors: tuple[str, ...] = ()  # tried in order before the registry itself
    insecure: bool = False  # plain HTTP allowed to this host (for a mirror: key it by its host)


@dataclass(frozen=True)
class Endpoint:
    scheme: str  # "http" or "https"
    host: str  # host[:port] to connect to
    mirror: bool = False
    ns: str = ""  # for a mirror: the domain it stands in for (sent as ?ns=)

    @property
    def base(self) -> str:
        return f"{self.scheme}://{self.host}"

    def url(self, path: str) -> str:
        query = f"?ns={self.ns}" if self.ns else ""
        return f"{self.base}{path}{query}"


def hostname(host: str) -> str:
    """The name or address of `host[:port]` (IPv6 without its brackets)."""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host[1:]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def is_loopback(host: str) -> bool:
    name = hostname(host).lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def plain_http_allowed(host: str, hosts: Mapping[str, HostConfig]) -> bool:
    config = hosts.get(host)
    return is_loopback(host) or (config is not None and config.insecure)


def _endpoint(text: str, hosts: Mapping[str, HostConfig], mirror: bool, ns: str) -> Endpoint:
    if "://" in text:
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
            raise InvalidArgument(f'registry endpoint "{text}": expected http(s)://host[:port]')
        scheme, host = parts.scheme, parts.netloc
        if scheme == "http" and not plain_http_allowed(host, hosts):
            raise InvalidArgument(
                f'registry endpoint "{text}": plain HTTP only to loopback or insecure hosts'
            )
    else:
        host = text.rstrip("/")
        if not host or "/" in host:
            raise InvalidArgument(f'registry endpoint "{text}": expected host[:port]')
        scheme = "http" if plain_http_allowed(host, hosts) else "https"
    return Endpoint(scheme, host, mirror, ns if mirror and ns != DOCKER_DOMAIN else "")


def endpoints(domain: str, hosts: Mapping[str, HostConfig]) -> list[Endpoint]:
    """The mirrors of `domain` in order, then the registry itself."""
    config = hosts.get(domain) or HostConfig()
    out = [_endpoint(mirror, hosts, True, domain) for mirror in config.mirrors]
    upstream = endpoint_host(domain)
    insecure = config.insecure or plain_http_allowed(upstream, hosts)
    out.append(Endpoint("http" if insecure else "https", upstream))
    return out

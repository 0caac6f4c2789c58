"""CNI results (what a plugin's ADD prints) read into one model, and the pod's addresses.

Versions read: 0.1.0/0.2.0 (`ip4`/`ip6` objects), 0.3.0/0.3.1/0.4.0 (`interfaces`, `ips` with
a `version` each) and 1.0.0/1.1.0 (the same without `version`). A result without
`cniVersion` is of the version its config declared (libcni fixes it up the same way).

The pod's address, as containerd picks it: the IPs of the interface named `eth0` (inside the
sandbox when the result says where its interfaces are) from every network's result; an IP
naming no interface counts as `eth0`'s. The pod IP is the first IPv4 of them (the first of
any family when none is v4); the others, in order, are its additional IPs.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any

from supervisor.network.cni.conf import DEFAULT_IFNAME

IpInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class ResultError(Exception):
    """A result that does not read as a CNI result."""


@dataclass(frozen=True)
class Interface:
    name: str
    mac: str = ""
    sandbox: str = ""


@dataclass(frozen=True)
class IPConfig:
    address: IpInterface
    gateway: str = ""
    interface: int | None = None  # index into the result's interfaces


@dataclass(frozen=True)
class Result:
    cni_version: str
    interfaces: tuple[Interface, ...]
    ips: tuple[IPConfig, ...]
    raw: dict[str, Any]  # as the plugin printed it (with cniVersion), for prevResult/caches


def parse(data: bytes | str, conf_version: str) -> Result:
    """A plugin's stdout as a result; ResultError when it is not one."""
    try:
        raw = json.loads(data) if data else {}
    except ValueError as e:
        raise ResultError(f"failed to unmarshal raw result: {e}") from None
    if not isinstance(raw, dict):
        raise ResultError("failed to unmarshal raw result: not a JSON object")
    if not raw.get("cniVersion"):
        raw["cniVersion"] = conf_version
    return from_raw(raw)


def from_raw(raw: dict[str, Any]) -> Result:
    version = str(raw.get("cniVersion") or "")
    try:
        if version in ("0.1.0", "0.2.0") or "ip4" in raw or "ip6" in raw:
            return _legacy(raw, version)
        interfaces = tuple(_interface(i) for i in raw.get("interfaces") or ())
        ips = tuple(_ip(i, len(interfaces)) for i in raw.get("ips") or ())
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise ResultError(f"invalid CNI result (version {version or '?'}): {e}") from None
    return Result(version, interfaces, ips, raw)


def _legacy(raw: dict[str, Any], version: str) -> Result:
    ips = tuple(
        IPConfig(ipaddress.ip_interface(raw[key]["ip"]), str(raw[key].get("gateway") or ""))
        for key in ("ip4", "ip6")
        if raw.get(key)
    )
    return Result(version, (), ips, raw)


def _interface(raw: dict[str, Any]) -> Interface:
    return Interface(str(raw["name"]), str(raw.get("mac") or ""), str(raw.get("sandbox") or ""))


def _ip(raw: dict[str, Any], count: int) -> IPConfig:
    index = raw.get("interface")
    if index is not None and (
        not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < count
    ):
        raise ValueError(f"ip {raw.get('address')} names interface {index!r} of {count}")
    return IPConfig(ipaddress.ip_interface(raw["address"]), str(raw.get("gateway") or ""), index)


def pod_ips(results: list[Result], ifname: str = DEFAULT_IFNAME) -> list[str]:
    """The IPs of the pod's `ifname` from every network's result, in order."""
    found: list[str] = []
    for result in results:
        inside = {i for i, f in enumerate(result.interfaces) if f.name == ifname and f.sandbox}
        named = inside or {i for i, f in enumerate(result.interfaces) if f.name == ifname}
        found.extend(
            str(ip.address.ip) for ip in result.ips if ip.interface is None or ip.interface in named
        )
    return found


def select(ips: list[str]) -> tuple[str, tuple[str, ...]]:
    """The pod IP (first IPv4, else the first) and the additional ones, in order."""
    if not ips:
        return "", ()
    first = next((i for i, ip in enumerate(ips) if ipaddress.ip_address(ip).version == 4), 0)
    return ips[first], tuple(ips[:first] + ips[first + 1 :])


def cni_result(results: list[Result]) -> dict[str, Any]:
    """Every network's result merged as containerd shows it (go-cni's Result, the
    `cniResult` of PodSandboxStatus' verbose info): interfaces by name with their IPs, each
    result's DNS, all routes."""
    interfaces: dict[str, dict[str, Any]] = {DEFAULT_IFNAME: _config("", "")}
    dns: list[Any] = []
    routes: list[Any] = []
    for result in results:
        for f in result.interfaces:
            interfaces[f.name] = _config(f.mac, f.sandbox)
        for ip in result.ips:
            index = ip.interface
            name = result.interfaces[index].name if index is not None else DEFAULT_IFNAME
            entry = interfaces.setdefault(name, _config("", ""))
            entry["IPConfigs"] = [
                *(entry["IPConfigs"] or ()),
                {"IP": str(ip.address.ip), "Gateway": ip.gateway or None},
            ]
        dns.append(result.raw.get("dns") or {})
        routes.extend(result.raw.get("routes") or ())
    return {"Interfaces": interfaces, "DNS": dns, "Routes": routes or None}


def _config(mac: str, sandbox: str) -> dict[str, Any]:
    return {"IPConfigs": None, "Mac": mac, "Sandbox": sandbox}

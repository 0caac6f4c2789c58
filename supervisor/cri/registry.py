"""Where a CRI pull goes and with which credentials: `[cri] mirrors`, `[registry]`, the request.

- Hosts: `[cri] mirrors` of a registry come first, then `[registry] mirrors` of it, then the
  registry itself; `[registry] insecure` applies to both (loopback may always use plain HTTP).
  This is how `registry.k8s.io/...` or `gcr.io/...` names reach a loopback registry.
- Credentials: docker's config.json (`[registry] config_path`), then the request's
  `AuthConfig`, which wins for the hosts it is for. As containerd's CRI: an `AuthConfig` with
  a `server_address` is for that host only (else it is for the registry and its mirrors);
  username and password first, else the identity token as the password of an empty user, else
  the base64 `auth` ("user:password"); an empty one means anonymous.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from supervisor.config import CriConfig, RegistryConfig
from supervisor.errors import InvalidArgument


def hosts_config(cri: CriConfig, registry: RegistryConfig) -> RegistryConfig:
    """`[registry]` with `[cri] mirrors` put before its own, host by host."""
    mirrors = {host: list(urls) for host, urls in registry.mirrors.items()}
    for host, urls in cri.mirrors.items():
        mirrors[host] = [*urls, *(u for u in mirrors.get(host, []) if u not in urls)]
    return RegistryConfig(registry.config_path, mirrors, list(registry.insecure))


def parse_auth(
    username: str, password: str, auth: str, identity_token: str
) -> tuple[str, str] | None:
    """(user, password) from an AuthConfig's fields, or None for anonymous."""
    if username or password:
        return username, password
    if identity_token:
        return "", identity_token
    if auth:
        try:
            decoded = base64.b64decode(auth, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise InvalidArgument("invalid auth: not base64 of user:password") from None
        user, sep, secret = decoded.partition(":")
        if not sep:
            raise InvalidArgument("invalid decoded auth: expected user:password")
        return user, secret
    return None


def request_credentials(
    auth: Any, domain: str, hosts: Mapping[str, Any], existing: Mapping[str, Any]
) -> dict[str, Any]:
    """The credentials for a pull from `domain`: `existing` (docker's config) with the
    request's `AuthConfig` (or None) laid over the hosts it is for."""
    from supervisor.distribution import auth as dauth
    from supervisor.distribution.hosts import endpoints

    out = dict(existing)
    if auth is None:
        return out
    pair = parse_auth(auth.username, auth.password, auth.auth, auth.identity_token)
    if pair is None:
        return out
    credentials = dauth.Credentials(pair[0], pair[1], auth.identity_token)
    if auth.server_address:
        targets = {dauth.host_key(auth.server_address)}
    else:
        targets = {dauth.host_key(ep.host) for ep in endpoints(domain, hosts)}
        targets.add(dauth.host_key(domain))
    for host in targets:
        out[host] = credentials
    return out

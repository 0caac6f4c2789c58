"""HTTP to registries: one connection pool, redirects, authentication, errors named by host.

`Transport.request(endpoint, method, path, repository)` is an async context manager yielding
the response. On a 401 it reads the challenge and retries once: for Basic, with the
credentials configured for that host; for Bearer, with a token from the challenge's realm
(asked with its service and the repository's pull scope, plus the `scopes` the caller names,
such as a push scope, with basic credentials when some are configured). Tokens are cached per
(realm, service, scopes) until shortly before they expire, and a host's challenge is remembered
so later requests authenticate up front. A second 401 is the caller's to turn into
PermissionDenied. A request with a body takes a function that makes it afresh, so that a retry
or a redirect sends it whole again; `path` may be a whole URL (an upload's Location), which gets
credentials only on the endpoint's own origin.

Credentials go only where they are asked for: basic credentials after a Basic challenge from
that host, token requests over HTTPS (plain HTTP only to loopback or insecure realms), and an
Authorization header never follows a redirect to another origin. Connection failures,
timeouts and bodies cut short become Unavailable naming the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import aiohttp

from supervisor.distribution import auth
from supervisor.distribution.auth import Challenge, Credentials, Token
from supervisor.distribution.hosts import Endpoint, HostConfig, plain_http_allowed
from supervisor.errors import CtrdError, NotFound, PermissionDenied, Unavailable, Unknown

USER_AGENT = "ctrd"
MAX_REDIRECTS = 10
OAUTH_CLIENT_ID = "ctrd"  # what the refresh_token grant names us as (docker: "docker")
READ_CHUNK = 256 << 10
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_ERROR_BODY_LIMIT = 64 << 10
_TOKEN_LIMIT = 1 << 20

TokenKey = tuple[str, str, str]  # realm, service, scopes joined by spaces
Body = Callable[[], Any]  # makes a request body (bytes, an async iterable) for one sending


class Transport:
    def __init__(
        self,
        *,
        hosts: Mapping[str, HostConfig],
        credentials: Mapping[str, Credentials],
        connect_timeout: float,
        read_timeout: float,
        user_agent: str = USER_AGENT,
    ) -> None:
        self._hosts = hosts
        self._credentials = {auth.host_key(k): v for k, v in credentials.items()}
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout, sock_read=read_timeout
        )
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None
        self._challenges: dict[str, Challenge] = {}  # endpoint host -> how it lets us in
        self._scopes: dict[tuple[str, str], frozenset[str]] = {}  # (host, repo) -> scopes asked
        self._tokens: dict[TokenKey, Token] = {}
        self._token_locks: dict[TokenKey, asyncio.Lock] = {}

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # made on first use: it belongs to the running loop
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                auto_decompress=False,  # blobs are checked byte for byte against their digest
                trust_env=False,  # no proxy from the environment: loopback must stay loopback
                headers={"User-Agent": self._user_agent, "Accept-Encoding": "identity"},
            )
        return self._session

    @contextlib.asynccontextmanager
    async def request(
        self,
        ep: Endpoint,
        method: str,
        path: str,
        repository: str,
        headers: Mapping[str, str] | None = None,
        *,
        scopes: Iterable[str] = (),
        body: Body | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One request to `ep`, authenticated for `repository`; errors inside become Unavailable.

        `scopes` are asked of a token server besides the repository's pull scope.
        """
        url = path if "://" in path else ep.url(path)
        wanted = frozenset(scopes)
        own = _origin(url) == _origin(ep.base)
        for attempt in range(2):
            credentials = await self._authorization(ep, repository, wanted) if own else {}
            sent = {**(headers or {}), **credentials}
            resp = await self._send(f"registry {ep.host}", method, url, sent, body)
            if resp.status != 401 or attempt == 1 or not own:
                break
            challenges = auth.parse_challenges(resp.headers.getall("WWW-Authenticate", []))
            resp.release()
            self._learn(ep, repository, challenges, "Authorization" in sent, wanted)
        try:
            yield resp
        except (aiohttp.ClientError, TimeoutError) as e:
            raise Unavailable(f"registry {ep.host}: {describe(e)}") from e
        finally:
            resp.release()

    async def _send(
        self,
        who: str,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: Body | None = None,
    ) -> aiohttp.ClientResponse:
        """Send, following redirects ourselves so that credentials stay with their origin.

        `who` names the server in errors: "registry host:port", "token server URL".
        """
        origin = _origin(url)
        headers = dict(headers)
        for _ in range(MAX_REDIRECTS + 1):
            try:
                resp = await self._client().request(
                    method,
                    url,
                    headers=headers,
                    data=None if body is None else body(),
                    allow_redirects=False,
                )
            except aiohttp.ClientConnectorError as e:
                raise Unavailable(f"{who} cannot be reached: {describe(e)}") from e
            except (aiohttp.ClientError, TimeoutError) as e:
                raise Unavailable(f"{who}: {describe(e)}") from e
            location = resp.headers.get("Location")
            if resp.status not in _REDIRECTS or not location:
                return resp
            resp.release()
            url = urljoin(url, location)
            if _origin(url) != origin:
                headers.pop("Authorization", None)
            if resp.status == 303 and method != "HEAD":
                method, body = "GET", None
        raise Unavailable(f"{who}: more than {MAX_REDIRECTS} redirects")

    # -- authentication --------------------------------------------------------------------

    def _learn(
        self,
        ep: Endpoint,
        repository: str,
        challenges: list[Challenge],
        authorized: bool,
        scopes: frozenset[str] = frozenset(),
    ) -> None:
        """Take in a 401's challenges; PermissionDenied if none of them can be answered."""
        by_scheme = {c.scheme: c for c in challenges}
        challenge = by_scheme.get("bearer") or by_scheme.get("basic")
        if challenge is None:
            offered = ", ".join(sorted(by_scheme)) or "nothing"
            raise PermissionDenied(
                f"registry {ep.host} asks for authentication we cannot give (it offers {offered})"
            )
        if challenge.scheme == "basic" and self.credentials(ep.host) is None:
            raise PermissionDenied(
                f"registry {ep.host} requires authentication and no credentials are "
                "configured for it"
            )
        if challenge.scheme == "bearer":
            if not challenge.params.get("realm"):
                raise PermissionDenied(f"registry {ep.host}: a Bearer challenge without a realm")
            asked = challenge.params.get("scope", "").split()
            self._scopes[ep.host, repository] = frozenset(asked)
            if authorized:  # the token we sent was refused: do not offer it again
                self._tokens.pop(self._token_key(ep, challenge, repository, scopes), None)
        self._challenges[ep.host] = challenge

    def credentials(self, host: str) -> Credentials | None:
        return self._credentials.get(auth.host_key(host))

    def _token_key(
        self, ep: Endpoint, challenge: Challenge, repository: str, wanted: frozenset[str]
    ) -> TokenKey:
        scopes = auth.merge_scopes(
            {auth.pull_scope(repository), *wanted, *self._scopes.get((ep.host, repository), ())}
        )
        realm, service = challenge.params.get("realm", ""), challenge.params.get("service", "")
        return realm, service, " ".join(scopes)

    async def _authorization(
        self, ep: Endpoint, repository: str, wanted: frozenset[str]
    ) -> dict[str, str]:
        challenge = self._challenges.get(ep.host)
        if challenge is None:
            return {}
        if challenge.scheme == "basic":
            credentials = self.credentials(ep.host)
            return {} if credentials is None else {"Authorization": credentials.basic()}
        key = self._token_key(ep, challenge, repository, wanted)
        token = self._tokens.get(key)
        if token is None or not token.fresh():
            lock = self._token_locks.setdefault(key, asyncio.Lock())
            async with lock:  # one token request per key at a time; the others reuse it
                token = self._tokens.get(key)
                if token is None or not token.fresh():
                    token = await self._fetch_token(ep, key)
                    self._tokens[key] = token
        return {"Authorization": f"Bearer {token.value}"}

    async def _fetch_token(self, ep: Endpoint, key: TokenKey) -> Token:
        realm, service, scopes = key
        parts = urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise PermissionDenied(f'registry {ep.host}: token realm "{realm}" is not a URL')
        if parts.scheme == "http" and not plain_http_allowed(parts.netloc, self._hosts):
            raise PermissionDenied(
                f'registry {ep.host}: token realm "{realm}" is plain HTTP to a host that is '
                "neither loopback nor insecure"
            )
        credentials = self.credentials(ep.host)
        if credentials is not None and credentials.identity_token and not credentials.username:
            token = await self._fetch_oauth_token(ep, key, credentials.identity_token)
            if token is not None:
                return token
        query = [("service", service)] if service else []
        query += [("scope", scope) for scope in scopes.split()]
        url = realm + ("&" if parts.query else "?") + urlencode(query)
        headers = {}
        if credentials is not None and credentials.username:
            headers["Authorization"] = credentials.basic()
        resp = await self._send(f"token server {realm}", "GET", url, headers)
        if resp.status in (401, 403):
            resp.release()
            who = "the credentials" if headers else "anonymous access"
            raise PermissionDenied(
                f"token server {realm} refused {who} for {ep.host} (HTTP {resp.status})"
            )
        return await _token_from(resp, realm)

    async def _fetch_oauth_token(
        self, ep: Endpoint, key: TokenKey, refresh_token: str
    ) -> Token | None:
        """A token for an identity token (an OAuth2 refresh token, what `docker login` keeps
        as `identitytoken` and kubelet passes as the CRI's `identity_token`): POSTed to the
        realm as the refresh_token grant, as docker and containerd do. None when the token
        server has no such endpoint (404, 405, 400, or 401 as Artifactory answers): the
        caller then asks by GET, as containerd falls back to."""
        realm, service, scopes = key
        form = {
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "service": service,
            "client_id": OAUTH_CLIENT_ID,
            "scope": scopes,
        }
        body = urlencode(form).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        resp = await self._send(f"token server {realm}", "POST", realm, headers, lambda: body)
        if resp.status in (400, 401, 403, 404, 405):
            resp.release()
            if resp.status != 403:
                return None
            raise PermissionDenied(
                f"token server {realm} refused the identity token for {ep.host} (HTTP 403)"
            )
        return await _token_from(resp, realm)


async def _token_from(resp: aiohttp.ClientResponse, realm: str) -> Token:
    """The token of a token server's answer (its failure when not a 200); `resp` released."""
    try:
        if resp.status != 200:
            raise await failure(urlsplit(realm).netloc, resp, f"token from {realm}")
        body = await resp.content.read(_TOKEN_LIMIT)
    except (aiohttp.ClientError, TimeoutError) as e:
        raise Unavailable(f"token server {realm}: {describe(e)}") from e
    finally:
        resp.release()
    return auth.parse_token(body, realm)


def describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text if len(text) < 300 else text[:300] + "..."


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc.lower()


def registry_message(body: bytes) -> str:
    """The registry's own words from an error body (`{"errors": [{"code", "message"}]}`)."""
    try:
        errors = json.loads(body)["errors"]
        return "; ".join(f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors)
    except (ValueError, TypeError, KeyError, AttributeError):
        return body.decode(errors="replace").strip()[:200]


async def failure(
    host: str, resp: aiohttp.ClientResponse, what: str, access: str = "pull"
) -> CtrdError:
    """The error for an answer that is not a success (HEAD answers have no body to quote).

    `access` is what was refused on a 401 or 403: "pull" or "push".
    """
    detail = ""
    if resp.method != "HEAD":
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            detail = registry_message(await resp.content.read(_ERROR_BODY_LIMIT))
    said = f" ({detail})" if detail else ""
    status = resp.status
    if status == 404:
        return NotFound(f"{what} on {host}{said}")
    if status in (401, 403):
        return PermissionDenied(
            f"{what} on {host}: {access} access denied (HTTP {status}), the repository does not "
            f"exist or needs authorization{said}"
        )
    if status == 429 or status >= 500:
        return Unavailable(f"{what}: registry {host} answered HTTP {status}{said}")
    return Unknown(f"{what}: registry {host} answered HTTP {status}{said}")

"""Single-use, expiring tokens: what the streaming server's URLs carry.

`Tokens.issue(kind, payload)` keeps `payload` (the CRI request that asked for the URL) under a
new token of 8 URL-safe characters from the system's random source (48 bits: a URL cannot be
guessed) and answers the token. `take(kind, token)` hands the payload back and forgets it:
a URL works once. A token of another kind, an unknown one or one older than `ttl` seconds
(the `[cri] stream_idle_timeout`, a minute by default) is None. At most `limit` tokens wait
at once (containerd's 1000): issuing past that fails with `Full` rather than growing without
end. Expired tokens are dropped as new ones are issued. The clock is injectable for tests.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

TOKEN_BYTES = 6  # 8 characters of URL-safe base64
DEFAULT_TTL = 60.0
DEFAULT_LIMIT = 1000


class Full(Exception):
    """Too many tokens wait for their client."""


@dataclass(frozen=True)
class _Entry:
    kind: str
    payload: Any
    expires: float


class Tokens:
    def __init__(
        self,
        ttl: float = DEFAULT_TTL,
        limit: int = DEFAULT_LIMIT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._limit = limit
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # oldest first

    def __len__(self) -> int:
        self._expire()
        return len(self._entries)

    def issue(self, kind: str, payload: Any) -> str:
        self._expire()
        if len(self._entries) >= self._limit:
            raise Full(f"{self._limit} streaming requests are waiting for their client")
        while True:
            token = secrets.token_urlsafe(TOKEN_BYTES)
            if token not in self._entries:
                break
        self._entries[token] = _Entry(kind, payload, self._clock() + self._ttl)
        return token

    def take(self, kind: str, token: str) -> Any | None:
        self._expire()
        entry = self._entries.get(token)
        if entry is None or entry.kind != kind:
            return None
        del self._entries[token]
        return entry.payload

    def _expire(self) -> None:
        now = self._clock()
        while self._entries:
            token, entry = next(iter(self._entries.items()))
            if entry.expires > now:
                return
            del self._entries[token]

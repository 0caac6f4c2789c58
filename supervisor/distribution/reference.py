"""Image references as docker names them, parsed and normalized (distribution/reference).

`parse` always returns the fully qualified form: a domain, a path, and a tag or digest (or
both, `name:tag@digest`, as docker keeps them; the digest is what gets pulled). Normalization:

    busybox               -> docker.io/library/busybox:latest
    user/app              -> docker.io/user/app:latest
    index.docker.io/x     -> docker.io/library/x:latest   (registry.hub.docker.com likewise)
    host:5000/a/b:tag     -> host:5000/a/b:tag
    localhost/app         -> localhost/app:latest

The first path component is a domain when it contains "." or ":", is "localhost", or has an
upper-case letter (docker's rule); otherwise the name is on docker.io. Repository paths are
lower case; a name of 64 hex digits is refused (it would read as an image ID). Every error is
`InvalidReference`, both an `InvalidArgument` (for the API) and a `ValueError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from supervisor import digests
from supervisor.errors import InvalidArgument

DOCKER_DOMAIN = "docker.io"
DOCKER_ENDPOINT = "registry-1.docker.io"  # where docker.io's API is served
_DOCKER_ALIASES = frozenset({"docker.io", "index.docker.io", "registry.hub.docker.com"})
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_MAX = 255

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|-+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REFERENCE = re.compile(
    rf"(?P<domain>{_DOMAIN})/(?P<path>{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?",
    re.ASCII,
)
_TAG_ONLY = re.compile(_TAG, re.ASCII)
_IDENTIFIER = re.compile(r"[a-f0-9]{64}")


class InvalidReference(InvalidArgument, ValueError):
    """A string that is not an image reference; the detail says why."""


@dataclass(frozen=True)
class Reference:
    domain: str  # "docker.io", "host:5000", "localhost", "[::1]:5000"
    path: str  # the repository inside the registry: "library/busybox"
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        """The repository's full name: `docker.io/library/busybox`."""
        return f"{self.domain}/{self.path}"

    @property
    def object(self) -> str:
        """What the registry's manifests endpoint is asked for: the digest, else the tag."""
        return self.digest or self.tag

    def __str__(self) -> str:
        tag = f":{self.tag}" if self.tag else ""
        digest = f"@{self.digest}" if self.digest else ""
        return f"{self.name}{tag}{digest}"

    def familiar(self) -> str:
        """The short form docker shows: `busybox:latest`, `user/app:v1`, `host:5000/a:b`."""
        text = str(self)
        if self.domain == DOCKER_DOMAIN:
            text = text.removeprefix(f"{DOCKER_DOMAIN}/").removeprefix(OFFICIAL_PREFIX)
        return text

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.domain, self.path, self.tag, digest)


def _split_domain(name: str) -> tuple[str, str]:
    first, slash, rest = name.partition("/")
    if not slash or (
        not any(c in first for c in ".:") and first != "localhost" and first.lower() == first
    ):
        domain, remainder = DOCKER_DOMAIN, name
    else:
        domain, remainder = first, rest
    if domain in _DOCKER_ALIASES:
        domain = DOCKER_DOMAIN
    if domain == DOCKER_DOMAIN and "/" not in remainder:
        remainder = OFFICIAL_PREFIX + remainder
    return domain, remainder


def parse(text: str) -> Reference:
    """Parse and normalize `text`; InvalidReference says what is wrong with it."""
    if not text:
        raise InvalidReference("invalid reference format: the name is empty")
    if _IDENTIFIER.fullmatch(text):
        raise InvalidReference(
            f'invalid repository name "{text}": cannot specify 64-byte hexadecimal strings'
        )
    if text != text.strip() or any(c.isspace() for c in text):
        raise InvalidReference(f'invalid reference format "{text}": it contains white space')
    domain, remainder = _split_domain(text)
    # The repository is what comes before a tag or digest (a ":" after the domain begins one).
    repository = remainder.partition("@")[0].partition(":")[0]
    if repository.lower() != repository:
        raise InvalidReference(
            f'invalid reference format "{text}": repository name "{repository}" must be lowercase'
        )
    match = _REFERENCE.fullmatch(f"{domain}/{remainder}")
    if match is None:
        raise InvalidReference(f'invalid reference format "{text}"')
    name = f"{match['domain']}/{match['path']}"
    if len(name) > NAME_MAX:
        raise InvalidReference(
            f'invalid reference format "{text}": repository name must not be more than '
            f"{NAME_MAX} characters"
        )
    tag, digest = match["tag"] or "", match["digest"] or ""
    if digest:
        try:
            digests.parse(digest)
        except InvalidArgument as e:
            raise InvalidReference(f'invalid reference format "{text}": {e.detail}') from None
    if not tag and not digest:
        tag = DEFAULT_TAG
    return Reference(match["domain"], match["path"], tag, digest)


def validate_tag(tag: str) -> str:
    if not _TAG_ONLY.fullmatch(tag):
        raise InvalidReference(f'invalid tag "{tag}"')
    return tag


def endpoint_host(domain: str) -> str:
    """The host that serves a domain's registry API: docker.io is served elsewhere."""
    return DOCKER_ENDPOINT if domain in _DOCKER_ALIASES else domain

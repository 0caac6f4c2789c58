"""Platforms (os/architecture/variant) and choosing among them, as containerd's `platforms`.

`only(p)` is containerd's `platforms.Only`, which `platforms.Default()` is for the host: it
matches `p` and what `p` can run, best first (amd64 v3 -> v2 -> v1 -> 386; arm/v7 -> v6 -> v5;
arm64/v8.x -> v8.(x-1)... -> arm/v8 -> arm/v7...). `only_strict(p)` matches `p` alone. Both
compare normalized platforms (x86_64 is amd64, aarch64 is arm64, armhf is arm/v7, arm64/v8 is
arm64, ...). `Matcher.rank` orders candidates: lower is better, None means no match.
"""

from __future__ import annotations

import platform as _host
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from supervisor.errors import InvalidArgument


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""
    os_version: str = ""
    os_features: tuple[str, ...] = field(default=())

    def __str__(self) -> str:
        return "/".join(part for part in (self.os, self.architecture, self.variant) if part)

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Platform:
        """From an OCI `platform` object (or an image config, which has the same fields)."""
        features = value.get("os.features") or ()
        return cls(
            os=str(value.get("os", "")),
            architecture=str(value.get("architecture", "")),
            variant=str(value.get("variant") or ""),
            os_version=str(value.get("os.version") or ""),
            os_features=tuple(str(f) for f in features),
        )


_KNOWN_OS = frozenset(
    {
        "aix", "android", "darwin", "dragonfly", "freebsd", "hurd", "illumos", "ios", "js",
        "linux", "nacl", "netbsd", "openbsd", "plan9", "solaris", "windows", "zos",
    }
)  # fmt: skip
_SPECIFIER = re.compile(r"[A-Za-z0-9_.-]+")
_OS_PART = re.compile(r"([A-Za-z0-9_-]+)(?:\(([A-Za-z0-9_.%-]*)\))?")  # os(version)


def normalize_arch(arch: str, variant: str) -> tuple[str, str]:
    arch, variant = arch.lower(), variant.lower()
    if arch == "i386":
        return "386", ""
    if arch in ("x86_64", "x86-64", "amd64"):
        return "amd64", "" if variant == "v1" else variant
    if arch in ("aarch64", "arm64"):
        if variant in ("8", "v8", "v8.0"):
            variant = ""
        elif variant in ("9", "9.0", "v9.0"):
            variant = "v9"
        return "arm64", variant
    if arch == "armhf":
        return "arm", "v7"
    if arch == "armel":
        return "arm", "v6"
    if arch == "arm":
        if variant in ("", "7"):
            variant = "v7"
        elif variant in ("5", "6", "8"):
            variant = "v" + variant
    return arch, variant


def normalize(p: Platform) -> Platform:
    os_name = (p.os or "linux").lower()
    if os_name == "macos":
        os_name = "darwin"
    arch, variant = normalize_arch(p.architecture, p.variant)
    return replace(
        p,
        os=os_name,
        architecture=arch,
        variant=variant,
        os_features=tuple(sorted(set(p.os_features))),
    )


def host() -> Platform:
    """The platform of this machine (its os, and its architecture with the variant known)."""
    arch, variant = normalize_arch(_host.machine() or "amd64", "")
    return normalize(Platform("linux", arch, variant))


def parse(specifier: str) -> Platform:
    """`os[(version)]`, `arch`, `os/arch` or `os/arch/variant`, normalized (as containerd)."""
    parts = specifier.split("/")
    if "*" in specifier or len(parts) > 3 or not parts[0]:
        raise InvalidArgument(f'platform "{specifier}": cannot parse platform specifier')
    os_match = _OS_PART.fullmatch(parts[0])
    if os_match is None or not all(_SPECIFIER.fullmatch(part) for part in parts[1:]):
        raise InvalidArgument(f'platform "{specifier}": invalid component')
    os_name, os_version = os_match[1].lower(), os_match[2] or ""
    if len(parts) == 1:
        if os_name in _KNOWN_OS:
            return normalize(replace(host(), os=os_name, os_version=os_version))
        arch, variant = normalize_arch(parts[0], "")
        return normalize(
            Platform(host().os, arch, "" if (arch, variant) == ("arm", "v7") else variant)
        )
    arch, variant = normalize_arch(parts[1], parts[2] if len(parts) == 3 else "")
    return normalize(Platform(os_name, arch, variant, os_version))


def _vector(p: Platform) -> list[Platform]:
    """`p` then the platforms it can also run, best first (containerd's platformVector)."""
    vector = [p]
    number = p.variant.removeprefix("v")
    if p.architecture == "amd64":
        if number.isdigit() and int(number) > 1:
            vector += [replace(p, variant=f"v{v}") for v in range(int(number) - 1, 0, -1)]
        vector.append(replace(p, architecture="386", variant=""))
    elif p.architecture == "arm":
        if number.isdigit() and int(number) > 5:
            vector += [replace(p, variant=f"v{v}") for v in range(int(number) - 1, 4, -1)]
    elif p.architecture == "arm64":
        variant = p.variant or "v8"
        vector = [replace(p, variant=v) for v in _arm64_variants(variant)]
        if not vector:  # a variant containerd does not know matches nothing
            return []
        if variant.startswith(("v8", "v9")):
            variant = "v8"
        vector += _vector(replace(p, architecture="arm", variant=variant))
    return vector


def _arm64_variants(variant: str) -> list[str]:
    """arm64/v9.x runs v9.(x-1)..v9 and v8.(x+5)..v8; v8.x runs v8.(x-1)..v8."""
    match = re.fullmatch(r"v([89])(?:\.([0-9]))?", variant)
    if match is None:
        return []
    major, minor = int(match[1]), int(match[2] or 0)
    versions = [(9, minor), (8, min(minor + 5, 9))] if major == 9 else [(8, minor)]
    return [f"v{mj}.{mn}" if mn else f"v{mj}" for mj, top in versions for mn in range(top, -1, -1)]


@dataclass(frozen=True)
class Matcher:
    """Matches platforms against an ordered list of wanted ones; earlier ranks better."""

    wanted: tuple[Platform, ...]

    def rank(self, candidate: Platform) -> int | None:
        p = normalize(candidate)
        for i, want in enumerate(self.wanted):
            w = normalize(want)
            if (p.os, p.architecture, p.variant) == (w.os, w.architecture, w.variant) and set(
                p.os_features
            ) <= set(w.os_features):
                return i
        return None

    def match(self, candidate: Platform) -> bool:
        return self.rank(candidate) is not None

    def __str__(self) -> str:
        return str(self.wanted[0]) if self.wanted else "none"


def only(p: Platform) -> Matcher:
    return Matcher(tuple(_vector(normalize(p))))


def only_strict(p: Platform) -> Matcher:
    return Matcher((normalize(p),))


def default() -> Matcher:
    return only(host())


def best(candidates: Sequence[Platform | None], matcher: Matcher) -> list[int]:
    """Indexes of the candidates that match, best first; those with no platform come last.

    Ties keep the input order (containerd sorts stably), and among equal platforms the one
    declaring more OS features wins, as in containerd.
    """
    ranked: list[tuple[int, int, int]] = []
    unknown: list[int] = []
    for i, candidate in enumerate(candidates):
        if candidate is None:
            unknown.append(i)
            continue
        rank = matcher.rank(candidate)
        if rank is not None:
            ranked.append((rank, -len(candidate.os_features), i))
    return [i for *_, i in sorted(ranked)] + unknown

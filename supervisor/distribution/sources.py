"""Where content came from: containerd's distribution source labels, for cross-repository mounts.

A blob pulled from (or pushed to) `host/repository` carries the label
`containerd.io/distribution.source.<hostname>=<repository>[,<repository>...]`, as containerd's
`AppendDistributionSourceLabel` writes it: the key names the registry's host *without* its port
(containerd takes the URL's `Hostname()`), the value lists repositories sorted and without
duplicates. A push to another repository of that host may then ask the registry to mount the
blob from one of them instead of uploading it; when the guess is wrong (another port, a
repository we may not read), the registry just opens an upload, so nothing is lost but a request.
Labels that would outgrow containerd's size limit are left as they are.
"""

from __future__ import annotations

from collections.abc import Mapping

from supervisor.distribution.hosts import hostname
from supervisor.distribution.reference import Reference
from supervisor.identifiers import MAX_LABEL_SIZE

PREFIX = "containerd.io/distribution.source"


def label_key(domain: str) -> str:
    """`containerd.io/distribution.source.127.0.0.1` for `127.0.0.1:5000`."""
    return f"{PREFIX}.{hostname(domain)}"


def appended(current: str, repository: str) -> str:
    """The label's value with `repository` added: sorted, each repository once."""
    repositories = {r for r in current.split(",") if r}
    repositories.add(repository)
    return ",".join(sorted(repositories))


def label_for(ref: Reference, labels: Mapping[str, str]) -> dict[str, str]:
    """The one label to set so that a blob's labels also name `ref`'s repository; {} if they
    already do or if the label would be too large."""
    key = label_key(ref.domain)
    current = labels.get(key, "")
    value = appended(current, ref.path)
    if value == current or len(key.encode()) + len(value.encode()) > MAX_LABEL_SIZE:
        return {}
    return {key: value}


def mount_candidate(ref: Reference, labels: Mapping[str, str]) -> str:
    """A repository of `ref`'s registry the blob may be mounted from, or "" (containerd's
    `selectRepositoryMountCandidate`: the first listed that is not the target itself)."""
    for repository in labels.get(label_key(ref.domain), "").split(","):
        if repository and repository != ref.path:
            return repository
    return ""

"""A CRI container's user: uid, gid and additional gids, by containerd 1.6's CRI rules.

The user string is run_as_username, else run_as_user, with ":<run_as_group>" when a group is
given (a group without a user is refused); without either, the image's `User`. It is resolved
over the image's /etc/passwd and /etc/group (`supervisor.imageusers`, read from the
snapshot's layers without a mount) as containerd's `oci.WithUser` does:

- "uid": the passwd entry with that uid gives the gid; none (or no passwd): gid 0;
- "name": the entry with that name; none is an error;
- "a:b": each part a number as it is, a name looked up (user in passwd, group in group),
  a name not found an error;
- the additional gids are the gid, the groups listing the user by name (except a group of the
  user's own name) and the pod's supplemental groups, sorted without repeats (containerd's
  `mergeGids`). The user named is run_as_username, else the passwd name of the final uid
  (containerd takes run_as_user's, or root's when only the image names a user; ctrd takes the
  image's user then, as docker does).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from supervisor.errors import InvalidArgument
from supervisor.imageusers import RootFS, UserDB, atoi

MAX_ID = 2**31 - 1  # runc's limit, which containerd follows


class User(NamedTuple):
    uid: int
    gid: int
    additional_gids: tuple[int, ...]


def user_string(username: str, uid: int | None, gid: int | None) -> str:
    """containerd's generateUserString."""
    user = username or ("" if uid is None else str(uid))
    if not user:
        if gid is not None:
            raise InvalidArgument(
                f'failed to generate user string: user group "{gid}" is specified without user'
            )
        return ""
    return f"{user}:{gid}" if gid is not None else user


def _number(text: str) -> int | None:
    value = atoi(text)
    return value if value is not None and 0 <= value <= MAX_ID else None


def resolve(
    user: str, rootfs: RootFS | None, supplemental: Sequence[int] = (), group_user: str = ""
) -> User:
    """`user` ("", "uid", "name", "a:b") in the image at `rootfs`; `group_user` names whose
    member groups to add (default: the passwd name of the resolved uid)."""
    db = UserDB(rootfs)
    parts = user.split(":") if user else []
    if len(parts) > 2:
        raise InvalidArgument(f"invalid USER value {user}")
    users = db.users() or []
    uid, gid = 0, 0
    if len(parts) == 1:
        number = _number(parts[0])
        if number is not None:
            entry = next((u for u in users if u.uid == number), None)
            uid, gid = number, entry.gid if entry is not None else 0
        else:
            entry = next((u for u in users if u.name == parts[0]), None)
            if entry is None:
                raise InvalidArgument(
                    f'failed to find user "{parts[0]}" in the image: no users found'
                )
            uid, gid = entry.uid, entry.gid
    elif len(parts) == 2:
        number = _number(parts[0])
        if number is None:
            entry = next((u for u in users if u.name == parts[0]), None)
            if entry is None:
                raise InvalidArgument(
                    f'failed to find user "{parts[0]}" in the image: no users found'
                )
            number = entry.uid
        group = _number(parts[1])
        if group is None:
            found = next((g for g in db.groups() or [] if g.name == parts[1]), None)
            if found is None:
                raise InvalidArgument(
                    f'failed to find group "{parts[1]}" in the image: no groups found'
                )
            group = found.gid
        uid, gid = number, group
    name = group_user or next((u.name for u in users if u.uid == uid), "")
    members = (
        [g.gid for g in db.groups() or [] if g.name != name and name in g.members] if name else []
    )
    return User(uid, gid, tuple(sorted({gid, *members, *supplemental})))

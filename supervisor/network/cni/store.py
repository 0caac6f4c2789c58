"""The durable record of each pod's CNI attachments (table `cni_attachments`, ctrd's metadata).

A sandbox's rows are written in one transaction before the first plugin runs (so a crash at
any later point leaves a record to DEL from), its results in one more after the ADDs
succeeded, and each row is deleted only after that network's DEL succeeded. A row keeps the
network's list as loaded and the arguments of the ADD: a DEL runs with the very same, whatever
the conf dir holds by then.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from supervisor.metadata.db import Database


@dataclass(frozen=True)
class Attachment:
    """One network of one sandbox: what its ADD ran with and (once it finished) gave."""

    sandbox: str
    ifname: str
    position: int  # the order of the ADDs; DELs go the other way
    network: str
    netns: str
    config: bytes  # the network's list, as loaded
    cni_args: tuple[tuple[str, str], ...] = ()
    capability_args: dict[str, Any] = field(default_factory=dict)
    result: str = ""  # the final ADD result (JSON), "" until the ADD finished


class AttachmentStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def record(self, attachments: Sequence[Attachment]) -> None:
        """Record a sandbox's attachments (replacing any it had), in one transaction."""

        def write(conn: sqlite3.Connection) -> None:
            now = time.time_ns()
            for a in attachments:
                conn.execute(
                    "INSERT OR REPLACE INTO cni_attachments (sandbox, ifname, position, network,"
                    " netns, config, args, result, created_at) VALUES (?,?,?,?,?,?,?,?,?)",
                    (
                        a.sandbox, a.ifname, a.position, a.network, a.netns, a.config,
                        _args_json(a), a.result, now,
                    ),
                )  # fmt: skip

        await self._db.write(write)

    async def set_results(self, sandbox: str, results: dict[str, str]) -> None:
        """The final ADD results of the sandbox's attachments, by ifname."""

        def write(conn: sqlite3.Connection) -> None:
            for ifname, result in results.items():
                conn.execute(
                    "UPDATE cni_attachments SET result = ? WHERE sandbox = ? AND ifname = ?",
                    (result, sandbox, ifname),
                )

        await self._db.write(write)

    async def remove(self, sandbox: str, ifnames: Sequence[str]) -> None:
        """Forget the sandbox's attachments on `ifnames` (their DELs succeeded)."""
        await self._db.write(
            lambda conn: conn.executemany(
                "DELETE FROM cni_attachments WHERE sandbox = ? AND ifname = ?",
                [(sandbox, ifname) for ifname in ifnames],
            )
        )

    async def of(self, sandbox: str) -> list[Attachment]:
        """The sandbox's attachments in ADD order."""
        rows = await self._db.read(
            lambda conn: conn.execute(
                "SELECT sandbox, ifname, position, network, netns, config, args, result"
                " FROM cni_attachments WHERE sandbox = ? ORDER BY position",
                (sandbox,),
            ).fetchall()
        )
        return [_attachment(row) for row in rows]

    async def sandboxes(self) -> list[str]:
        """Every sandbox with a recorded attachment."""
        rows = await self._db.read(
            lambda conn: conn.execute(
                "SELECT DISTINCT sandbox FROM cni_attachments ORDER BY sandbox"
            ).fetchall()
        )
        return [str(row[0]) for row in rows]


def _args_json(a: Attachment) -> str:
    return json.dumps(
        {"cniArgs": [list(kv) for kv in a.cni_args], "capabilityArgs": a.capability_args}
    )


def _attachment(row: tuple[Any, ...]) -> Attachment:
    sandbox, ifname, position, network, netns, config, args, result = row
    parsed = json.loads(args)
    return Attachment(
        sandbox=sandbox,
        ifname=ifname,
        position=position,
        network=network,
        netns=netns,
        config=bytes(config),
        cni_args=tuple((str(k), str(v)) for k, v in parsed.get("cniArgs", ())),
        capability_args=dict(parsed.get("capabilityArgs") or {}),
        result=result,
    )

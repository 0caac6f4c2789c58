"""The metadata schema, as an ordered list of migrations.

`PRAGMA user_version` holds how many migrations a database has had. Opening a database runs the
missing ones, each in its own transaction, and refuses a database written by a newer ctrd. Never
edit a migration that has shipped: add the next one.

Every namespaced table has a `namespace` column referencing `namespaces(name)`. Labels are a
JSON object in a `labels` column: they are read whole and filtered in Python.
"""

from __future__ import annotations

MIGRATIONS: tuple[str, ...] = (
    # 1: namespaces.
    """
    CREATE TABLE namespaces (
        name TEXT PRIMARY KEY,
        labels TEXT NOT NULL DEFAULT '{}',
        created_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    """,
)

# The objects whose presence keeps a namespace from being deleted, as (table, what to call them
# in the error). Leases and ingests do not count, as in containerd. Later migrations add theirs.
NAMESPACE_CONTENTS: tuple[tuple[str, str], ...] = ()

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
    # 2: content, images, leases.
    """
    CREATE TABLE blobs (
        namespace TEXT NOT NULL REFERENCES namespaces(name),
        digest TEXT NOT NULL,
        size INTEGER NOT NULL,
        labels TEXT NOT NULL DEFAULT '{}',
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (namespace, digest)
    ) WITHOUT ROWID;
    CREATE INDEX blobs_by_digest ON blobs (digest);
    CREATE TABLE ingests (
        namespace TEXT NOT NULL REFERENCES namespaces(name),
        ref TEXT NOT NULL,
        backend_ref TEXT NOT NULL UNIQUE,
        expected TEXT NOT NULL DEFAULT '',
        expires_at INTEGER,  -- ns since the epoch; NULL while a lease holds it
        PRIMARY KEY (namespace, ref)
    ) WITHOUT ROWID;
    CREATE TABLE images (
        namespace TEXT NOT NULL REFERENCES namespaces(name),
        name TEXT NOT NULL,
        media_type TEXT NOT NULL,
        digest TEXT NOT NULL,
        size INTEGER NOT NULL,
        annotations TEXT NOT NULL DEFAULT '{}',
        labels TEXT NOT NULL DEFAULT '{}',
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (namespace, name)
    ) WITHOUT ROWID;
    CREATE TABLE leases (
        namespace TEXT NOT NULL REFERENCES namespaces(name),
        id TEXT NOT NULL,
        labels TEXT NOT NULL DEFAULT '{}',
        created_at INTEGER NOT NULL,
        PRIMARY KEY (namespace, id)
    ) WITHOUT ROWID;
    CREATE TABLE lease_resources (
        namespace TEXT NOT NULL,
        lease TEXT NOT NULL,
        type TEXT NOT NULL,  -- content, ingests, snapshots/<snapshotter>
        id TEXT NOT NULL,
        PRIMARY KEY (namespace, lease, type, id),
        FOREIGN KEY (namespace, lease) REFERENCES leases(namespace, id) ON DELETE CASCADE
    ) WITHOUT ROWID;
    """,
    # 3: snapshots, per namespace and snapshotter, over the backends' own records.
    """
    CREATE TABLE snapshots (
        namespace TEXT NOT NULL REFERENCES namespaces(name),
        snapshotter TEXT NOT NULL,
        key TEXT NOT NULL,
        backend_key TEXT NOT NULL,  -- <namespace>/<seq>/<key> in the backend
        parent TEXT NOT NULL DEFAULT '',  -- the parent's key in this namespace
        kind INTEGER NOT NULL,
        labels TEXT NOT NULL DEFAULT '{}',
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (namespace, snapshotter, key),
        UNIQUE (snapshotter, backend_key)
    ) WITHOUT ROWID;
    CREATE INDEX snapshots_by_parent ON snapshots (namespace, snapshotter, parent);
    CREATE TABLE sequences (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
    """,
    # 4: containers. Runtime options, spec and extensions are kept as the client sent them
    # (type URL and serialized value of each Any).
    """
    CREATE TABLE containers (
        namespace TEXT NOT NULL REFERENCES namespaces(name),
        id TEXT NOT NULL,
        labels TEXT NOT NULL DEFAULT '{}',
        image TEXT NOT NULL DEFAULT '',
        runtime_name TEXT NOT NULL,
        runtime_options_type TEXT NOT NULL DEFAULT '',
        runtime_options BLOB NOT NULL DEFAULT x'',
        spec_type TEXT NOT NULL DEFAULT '',
        spec BLOB NOT NULL DEFAULT x'',
        snapshotter TEXT NOT NULL DEFAULT '',
        snapshot_key TEXT NOT NULL DEFAULT '',
        extensions TEXT NOT NULL DEFAULT '{}',  -- name -> [type URL, base64 value]
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (namespace, id)
    ) WITHOUT ROWID;
    """,
    # 5: container networks and their endpoints. An endpoint row is the address lease: an
    # address is in use exactly while its row exists. `last_address` is where the next dynamic
    # pick starts (round-robin, `supervisor.network.ipam`).
    """
    CREATE TABLE networks (
        namespace TEXT NOT NULL REFERENCES namespaces(name),
        id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        driver TEXT NOT NULL,
        subnet TEXT NOT NULL,
        gateway TEXT NOT NULL,
        ip_range TEXT NOT NULL DEFAULT '',
        internal INTEGER NOT NULL DEFAULT 0,
        mtu INTEGER NOT NULL DEFAULT 0,
        labels TEXT NOT NULL DEFAULT '{}',
        options TEXT NOT NULL DEFAULT '{}',
        last_address TEXT NOT NULL DEFAULT '',
        created_at INTEGER NOT NULL,
        PRIMARY KEY (namespace, id),
        UNIQUE (namespace, name)
    ) WITHOUT ROWID;
    CREATE TABLE endpoints (
        namespace TEXT NOT NULL,
        network TEXT NOT NULL,
        container TEXT NOT NULL,
        address TEXT NOT NULL,
        mac TEXT NOT NULL DEFAULT '',
        aliases TEXT NOT NULL DEFAULT '[]',
        created_at INTEGER NOT NULL,
        PRIMARY KEY (namespace, network, container),
        UNIQUE (namespace, network, address),
        FOREIGN KEY (namespace, network) REFERENCES networks(namespace, id)
    ) WITHOUT ROWID;
    CREATE INDEX endpoints_by_container ON endpoints (namespace, container);
    """,
    # 6: published ports, one row per host port an endpoint holds (`supervisor.network.ports`):
    # the actual host port (never 0), host_ip '' for every address. A row lives exactly as long
    # as its endpoint: the store deletes them together, in one transaction.
    """
    CREATE TABLE ports (
        namespace TEXT NOT NULL,
        network TEXT NOT NULL,
        container TEXT NOT NULL,
        proto TEXT NOT NULL CHECK (proto IN ('tcp', 'udp')),
        host_ip TEXT NOT NULL DEFAULT '',
        host_port INTEGER NOT NULL CHECK (host_port BETWEEN 1 AND 65535),
        container_port INTEGER NOT NULL CHECK (container_port BETWEEN 1 AND 65535),
        PRIMARY KEY (namespace, network, container, proto, host_ip, host_port),
        FOREIGN KEY (namespace, network, container)
            REFERENCES endpoints(namespace, network, container)
    ) WITHOUT ROWID;
    CREATE INDEX ports_by_container ON ports (namespace, container);
    """,
    # Health checks (`supervisor.health.store`): one row per container that has a health,
    # from its task's first start until the container is deleted. The log is JSON,
    # [[start_ns, end_ns, exit_code, output], ...], the oldest first. No reference to the
    # namespace: the row goes with its container (the monitor deletes it), never holds a
    # namespace back.
    """
    CREATE TABLE health (
        namespace TEXT NOT NULL,
        container TEXT NOT NULL,
        status TEXT NOT NULL,
        failing_streak INTEGER NOT NULL DEFAULT 0,
        started_at INTEGER NOT NULL DEFAULT 0,
        log TEXT NOT NULL DEFAULT '[]',
        PRIMARY KEY (namespace, container)
    ) WITHOUT ROWID;
    """,
    # Volumes (`supervisor.volumes.store`): docker's volume objects, per namespace. Whether one
    # is in use is read from the containers' `ctrd.io/volumes` labels, never stored; the data
    # is under <root>/volumes/<namespace>/<name>/_data. A namespace with volumes is not deleted.
    """
    CREATE TABLE volumes (
        namespace TEXT NOT NULL REFERENCES namespaces(name),
        name TEXT NOT NULL,
        driver TEXT NOT NULL,
        labels TEXT NOT NULL DEFAULT '{}',
        options TEXT NOT NULL DEFAULT '{}',
        created_at INTEGER NOT NULL,
        PRIMARY KEY (namespace, name)
    ) WITHOUT ROWID;
    """,
    # Restart policies (`supervisor.restart`): what the daemon keeps of a container whose label
    # asks for one: restarts since the user last started it, its task's last start and exit
    # (ns since the epoch; 0: none), when a pending restart starts it (0: none pending), and
    # the stdio its task had (a restarted task gets the same). No foreign key: a container's
    # Update replaces its row, which would cascade; the monitor deletes the row with its
    # container (`/containers/delete`), and at start those of containers that are gone.
    """
    CREATE TABLE restarts (
        namespace TEXT NOT NULL,
        container TEXT NOT NULL,
        count INTEGER NOT NULL DEFAULT 0,
        started_at INTEGER NOT NULL DEFAULT 0,
        exit_status INTEGER NOT NULL DEFAULT 0,
        exited_at INTEGER NOT NULL DEFAULT 0,
        restart_at INTEGER NOT NULL DEFAULT 0,
        log INTEGER NOT NULL DEFAULT 1,
        terminal INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (namespace, container)
    ) WITHOUT ROWID;
    """,
    # CNI attachments of pod sandboxes (`supervisor.network.cni.store`): one row per network
    # a sandbox is on (the built-in loopback included), written before the first plugin runs
    # and deleted only after the network's DEL succeeded. `config` is the network's list as
    # it was loaded (DEL runs with it whatever the conf dir holds since), `args` the CNI_ARGS
    # and capability args (JSON), `result` the final ADD result ('' until the ADD finished).
    # No namespace: sandbox ids are unique across them, and a row must outlive its sandbox.
    """
    CREATE TABLE cni_attachments (
        sandbox TEXT NOT NULL,
        ifname TEXT NOT NULL,
        position INTEGER NOT NULL,
        network TEXT NOT NULL,
        netns TEXT NOT NULL,
        config BLOB NOT NULL,
        args TEXT NOT NULL DEFAULT '{}',
        result TEXT NOT NULL DEFAULT '',
        created_at INTEGER NOT NULL,
        PRIMARY KEY (sandbox, ifname)
    ) WITHOUT ROWID;
    """,
)

# The objects whose presence keeps a namespace from being deleted, as (table, what to call them
# in the error), in containerd's order; snapshots come after them, named per snapshotter
# (`supervisor.metadata.namespaces`). Leases and ingests do not count, as in containerd.
NAMESPACE_CONTENTS: tuple[tuple[str, str], ...] = (
    ("images", "images"),
    ("blobs", "blobs"),
    ("containers", "containers"),
    ("networks", "networks"),  # ctrd's own: containerd has none
    ("volumes", "volumes"),  # ctrd's own, as networks
)

# What goes with a namespace when it is deleted, children first.
NAMESPACE_DISPOSABLE: tuple[str, ...] = ("lease_resources", "leases", "ingests")

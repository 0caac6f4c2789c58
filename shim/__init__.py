"""The shim: one light process per container (the process lands with the tasks issue).

Its pure cores so far: `protocol` (the wire format between daemon and shim) and `journal` (the
durable, numbered event log in the bundle). It must import nothing of the daemon, nor gRPC, and
only small parts of the standard library: it is multiplied by the number of containers.

The plan for the process (issue 5), so that the pieces fit:

- Memory: a shim started the ordinary way costs ~7 MB PSS; the target is half of containerd's
  2.5 MB. So ctrd starts one *zygote* per state dir (`python -m shim zygote`, its own session,
  surviving ctrd restarts), which imports everything a shim needs, runs `gc.freeze()` and
  forks one shim per container on request; copy-on-write keeps ~0.8 MB PSS per child. A shim
  outlives its zygote: if the zygote dies, ctrd starts another; running shims are unaffected.
- A shim: its own session, child subreaper, cwd = bundle; renames itself so `ps` shows
  `shim <namespace> <id> <daemon address>`; listens on `<state>/s/<sha256(ns/id)>` (unix socket
  paths are limited to 107 bytes) and writes that address and its pid into the bundle.
- It runs `runc create` (crun when the runtime options or config ask) and does runc's start,
  its delete of a stopped container and its kill of the init itself where they only touch files
  or send one signal (`runc`), opens the
  client's stdio FIFOs without blocking on an absent reader, copies pty output through the
  console socket, reaps every child, and journals each exit (128+signal for signals) with
  `journal.Journal.append` *before* it answers a wait or sends the event.
- Requests (protocol.Request.method): create, start, state, pids, kill, exec, resize_pty,
  close_io, pause, resume, update, stats, wait, delete, shutdown, `reopen_log` (the init's
  `ctrd-log://` log opened again by its path, for kubelet's rotation; FailedPrecondition
  "container is not running" unless it runs; a shim older than it answers Unimplemented), and
  `events` with `{"after": seq}`, which replays the journal past `seq` and then follows live
  events.
- The daemon side is `supervisor.runtime`: `bundle` (config.json + mounted rootfs) and
  `shimclient` (calls by id, events, Unavailable when the shim goes).
"""

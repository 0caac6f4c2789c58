"""Restart policies: containers that come back by themselves, kept by the daemon (issue #16).

The contract, for every client (ctrctl writes it; the real `ctr` can, with `--label` and
`ctr containers label`):

- `ctrd.io/restart` asks for a policy, with docker's values: `no` (the default), `always`,
  `unless-stopped`, `on-failure` or `on-failure:N` (give up after N restarts). Changing it (a
  Containers.Update, `ctrctl update --restart`) takes effect at the container's next exit.
- `ctrd.io/restart.manually-stopped` (any non-empty value) says the user stopped the
  container (docker's "manually stopped"): its next exit is not acted on, whatever the
  policy, and a pending restart is called off. `ctrctl stop`, `kill` (with SIGKILL or the stop
  signal) and `rm -f` set it before they signal; `ctrctl start` and `restart` remove it
  before they start. With ctr: `ctr c label ID ctrd.io/restart.manually-stopped=true` before
  `ctr t kill`, `ctr c label ID ctrd.io/restart.manually-stopped=` before `ctr t start`.
  A task killed by any other means (ctr, `kill(1)`, the OOM killer) counts as a crash.

What docker does, the daemon does (moby's restartmanager and daemon/monitor.go):

- When a container's task (its init) exits, `always` restarts it, `unless-stopped` too,
  `on-failure` only after a non-zero exit and while fewer than N restarts were made. The
  delay starts at 100 ms and doubles at each restart, up to a minute; a task that ran 10 s
  or more starts the series again at 100 ms. The count goes up by one at each restart and
  back to 0 when a user starts the container (a `/tasks/start` the daemon did not cause).
- The restart is the daemon's own Tasks.Create + Start (`launch`): the same spec, the rootfs
  from the container's snapshot, its networks prepared as for any create, its output to the
  log it had (`ctrd-log://`, as ctrctl's detached runs and restarts; none if it had no stdio),
  its terminal if it had one. The old task is deleted at the exit and the new one created
  during the back-off; only its start waits for the delay, so the process runs again 100 ms
  after the exit (docker's wait) plus a start, not plus a whole create.
- When the daemon starts (also after a host reboot: the state dir is gone, the root is not),
  the containers that were started before, whose task is stopped or gone, are started again
  if docker's daemon would: `always` always (even when stopped by the user, as docker
  does), `unless-stopped` unless stopped by the user, `on-failure` after a non-zero exit
  (255 when the exit is unknown) with retries left. Such a start is a fresh one (docker's
  `containerStart(reset=true)`): the count goes back to 0 and the manually-stopped label is
  removed. An exit that happened while the daemon was down is acted on then.

The state is durable in the `restarts` table (migration in `supervisor.metadata.schema`),
one row per container with a policy that was started: the count, the task's last start and
exit, when a pending restart starts it, and the stdio it had. A table, not labels: the daemon
writes it at every restart, and labels are the clients' to write (a client's whole-label
update would undo the daemon's). `ctrd.services.restarts.v1.Restarts/List` shows it.
"""

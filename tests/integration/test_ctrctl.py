"""ctrctl as a new user would try it: run, ps, logs, exec, stop, inspect, rm; exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from tests.conftest import Ctrd
from tests.integration.test_tasks import pull


def ctrctl(ctrd: Ctrd, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ctl", "--address", ctrd.address, *args],
        capture_output=True, text=True, timeout=60, input=input,
    )  # fmt: skip


def test_run_rm_prints_and_exits_with_the_containers_status(ctrd, busybox_image, short_tmp):
    ref = pull(ctrd, busybox_image)
    hello = ctrctl(ctrd, "run", "--rm", ref, "echo", "hello")
    assert (hello.returncode, hello.stdout) == (0, "hello\n"), hello.stderr
    assert ctrctl(ctrd, "run", "--rm", ref, "sh", "-c", "exit 3").returncode == 3
    (short_tmp / "shared").mkdir()
    (short_tmp / "shared" / "f").write_text("from-the-host\n")
    out = ctrctl(
        ctrd,
        "run",
        "--rm",
        "-e",
        "GREETING=hi",
        "-v",
        f"{short_tmp}/shared:/mnt:ro",
        "-w",
        "/mnt",
        ref,
        "sh",
        "-c",
        "echo $GREETING; pwd; cat f; touch g || echo ro",
    )
    assert out.stdout.splitlines() == ["hi", "/mnt", "from-the-host", "ro"], out.stderr
    piped = ctrctl(ctrd, "run", "--rm", "-i", ref, "cat", input="through stdin\n")
    assert piped.stdout == "through stdin\n", piped.stderr
    assert ctrd.ctr("containers", "ls", "-q").stdout.split() == []


def test_a_detached_container_from_start_to_removal(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    started = ctrctl(
        ctrd, "run", "-d", "--name", "web", ref, "sh", "-c", "echo started; sleep 1000"
    )
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == "web"
    listed = ctrctl(ctrd, "ps").stdout.splitlines()
    assert len(listed) == 2
    assert listed[1].split()[0] == "web"
    assert "Up " in listed[1]
    assert '"sh -c echo started;…"' in listed[1]  # docker's COMMAND cell, cut at 20
    assert ctrctl(ctrd, "logs", "web").stdout == "started\n"
    assert ctrctl(ctrd, "exec", "web", "echo", "hi").stdout == "hi\n"
    assert ctrctl(ctrd, "exec", "web", "sh", "-c", "exit 5").returncode == 5
    assert ctrctl(ctrd, "exec", "web", "no-such-command").returncode == 127
    assert "web" in ctrd.ctr("containers", "ls", "-q").stdout.split()  # ctr sees it too
    assert ctrctl(ctrd, "stop", "-t", "1", "web").returncode == 0
    assert ctrctl(ctrd, "ps", "-q").stdout.split() == []
    [row] = json.loads(ctrctl(ctrd, "ps", "-a", "--format", "json").stdout)
    assert (row["name"], row["state"], row["exitCode"]) == ("web", "exited", 137)
    assert row["status"].startswith("Exited (137) ")
    assert row["status"].endswith(" ago")
    inspected = ctrctl(ctrd, "inspect", "web")
    assert inspected.returncode == 0, inspected.stderr
    [info] = json.loads(inspected.stdout)
    assert info["id"] == "web"
    assert info["spec"]["process"]["args"] == ["sh", "-c", "echo started; sleep 1000"]
    assert info["state"]["exitCode"] == 137
    assert ctrctl(ctrd, "rm", "web").returncode == 0
    assert ctrctl(ctrd, "ps", "-a", "-q").stdout.split() == []
    assert ctrd.ctr("containers", "ls", "-q").stdout.split() == []


def test_ctr_containers_are_ctrctls_and_short_ids_work(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    ctrd.ctr("run", "--fifo-dir", ctrd.fifo_dir(), "-d", ref, "made-by-ctr", "sleep", "1000")
    assert "made-by-ctr" in ctrctl(ctrd, "ps").stdout
    made = ctrctl(ctrd, "run", "-d", ref, "sleep", "1000").stdout.strip()
    assert len(made) == 64
    assert made[:12] in ctrctl(ctrd, "ps", "-q").stdout.split()
    assert ctrctl(ctrd, "rm", "-f", made[:8]).returncode == 0
    assert ctrctl(ctrd, "rm", "-f", "made-by-ctr").returncode == 0
    assert ctrd.ctr("containers", "ls", "-q").stdout.split() == []


def test_errors_are_one_clear_line_and_exit_125(ctrd):
    missing = ctrctl(ctrd, "run", "--rm", "--pull", "never", "no-such-image")
    assert missing.returncode == 125
    assert missing.stderr.strip() == (
        'ctrctl: image "no-such-image" not found: pull or load it first'
    )
    unreachable = ctrctl(ctrd, "run", "--rm", "no-such-image")  # docker.io: no network here
    assert unreachable.returncode == 125
    assert unreachable.stderr.splitlines()[-1].startswith(
        "ctrctl: registry registry-1.docker.io cannot be reached"
    ), unreachable.stderr
    gone = ctrctl(ctrd, "rm", "nobody")
    assert (gone.returncode, gone.stderr.strip()) == (125, "ctrctl: No such container: nobody")


def test_run_pulls_a_missing_image_first_unless_told_never(ctrd, busybox_image):
    never = ctrctl(ctrd, "run", "--rm", "--pull", "never", busybox_image.ref, "true")
    assert never.returncode == 125
    assert "not found" in never.stderr
    ran = ctrctl(ctrd, "run", "--rm", busybox_image.ref, "echo", "hello")
    assert (ran.returncode, ran.stdout) == (0, "hello\n"), ran.stderr
    assert ran.stderr.startswith(f"Unable to find image '{busybox_image.ref}' locally\n")
    assert "Status: Downloaded newer image" in ran.stderr
    again = ctrctl(ctrd, "run", "--rm", busybox_image.ref, "true")
    assert (again.returncode, again.stderr) == (0, "")
    missing = ctrctl(ctrd, "run", "--rm", busybox_image.ref.replace("busybox", "nothing"), "true")
    assert missing.returncode == 125
    assert missing.stderr.splitlines()[-1].endswith("not found"), missing.stderr


def test_run_and_exec_on_a_terminal(ctrd, busybox_image):
    from tests.support.terminal import run_in_pty

    ref = pull(ctrd, busybox_image)
    client = [sys.executable, "-m", "ctl", "--address", ctrd.address]
    out, status = run_in_pty(
        [*client, "run", "--rm", "-it", ref, "sh"],
        typed=b"tty; sleep 1; stty size; echo typed-$((6*7)); exit 4\r",
    )
    text = out.decode(errors="replace")
    assert status == 4, text
    assert "/dev/pts/0" in text
    assert "30 100" in text  # the terminal's size, through ResizePty
    assert "typed-42" in text

    assert ctrctl(ctrd, "run", "-d", "--name", "t", ref, "sleep", "1000").returncode == 0
    out, status = run_in_pty(
        [*client, "exec", "-it", "t", "sh"],
        typed=b"tty; stty size; sleep 2; stty size; exit 5\r",
        resize_to=(40, 120),
        resize_after=1.0,
    )
    text = out.decode(errors="replace")
    assert status == 5, text
    assert "/dev/pts/" in text
    assert "30 100\r\n" in text, text
    assert text.index("30 100") < text.index("40 120")  # resized as it ran: ctrctl followed
    assert ctrctl(ctrd, "rm", "-f", "t").returncode == 0
    assert ctrd.ctr("containers", "ls", "-q").stdout.split() == []


def test_logs_with_times_and_wait_for_the_exit(ctrd, busybox_image):
    import datetime as dt
    import time

    ref = pull(ctrd, busybox_image)
    started = ctrctl(
        ctrd, "run", "-d", "--name", "w", ref, "sh", "-c", "echo one; sleep 2; echo two; exit 6"
    )
    assert started.returncode == 0, started.stderr
    waited = ctrctl(ctrd, "wait", "w")
    assert (waited.returncode, waited.stdout) == (0, "6\n"), waited.stderr
    stamped = ctrctl(ctrd, "logs", "-t", "w").stdout.splitlines()
    assert [line.split(" ", 1)[1] for line in stamped] == ["one", "two"]
    first, second = (dt.datetime.fromisoformat(line.split(" ")[0][:26] + "+00:00")
                     for line in stamped)  # fmt: skip
    assert 1.5 < (second - first).total_seconds() < 5
    middle = (first + (second - first) / 2).isoformat().replace("+00:00", "Z")
    assert ctrctl(ctrd, "logs", "--since", middle, "w").stdout == "two\n"
    assert ctrctl(ctrd, "logs", "--until", middle, "w").stdout == "one\n"
    assert ctrctl(ctrd, "logs", "--since", str(time.time() + 60), "w").stdout == ""
    assert ctrctl(ctrd, "rm", "w").returncode == 0
    nobody = ctrctl(ctrd, "wait", "w")
    assert (nobody.returncode, nobody.stderr.strip()) == (125, "ctrctl: No such container: w")


def test_a_command_that_cannot_run_exits_126_or_127_and_rm_leaves_nothing(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    missing = ctrctl(ctrd, "run", "--rm", ref, "no-such-command")
    assert missing.returncode == 127, missing.stderr
    assert 'exec: "no-such-command": executable file not found' in missing.stderr
    not_executable = ctrctl(ctrd, "run", "--rm", ref, "/etc/motd")
    assert not_executable.returncode == 126, not_executable.stderr
    assert ctrctl(ctrd, "ps", "-a", "-q").stdout.split() == []  # --rm removed both
    kept = ctrctl(ctrd, "run", "-d", "--name", "kept", ref, "no-such-command")
    assert kept.returncode == 127
    assert ctrctl(ctrd, "ps", "-a", "-q").stdout.split() == ["kept"]  # as docker: no --rm
    assert ctrctl(ctrd, "rm", "kept").returncode == 0


def test_names_start_exec_and_inspect_behave_as_dockers(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    assert ctrctl(ctrd, "run", "-d", "--name", "n1", ref, "sleep", "1000").returncode == 0
    taken = ctrctl(ctrd, "run", "-d", "--name", "n1", ref, "true")
    assert taken.returncode == 125
    assert 'the container name "n1" is already in use' in taken.stderr
    again = ctrctl(ctrd, "start", "n1")  # running already: nothing to do
    assert (again.returncode, again.stdout) == (0, "n1\n"), again.stderr
    assert ctrctl(ctrd, "pause", "n1").returncode == 0
    paused = ctrctl(ctrd, "exec", "n1", "true")
    assert (paused.returncode, paused.stderr.strip()) == (
        125, "ctrctl: container n1 is paused: unpause it first"
    )  # fmt: skip
    assert ctrctl(ctrd, "unpause", "n1").returncode == 0
    assert ctrctl(ctrd, "stop", "-t", "0", "n1").returncode == 0
    stopped = ctrctl(ctrd, "exec", "n1", "true")
    assert stopped.stderr.strip() == "ctrctl: container n1 is not running"
    [image] = json.loads(ctrctl(ctrd, "inspect", ref).stdout)  # not a container: an image
    assert image["name"] == ref
    assert image["target"]["digest"] == busybox_image.digest
    nothing = ctrctl(ctrd, "inspect", "nothing-here")
    assert (nothing.returncode, nothing.stderr.strip()) == (
        125, "ctrctl: No such object: nothing-here"
    )  # fmt: skip
    assert ctrctl(ctrd, "rm", "n1").returncode == 0
    keys = [line.split()[0] for line in ctrd.ctr("snapshots", "ls").stdout.splitlines()[1:]]
    assert "n1" not in keys  # its snapshot went with it


def test_ps_filters_newest_first_and_no_trunc(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    for name, command in (("f-ok", "true"), ("f-bad", "exit 3"), ("f-up", "sleep 1000")):
        ran = ctrctl(ctrd, "run", "-d", "--name", name, ref, "sh", "-c", command)
        assert ran.returncode == 0, ran.stderr
    for name in ("f-ok", "f-bad"):
        ctrctl(ctrd, "wait", name)

    def ids(*args: str) -> list[str]:
        listed = ctrctl(ctrd, "ps", "-q", *args)
        assert listed.returncode == 0, listed.stderr
        return listed.stdout.split()

    assert ids("-a") == ["f-up", "f-bad", "f-ok"]  # the newest first
    assert ids() == ["f-up"]
    assert ids("-f", "status=exited") == ["f-bad", "f-ok"]
    assert ids("-f", "exited=3") == ["f-bad"]
    assert ids("-a", "-f", "name=f-o", "-f", "name=f-u") == ["f-up", "f-ok"]  # either name
    assert ids("-f", "status=exited", "-f", "name=f-ok") == ["f-ok"]  # both keys
    assert ids("-a", "-f", f"ancestor={ref}") == ["f-up", "f-bad", "f-ok"]
    assert ids("-a", "-f", "label=ctrctl.name=f-up") == ["f-up"]
    assert ids("-l") == ["f-up"]
    assert ids("-n", "2") == ["f-up", "f-bad"]
    wide = ctrctl(ctrd, "ps", "--no-trunc").stdout
    assert '"sh -c sleep 1000"' in wide
    bad = ctrctl(ctrd, "ps", "-f", "colour=red")
    assert bad.returncode == 125
    assert 'invalid filter "colour=red"' in bad.stderr
    assert ctrctl(ctrd, "rm", "-f", "f-ok", "f-bad", "f-up").returncode == 0


def test_an_attached_container_keeps_its_log_too(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    ran = ctrctl(ctrd, "run", "--name", "att", ref, "sh", "-c", "echo out; echo err >&2; exit 2")
    assert (ran.returncode, ran.stdout, ran.stderr) == (2, "out\n", "err\n")
    logged = ctrctl(ctrd, "logs", "att")
    assert (logged.stdout, logged.stderr) == ("out\n", "err\n")
    assert ctrctl(ctrd, "rm", "att").returncode == 0

    big = ctrctl(ctrd, "run", "--rm", ref, "seq", "1", "200000")  # ~1.3 MB: the FIFO fills
    assert big.returncode == 0, big.stderr
    assert big.stdout.split() == [str(n) for n in range(1, 200001)]


def rpc_methods(log: str) -> list[str]:
    """The methods of the daemon's `rpc` log lines, in order: `Service/Method`."""
    lines = (json.loads(line) for line in log.splitlines() if line.startswith("{"))
    return [e["method"].rpartition(".")[2] for e in lines if e.get("event") == "rpc"]


def test_a_detached_run_makes_only_the_calls_it_needs(ctrd, busybox_image):
    """One lease for the unpack check and the snapshot, made while the image is read; the
    container's snapshot prepared at once on an image already unpacked; the mounts Prepare
    gave to Tasks.Create: 10 calls in 8 round trips."""
    ref = pull(ctrd, busybox_image)
    before = len(rpc_methods(ctrd.log()))
    ran = ctrctl(ctrd, "run", "-d", "--name", "lean", "--network", "none", ref, "sleep", "100")
    assert ran.returncode == 0, ran.stderr
    try:
        deadline = time.monotonic() + 10  # the daemon logs a call once it has answered
        while "Tasks/Start" not in (calls := rpc_methods(ctrd.log())[before:]):
            assert time.monotonic() < deadline, calls
            time.sleep(0.05)
        # --name taken? and the image: asked for at once, so answered in either order
        assert sorted(calls[:2]) == ["Containers/Get", "Images/Get"]
        # the lease, asked for while the manifest and the config are read
        assert sorted(calls[2:5]) == ["Content/Read", "Content/Read", "Leases/Create"]
        assert calls[5:] == [
            "Snapshots/Prepare",  # on the image's top snapshot, there: no Stat first
            "Containers/Create",
            "Leases/Delete",
            "Tasks/Create",
            "Tasks/Start",
        ]
    finally:
        ctrctl(ctrd, "rm", "-f", "lean")


def test_a_detached_run_imports_only_what_it_uses(ctrd, busybox_image):
    """No other command's module or parser, no generated servicers (the stubs come from the
    descriptors), no port parser without -p, no flag's module without its flag, no mount:
    each import is time every run pays."""
    ref = pull(ctrd, busybox_image)
    ran = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "ctl", "--address", ctrd.address,
         "run", "-d", "--name", "light", "--network", "none", ref, "sleep", "100"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    try:
        assert ran.returncode == 0, ran.stderr
        imported = {
            line.rpartition("|")[2].strip()
            for line in ran.stderr.splitlines()
            if line.startswith("import time:")
        }
        assert {"grpc", "ctl.client", "ctl.spec", "ctl.secopts"} <= imported
        assert not {m for m in imported if m.endswith("_pb2_grpc")}
        others = {"ctl.images", "ctl.stats", "ctl.system", "ctl.groups", "ctl.networks",
                  "ctl.completion", "ctl.push", "ctl.archive", "ctl.pull", "ctl.netview",
                  "ctl.table", "supervisor.network.ports", "supervisor.network.portspec",
                  "ctl.cp", "ctl.update",
                  "ctl.volumes", "ctl.events", "ctl.healthview", "ctl.load", "ctl.save",
                  "ctl.times"}  # fmt: skip
        # the flags' modules when their flags are not given (and the image asks for nothing)
        unasked = {"ctl.healthopts", "supervisor.health", "ctl.restartopts",
                   "supervisor.restart", "supervisor.restart.policy", "ipaddress"}  # fmt: skip
        # the image's users are read from its layers, unmounted; FIFOs only when attached
        unneeded = {"snapshotter.mount", "pathlib", "tempfile", "shutil", "urllib.parse"}
        assert not imported & others
        assert not imported & unasked
        assert not imported & unneeded
        # with -p: the parser alone, not the daemon's reservations (sockets), and no
        # `ipaddress` without a host address
        ran = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "ctl", "--address", ctrd.address,
             "run", "-d", "--name", "light-p", "--network", "none", "-p", "8080:80", ref,
             "sleep", "100"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert ran.returncode == 0, ran.stderr
        imported = {
            line.rpartition("|")[2].strip()
            for line in ran.stderr.splitlines()
            if line.startswith("import time:")
        }
        assert "supervisor.network.portspec" in imported
        assert not imported & {"supervisor.network.ports", "ipaddress"}
    finally:
        ctrctl(ctrd, "rm", "-f", "light", "light-p")


def test_a_run_unpacks_an_image_whose_snapshots_are_gone(ctrd, busybox2_image):
    """The container's snapshot is prepared on the image's top snapshot at once; when that one
    is gone (NotFound), the image is unpacked first, under the run's lease, which goes after.
    Its users are then read from its two layers."""
    ref = pull(ctrd, busybox2_image)

    def snapshots() -> dict[str, str]:
        header, *rows = ctrd.ctr("snapshots", "ls").stdout.splitlines()
        parent, kind = header.index("PARENT"), header.index("KIND")
        return {row[:parent].strip(): row[parent:kind].strip() for row in rows if row.strip()}

    unpacked = snapshots()
    assert len(unpacked) == 2
    while left := snapshots():  # children first
        parents = set(left.values())
        for key in (k for k in left if k not in parents):
            ctrd.ctr("snapshots", "rm", key)
    ran = ctrctl(ctrd, "run", "--rm", "--network", "none", "-u", "nobody", ref, "id", "-u")
    assert (ran.returncode, ran.stdout, ran.stderr) == (0, "65534\n", "")
    assert snapshots() == unpacked
    assert ctrd.ctr("leases", "ls", "-q").stdout.split() == []


def test_exec_user_is_found_in_the_running_container(ctrd, busybox_image):
    """`exec -u` by name or uid reads the container's /etc/passwd and /etc/group, as dockerd
    does: the entry's gid and groups, a group by name, words for a name that is not there."""
    ref = pull(ctrd, busybox_image)
    assert ctrctl(ctrd, "run", "-d", "--name", "u", ref, "sleep", "1000").returncode == 0
    wrote = ctrctl(ctrd, "exec", "u", "sh", "-c", "echo x:x:4242:4242::/:/bin/sh >> /etc/passwd")
    assert wrote.returncode == 0, wrote.stderr
    by_name = ctrctl(ctrd, "exec", "-u", "nobody", "u", "id")
    assert by_name.stdout == "uid=65534(nobody) gid=65534(nobody) groups=65534(nobody)\n"
    by_uid = ctrctl(ctrd, "exec", "-u", "1000", "u", "id")
    assert by_uid.stdout == "uid=1000(app) gid=1000(app) groups=1000(app)\n", by_uid.stderr
    added = ctrctl(ctrd, "exec", "-u", "x:app", "u", "id")  # an entry the container wrote
    assert added.stdout == "uid=4242(x) gid=1000(app) groups=1000(app)\n", added.stderr
    missing = ctrctl(ctrd, "exec", "-u", "nope", "u", "id")
    assert missing.returncode == 125
    assert "unable to find user nope: no matching entries in passwd file" in missing.stderr
    assert ctrctl(ctrd, "rm", "-f", "u").returncode == 0

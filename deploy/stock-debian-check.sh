#!/usr/bin/env bash
# The README's two commands on a stock Debian 12 (CI's proof; run as root on a Debian host).
#
# Builds a fresh bookworm root with debootstrap (minbase: Debian's python3 is not even there
# until the set-up installs it, and there is no other Python), clones this repository into it,
# and there, with a clean environment (no pyenv, no PYTHONDONTWRITEBYTECODE, no pip settings of
# the host), runs what a user would:
#   ./deploy/setup.sh && ctrd     then, from "another shell": ctrctl load / ctrctl run --rm
#   /opt/ctrd/bin/python -m pytest [PYTEST ARGS]     (this script's arguments go to pytest)
#
# The new root runs in a mount namespace of its own whose / it is (pivot_root), not in a plain
# chroot: in a chroot, `runc exec` (docker exec, ctr tasks exec) enters a container's mount
# namespace at that namespace's / - the host's - instead of the container's root. Its /proc,
# /sys (with the cgroup v1 and v2 hierarchies), /dev, /run and the tests' own mounts exist only
# in that namespace (private: nothing propagates to the host), so they go with its last
# process. At the end, on failure too, the processes of that namespace (and their children: a
# container has a namespace of its own) are stopped by pid, then the directory is removed.
# The new root shares the host's network (the mirror, PyPI, 127.0.0.1 for the tests'
# registries) but has its own /run and /var/lib: the host's /run/containerd and
# /var/lib/containerd are never seen, and the set-up's policy-rc.d keeps package services off.
#
# CTRD_DEBIAN_MIRROR overrides the mirror (default: the one this machine's apt uses). The .debs
# debootstrap fetches are kept in /var/cache/ctrd-ci/debootstrap for later runs; nothing else
# is cached, so the set-up inside downloads what a new machine would.
set -euo pipefail
root_path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# Each stage is a new bash: the seconds of the stages before it come in the environment.
earlier=${STOCK_DEBIAN_SECONDS:-0}
say() { printf '[stock-debian %4ds] %s\n' $((earlier + SECONDS)) "$*"; }

# --- Stage 3, inside the new root: what the README's user does. ---
inside() {
    cd /root/ctrd
    if command -v python3 || ls /usr/bin/python* /usr/local/bin/python* 2>/dev/null; then
        echo "a Python before the set-up: not a stock minbase" >&2
        return 1
    fi
    say "./deploy/setup.sh"
    ./deploy/setup.sh
    # After it: Debian's python3 is the only one, and ctrd, ctrctl are the venv's.
    [[ $(command -v python3) == /usr/bin/python3 ]]
    [[ $(command -v ctrd) == /usr/local/bin/ctrd && $(command -v ctrctl) == /usr/local/bin/ctrctl ]]
    [[ $(readlink -f /usr/local/bin/ctrd) == /opt/ctrd/bin/ctrd ]]
    say "set-up done; ctrd in the background, the quick start from another shell"
    local log=/var/log/ctrd-quick-start.log
    ctrd >"$log" 2>&1 &
    local ctrd_pid=$!
    for _ in $(seq 300); do
        [[ -S /run/ctrd/ctrd.sock ]] && ctrctl version >/dev/null 2>&1 && break
        kill -0 "$ctrd_pid" 2>/dev/null || { cat "$log"; return 1; }
        sleep 0.1
    done
    local loaded hello
    loaded=$(ctrctl load -i /var/lib/ctrd/images/busybox.tar) || { cat "$log"; return 1; }
    echo "$loaded"
    hello=$(ctrctl run --rm busybox echo hello) || { cat "$log"; return 1; }
    echo "$hello"
    [[ $loaded == "Loaded image: busybox:latest" && $hello == hello ]]
    # The run joined the default `bridge` network: its bridge and ctrd's nftables table are in
    # the host's network namespace (this root shares it), so they are removed, not left behind.
    ctrctl network rm bridge || { cat "$log"; return 1; }
    # ctrd's shims and their zygote outlive it by design: stop the daemon, then its zygote.
    kill -TERM "$ctrd_pid"
    wait "$ctrd_pid" || { cat "$log"; return 1; }
    local zygote
    zygote=$(cat /run/ctrd/zygote.pid 2>/dev/null || true)
    if [[ -n $zygote ]]; then kill -TERM "$zygote" 2>/dev/null || true; fi
    say "quick start done, ctrd stopped; /opt/ctrd/bin/python -m pytest $*"
    /opt/ctrd/bin/python -m pytest "$@"
    say "tests done"
}

# --- Stage 2, in a new mount namespace, still on the host's binaries: make the new root its /.
enter() {
    local root=$1
    shift
    mount --bind "$root" "$root" # pivot_root needs the new root to be a mount point
    mount -t proc proc "$root/proc"
    mount --rbind /sys "$root/sys"
    mount --rbind /dev "$root/dev"
    # A fresh /run, as a booted system has. /tmp stays the new root's own (empty) directory, on
    # disk as the host's /tmp is: the tests' overlay mounts put their upper dirs there.
    mount -t tmpfs -o mode=755,nosuid,nodev tmpfs "$root/run"
    cd "$root"
    mkdir .host
    pivot_root . .host
    cd /
    umount -l /.host
    rmdir /.host
    exec /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb PATH="$root_path" \
        STOCK_DEBIAN_SECONDS=$((earlier + SECONDS)) /bin/bash /root/stock-debian-check.sh --inside "$@"
}

case ${1:-} in
--inside) shift; inside "$@"; exit 0 ;; # (not `inside && exit`: errexit is off in an && list)
--enter) shift; enter "$@" ;;
esac

# --- Stage 1, on the host: the new root, then stage 2 in a mount namespace of its own. ---
repo=$(cd "$(dirname "$0")/.." && pwd)
mirror=${CTRD_DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${mirror%/debian}/debian-security
cache=/var/cache/ctrd-ci/debootstrap

if ! command -v debootstrap >/dev/null; then
    say "installing debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap
fi

work=$(mktemp -d /var/tmp/ctrd-stock-debian.XXXXXX)
root=$work/root
mkdir "$root"
namespace=
inner=

# The pids of the namespace's processes, and of their descendants (a container has a mount
# namespace of its own but a shim for an ancestor).
namespace_pids() {
    [[ -n $namespace ]] || return 0
    local pid seeds=()
    for pid in /proc/[0-9]*; do
        [[ $(readlink "$pid/ns/mnt" 2>/dev/null) == "$namespace" ]] && seeds+=("${pid#/proc/}")
    done
    ((${#seeds[@]})) || return 0
    ps -e -o pid=,ppid= | awk -v seeds="${seeds[*]}" '
        BEGIN { n = split(seeds, s, " "); for (i = 1; i <= n; i++) ours[s[i]] = 1 }
        { parent[$1] = $2 }
        END {
            do { grew = 0
                 for (p in parent) if (!(p in ours) && (parent[p] in ours)) { ours[p] = 1; grew = 1 }
            } while (grew)
            for (p in ours) print p
        }'
}

cleanup() {
    local status=$? pid left
    set +e
    trap - EXIT INT TERM
    if [[ -n $inner ]] && kill -0 "$inner" 2>/dev/null; then kill -TERM "$inner"; fi
    left=$(namespace_pids)
    if [[ -n $left ]]; then
        say "stopping what still runs in the new root: ${left//$'\n'/ }"
        # Their cgroups (a killed container's are not removed by its runtime), but never this
        # script's own: rmdir takes only an empty cgroup, in every hierarchy where it is one.
        local cgroups
        cgroups=$(for pid in $left; do cut -d: -f3- "/proc/$pid/cgroup" 2>/dev/null; done |
            sort -u | grep -vxF -f <(cut -d: -f3- /proc/self/cgroup) | grep -vx /)
        for pid in $left; do kill -KILL "$pid" 2>/dev/null; done
        for _ in $(seq 100); do [[ -z $(namespace_pids) ]] && break; sleep 0.1; done
        local path
        for path in $cgroups; do
            rmdir /sys/fs/cgroup/*"$path" /sys/fs/cgroup"$path" 2>/dev/null
        done
    fi
    if [[ -n $(namespace_pids) ]]; then
        say "processes of the new root would not stop; $work is left in place"
        status=1
    else
        # The namespace's mounts went with its last process: none of them is on the host's
        # side, so this removes only the new root's own files.
        rm -rf --one-file-system "$work"
    fi
    say "done (status $status)"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "debootstrap --variant=minbase bookworm from $mirror"
mkdir -p "$cache"
debootstrap --variant=minbase --cache-dir="$cache" bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 ||
    { tail -n 30 "$work/debootstrap.log"; exit 1; }
# As the debian:bookworm image has it: the release, its updates and security. An installed
# system also has /etc/hosts (debootstrap leaves it to the installer).
cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security bookworm-security main
EOF
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
cp /etc/resolv.conf "$root/etc/resolv.conf"
# The site's own certificate authorities, where this machine has any (a TLS-inspecting proxy's):
# any Debian machine on this network needs them to reach PyPI, and they are added the Debian way,
# for update-ca-certificates to take in when the set-up installs ca-certificates.
if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
fi
# The committed tree, as a clone of this repository (what the README's user has), and this
# script for stage 3.
git clone --quiet --no-hardlinks "$repo" "$root/root/ctrd"
cp "$0" "$root/root/stock-debian-check.sh"
say "base system ready"

unshare --mount --propagation private -- /usr/bin/env STOCK_DEBIAN_SECONDS=$SECONDS \
    bash "$0" --enter "$root" "$@" &
inner=$!
own=$(readlink /proc/self/ns/mnt)
for _ in $(seq 100); do
    namespace=$(readlink "/proc/$inner/ns/mnt" 2>/dev/null || true)
    [[ -n $namespace && $namespace != "$own" ]] && break
    namespace=
    sleep 0.05
done
set +e
wait "$inner"
status=$?
set -e
inner=
exit "$status"

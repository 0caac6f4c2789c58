#!/usr/bin/env bash
# Install everything ctrd and its tests need on a Debian 12 machine, as root:
# the OCI runtimes, containerd's ctr client (the compatibility test), a registry for the tests,
# busybox for test images, containerd's API protos (the wire-compatibility test), and ctrd
# itself with its dev extra, editable from this checkout, in a virtual environment of its own
# (/opt/ctrd) with `ctrd` and `ctrctl` linked into /usr/local/bin.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
    python3 python3-venv                     # Debian's Python: ctrd's venv is made from it (below)
    ca-certificates                          # pip in the venv reaches PyPI over HTTPS (Debian's CA store)
    runc crun                                # OCI runtimes
    containerd                               # for the real `ctr` client only; never started
    docker-registry                          # a real registry on 127.0.0.1 for the tests
    busybox-static                           # the tests build their images from it
    docker.io                                # dockerd + docker CLI on ctrd (never started as a service)
    procps                                   # ps, which dockerd runs for `docker top`
    tini                                     # ctrctl run --init: /usr/bin/tini-static as PID 1
    libnftables1                             # nftables' library: ctrd writes its own table in-process
    golang-github-containerd-containerd-dev  # containerd's protos, compared with ours
    gcc libc6-dev binutils skopeo curl       # the CRI tests build critest's images (../shared/tools/cri)
    containernetworking-plugins              # CNI plugins (bridge, host-local, portmap) for CRI pods
    git
)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # No package may start a service (docker.io's init script would start a dockerd and its
    # own containerd): a policy-rc.d that denies every start, ours only while we install.
    policy=/usr/sbin/policy-rc.d
    made_policy=
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=1
    fi
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
    if [[ -n $made_policy ]]; then rm -f "$policy"; fi
fi
# Installing the containerd package must not leave a containerd running (it would own
# /run/containerd, which ctrd never touches); on machines with systemd, keep it off, and
# docker's units too (the tests start their own dockerd on ctrd).
if command -v systemctl >/dev/null; then
    for unit in containerd docker.socket docker; do
        if systemctl is-enabled "$unit" >/dev/null 2>&1; then
            systemctl disable --now "$unit" >/dev/null 2>&1 || true
        fi
    done
fi

# ctrd runs from a virtual environment of its own, made from Debian's interpreter by its full
# path: Debian's python3 refuses `pip install` outside a venv (PEP 668,
# externally-managed-environment), and the python3 first on the PATH may be another one (pyenv's,
# a user's), which can be upgraded or removed under the venv, or not be there for systemd at all.
# /usr/bin/python3 stays as long as the python3 package does. A venv made from another Python
# (or whose Python went away) is made again.
venv=/opt/ctrd
python=$venv/bin/python
if ! grep -qx 'home = /usr/bin' "$venv/pyvenv.cfg" 2>/dev/null || ! "$python" -c '' 2>/dev/null; then
    /usr/bin/python3 -m venv --clear "$venv"
fi
# editable_mode=compat: a plain path entry in a .pth file, where the default installs an import
# hook that every Python start (ctrctl's too) pays ~12 ms to load.
"$python" -m pip install --quiet --disable-pip-version-check -e '.[dev]' \
    --config-settings editable_mode=compat
# On the PATH (before /usr/bin in Debian's default PATH): the venv's entry points, whose #! line
# names the venv's interpreter, which the daemon then uses for its shims (sys.executable).
ln -sfn "$venv/bin/ctrd" /usr/local/bin/ctrd
ln -sfn "$venv/bin/ctrctl" /usr/local/bin/ctrctl
# Byte-compile our packages now: the daemon starts faster (it matters on a restart, when every
# client waits), and so do the shims' zygote and ctrctl, even where PYTHONDONTWRITEBYTECODE
# keeps Python from writing the caches itself.
"$python" -m compileall -q supervisor shim snapshotter ctl >/dev/null
# The quick start's image (README): busybox from busybox-static, built offline, for
# `ctrctl load -i /var/lib/ctrd/images/busybox.tar`.
"$python" deploy/busybox-image.py /var/lib/ctrd/images/busybox.tar >/dev/null
# Kernel same-page merging: the shims offer the pages they copy from their zygote to KSM,
# which folds the identical copies of every shim into one (~2.2 MB saved per container; see
# shim/memory.py). KSM merges only memory that opted in. At the kernel's default rate (100 pages
# per 20 ms, ~0.6% of one core) the shims of 100 new containers are merged within a few
# minutes; `echo 1000 > /sys/kernel/mm/ksm/pages_to_scan` does it in seconds for ~6-8% of a
# core. Kept across reboots by a tmpfiles.d entry.
if [[ -w /sys/kernel/mm/ksm/run ]]; then
    echo 1 >/sys/kernel/mm/ksm/run
    if [[ -d /etc/tmpfiles.d ]]; then
        printf '%s\n' '# ctrd: merge the identical pages of its shims (shim/memory.py)' \
            'w /sys/kernel/mm/ksm/run - - - - 1' >/etc/tmpfiles.d/ctrd-ksm.conf
    fi
fi
# An earlier set-up installed ctrd into whatever python3 came first on the PATH; where that
# Python's own `ctrd` or `ctrctl` (a pyenv shim, say) still comes before /usr/local/bin, say so.
for cmd in ctrd ctrctl; do
    found=$(command -v "$cmd" || true)
    if [[ $found != "/usr/local/bin/$cmd" ]]; then
        echo "setup.sh: note: \`$cmd\` on your PATH is $found, not /usr/local/bin/$cmd (ctrd's venv);" \
            "uninstall ctrd from that Python or put /usr/local/bin first" >&2
    fi
done

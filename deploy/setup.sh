#!/usr/bin/env bash
# Install everything ctrd and its tests need on a Debian 12 machine, as root:
# the OCI runtimes, containerd's ctr client (the compatibility test), a registry for the tests,
# busybox for test images, containerd's API protos (the wire-compatibility test), and ctrd
# itself with its dev extra, editable from this checkout.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
    runc crun                                # OCI runtimes
    containerd                               # for the real `ctr` client only; never started
    docker-registry                          # a real registry on 127.0.0.1 for the tests
    busybox-static                           # the tests build their images from it
    golang-github-containerd-containerd-dev  # containerd's protos, compared with ours
    git
)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# Installing the containerd package must not leave a containerd running (it would own
# /run/containerd, which ctrd never touches); on machines with systemd, keep it off.
if command -v systemctl >/dev/null && systemctl is-enabled containerd >/dev/null 2>&1; then
    systemctl disable --now containerd >/dev/null 2>&1 || true
fi

# editable_mode=compat: a plain path entry in a .pth file, where the default installs an import
# hook that every Python start (ctrctl's too) pays ~12 ms to load.
python3 -m pip install --quiet --disable-pip-version-check -e '.[dev]' \
    --config-settings editable_mode=compat
# Byte-compile our packages now: the daemon starts faster (it matters on a restart, when every
# client waits), and so do the shims' zygote and ctrctl, even where PYTHONDONTWRITEBYTECODE
# keeps Python from writing the caches itself.
python3 -m compileall -q supervisor shim snapshotter ctl >/dev/null

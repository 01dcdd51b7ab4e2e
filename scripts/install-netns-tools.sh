#!/usr/bin/env bash
# Install what the network-namespace partition tests need (tests/test_netns_partitions.py):
# `ip` (iproute2) and `iptables`. Idempotent: installs only what is missing, and only
# when running as root with apt-get available. It never fails the build: when it cannot
# install something it says why and exits 0, and those tests then skip with a reason.
set -u

say() { echo "install-netns-tools: $*"; }
# Non-login root shells may lack the sbin directories, where both tools live.
PATH="$PATH:/usr/sbin:/sbin"

missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v iptables >/dev/null 2>&1 || missing+=(iptables)

if [ ${#missing[@]} -eq 0 ]; then
    say "ip and iptables already present; nothing to do"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    say "missing ${missing[*]} but not running as root; not installing (netns tests will skip)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    say "missing ${missing[*]} and apt-get is unavailable; not installing (netns tests will skip)"
    exit 0
fi

say "installing ${missing[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive
apt=(apt-get -o DPkg::Lock::Timeout=120)
if command -v timeout >/dev/null 2>&1; then
    apt=(timeout 600 "${apt[@]}")  # never hang the build
fi
if ! "${apt[@]}" update -qq >/dev/null 2>&1; then
    say "apt-get update failed; trying to install from the existing package lists"
fi
if "${apt[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
    say "installed ${missing[*]}"
else
    say "apt-get install ${missing[*]} failed (netns tests will skip)"
fi
exit 0

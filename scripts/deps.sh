#!/usr/bin/env bash
# Installs the Debian 12 packages sluice needs to build, test and run locally.
# Does nothing (and runs no `apt-get update`) when all of them are installed.
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config
  libh2o-evloop-dev librabbitmq-dev libpq-dev libcurl4-openssl-dev libjansson-dev
  check libwslay-dev libssl-dev zlib1g-dev uuid-dev libjose-dev
  rabbitmq-server postgresql
  patroni etcd-server haproxy
  wrk curl procps iproute2
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  [[ $status == "install ok installed" ]] || missing+=("$pkg")
done

if ((${#missing[@]} == 0)); then
  echo "deps: all ${#PACKAGES[@]} packages installed"
  exit 0
fi

echo "deps: installing ${missing[*]}"
SUDO=()
if ((EUID != 0)); then
  command -v sudo >/dev/null || { echo "deps: need root (or sudo) to install packages" >&2; exit 1; }
  SUDO=(sudo)
fi

# Keep the packages' maintainer scripts from starting the system-wide
# RabbitMQ/PostgreSQL/etcd/Patroni/haproxy services (default ports 5672/5432/2379/8008/...): we
# run our own instances with scripts/servers.sh and scripts/cluster.sh. Only when no policy-rc.d exists already.
POLICY=/usr/sbin/policy-rc.d
added_policy=0
remove_policy() {
  if ((added_policy)); then "${SUDO[@]}" rm -f "$POLICY"; fi
}
trap remove_policy EXIT
if [[ ! -e $POLICY ]]; then
  printf '#!/bin/sh\n# added by sluice scripts/deps.sh during apt-get install\nexit 101\n' |
    "${SUDO[@]}" tee "$POLICY" >/dev/null
  "${SUDO[@]}" chmod 755 "$POLICY"
  added_policy=1
fi

export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "deps: done"

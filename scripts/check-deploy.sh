#!/usr/bin/env bash
# make check-deploy: the deployment files pass their own checkers.
# Usage: check-deploy.sh NETCTL_BINARY
set -euo pipefail
cd "$(dirname "$0")/.."
binary=$1

ruby -c Vagrantfile
shellcheck deploy/install.sh scripts/*.sh .ci/run scripts/vm/build-image.sh scripts/vm/run-e2e.sh
shellcheck -s sh scripts/vm/init

# systemd-analyze wants each ExecStart binary to exist: verify copies of the
# units that point at the binary under test.
units=$(mktemp -d)
trap 'rm -rf "$units"' EXIT
for unit in deploy/systemd/*.service; do
  sed "s|/usr/local/bin/netctl|$binary|g" "$unit" > "$units/$(basename "$unit")"
done
systemd-analyze verify "$units"/*.service
echo "check-deploy: Vagrantfile, scripts and systemd units pass"

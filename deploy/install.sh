#!/usr/bin/env bash
# Installs netctl on a Debian or Ubuntu host and starts it under systemd.
#
#   install.sh --role manager --advertise-addr 192.168.10.6
#   install.sh --role worker  --advertise-addr 192.168.10.7 \
#              --manager https://192.168.10.6:4243 --join-token NETCTL-JOIN-1-...
#
# The manager host also runs an agent (it is a node like the others). The
# binary is built from this checkout unless --binary gives one. --root DIR
# installs under DIR instead of / and --no-start skips apt and systemd (for
# tests and image builds).
set -euo pipefail
# Every file this script writes is private from its first byte (token files).
umask 077

role="" advertise="" manager="" token="" binary="" root="" start=1 token_file=""
usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --role) role=$2; shift 2 ;;
    --advertise-addr) advertise=$2; shift 2 ;;
    --manager) manager=$2; shift 2 ;;
    --join-token) token=$2; shift 2 ;;
    --join-token-file) token_file=$2; shift 2 ;;
    --binary) binary=$2; shift 2 ;;
    --root) root=$2; shift 2 ;;
    --no-start) start=0; shift ;;
    -h|--help) usage ;;
    *) echo "install.sh: unknown option $1" >&2; usage ;;
  esac
done
case "$role" in
  manager) manager=${manager:-http://$advertise:4243} ;;
  worker) ;;
  *) echo "install.sh: --role must be manager or worker" >&2; exit 2 ;;
esac
[ -n "$advertise" ] || { echo "install.sh: --advertise-addr is required" >&2; exit 2; }
if [ "$role" = worker ] && [ -z "$manager" ]; then
  echo "install.sh: a worker needs --manager" >&2; exit 2
fi
here=$(cd "$(dirname "$0")/.." && pwd)

if [ "$start" = 1 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq iproute2 iptables iputils-ping ca-certificates curl build-essential >/dev/null
fi

if [ -z "$binary" ]; then
  if ! command -v cargo >/dev/null; then
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal >/dev/null
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
  fi
  # Build outside the (possibly shared, slow) checkout.
  export CARGO_TARGET_DIR=/var/cache/netctl-build
  (cd "$here" && cargo build --release --bin netctl)
  binary="$CARGO_TARGET_DIR/release/netctl"
fi

install -D -m 0755 "$binary" "$root/usr/local/bin/netctl"
install -D -m 0644 "$here/deploy/systemd/netctl-agent.service" "$root/etc/systemd/system/netctl-agent.service"
install -d -m 0700 "$root/etc/netctl"
if [ "$role" = manager ]; then
  install -D -m 0644 "$here/deploy/systemd/netctl-manager.service" "$root/etc/systemd/system/netctl-manager.service"
  printf 'NETCTL_LISTEN=0.0.0.0:4243\n' > "$root/etc/netctl/manager.env"
  if [ "$start" = 1 ]; then
    systemctl daemon-reload
    systemctl enable --now netctl-manager.service
  fi
  # The manager writes its join token at first start.
  token_path="$root/var/lib/netctl/manager/join-token"
  if [ "$start" = 1 ]; then
    for _ in $(seq 100); do [ -s "$token_path" ] && break; sleep 0.2; done
  fi
  [ -s "$token_path" ] && token=$(cat "$token_path")
  if [ -n "$token_file" ] && [ -n "$token" ]; then
    printf '%s\n' "$token" > "$token_file"
  fi
fi
if [ -z "$token" ] && [ -n "$token_file" ]; then
  for _ in $(seq 600); do [ -s "$token_file" ] && break; sleep 1; done
  token=$(cat "$token_file")
fi
printf '%s\n' "$token" > "$root/etc/netctl/join-token"
cat > "$root/etc/netctl/agent.env" <<ENV
NETCTL_MANAGER=$manager
NETCTL_ADVERTISE_ADDR=$advertise
ENV
if [ "$start" = 1 ]; then
  systemctl daemon-reload
  systemctl enable --now netctl-agent.service
  echo "netctl $role installed on $advertise; try: netctl node ls"
else
  echo "netctl $role installed under ${root:-/} (not started)"
fi

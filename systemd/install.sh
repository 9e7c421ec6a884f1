#!/usr/bin/env bash
# Install the sidecar as a systemd service. Run as root from a checkout:
#   sudo ./systemd/install.sh [TRADING_GROUP]
# TRADING_GROUP (default: trading) is the group of the processes that emit events;
# they, and nobody else, may write to the ingest socket.
set -euo pipefail
group="${1:-trading}"
here="$(cd "$(dirname "$0")/.." && pwd)"

getent group "$group" >/dev/null || groupadd --system "$group"
id trading-sidecar >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin \
    --gid "$group" trading-sidecar

python3 -m venv /opt/trading-sidecar/venv
/opt/trading-sidecar/venv/bin/pip install -q "$here[sidecar]"

install -d -m 0755 /etc/trading-sidecar
[ -f /etc/trading-sidecar/sidecar.toml ] || install -m 0644 "$here/systemd/sidecar.toml" /etc/trading-sidecar/
# Credentials: root-only files; systemd hands copies to the service alone.
install -d -m 0700 /etc/trading-sidecar/credentials
for name in notion-token naver-client-id naver-client-secret aws-credentials; do
    # An empty file means "not configured": that lane stays paused and says so.
    [ -f "/etc/trading-sidecar/credentials/$name" ] || install -m 0600 /dev/null "/etc/trading-sidecar/credentials/$name"
done

sed "s/^Group=trading$/Group=$group/" "$here/systemd/trading-sidecar.service" > /etc/systemd/system/trading-sidecar.service
systemd-analyze verify /etc/systemd/system/trading-sidecar.service
systemctl daemon-reload
systemctl enable trading-sidecar
# An upgrade: the running sidecar still runs the old code; restart it (SIGTERM
# drains within TimeoutStopSec; the journal and the rings in /run/trading-sidecar
# are kept and read by the new one). A first install: start it.
if systemctl is-active --quiet trading-sidecar; then
    systemctl restart trading-sidecar
else
    systemctl start trading-sidecar
fi
systemctl --no-pager status trading-sidecar || true
echo "Put the Notion token in /etc/trading-sidecar/credentials/notion-token, then: systemctl restart trading-sidecar"
echo "(systemd copies credentials when the service starts: a reload does not see a changed file)"

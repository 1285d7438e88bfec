#!/usr/bin/env bash
# Installs the real services Tickfold's end-to-end tests and its live demo
# talk to, idempotently (each step checks first):
#   tansu 0.6.0          Kafka-protocol broker (crates.io; the default build has
#                        no storage engine: dynostore gives memory://, libsql a
#                        durable SQLite file). A cold build takes ~13 minutes.
#   influxdb (Debian)    InfluxDB 1.x: the v1 write and InfluxQL query APIs
#   victoria-metrics     accepts InfluxDB's /api/v2/write: the v2 write path
#   prometheus (Debian)  scrapes the host's /metrics
#   docker-compose       (Debian, 1.29) validates deploy/docker-compose.yml
#                        (`docker-compose config`); there is no Docker engine
#                        here, and none is needed for that
# Nothing is started here: tests start their own instances on loopback, on
# free ports, and stop them afterwards.
set -euo pipefail

TANSU_VERSION=0.6.0
say() { printf 'tickfold: %s\n' "$*"; }

missing=()
for pkg in influxdb victoria-metrics prometheus docker-compose; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  say "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  # The packages' own services are not wanted (tests run their own), and
  # may not start in a container anyway: keep postinst from starting them.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  rm -f /usr/sbin/policy-rc.d
fi

if ! tansu --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
  say "installing tansu $TANSU_VERSION (a cold build takes ~13 minutes on 2 cores)"
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql
fi
version() { dpkg-query -W -f='${Version}' "$1"; }
say "services ready: $(tansu --version 2>&1 | head -1), influxdb $(version influxdb), victoria-metrics $(version victoria-metrics), prometheus $(version prometheus)"

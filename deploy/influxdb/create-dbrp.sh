#!/bin/bash
# Runs once, when the influxdb:2 image sets itself up: maps database
# `tickfold`, retention policy `autogen` to the bucket, so InfluxQL (the
# dashboards' language) reads it.
set -euo pipefail
bucket_id=$(influx bucket list --org "$DOCKER_INFLUXDB_INIT_ORG" --name "$DOCKER_INFLUXDB_INIT_BUCKET" --hide-headers | cut -f1)
influx v1 dbrp create --org "$DOCKER_INFLUXDB_INIT_ORG" --db tickfold --rp autogen --default --bucket-id "$bucket_id"

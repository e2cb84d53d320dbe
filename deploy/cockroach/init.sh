#!/usr/bin/env bash
# One-shot job of docker-compose.yaml (cockroach-init): initialises the three-node CockroachDB
# cluster, then creates the database, each step retried a bounded number of times, and exits
# non-zero when a step never succeeds, so that the services that wait for this job never start
# against a cluster without the database. Safe to run again: a cluster that is already
# initialised and a database that already exists count as success.
#
# Optional: CRDB_LICENSE_KEY (and CRDB_ORGANIZATION) set the cluster's licence key, which
# CockroachDB releases from 24.3 on need for a cluster of more than one node (docs/architecture.md).
set -uo pipefail

cockroach=/cockroach/cockroach
nodes=(cockroach1 cockroach2 cockroach3)
attempts=${CRDB_INIT_ATTEMPTS:-60}

# Runs "$@" against the nodes in turn until it succeeds or the attempts are used up.
retry() {
  local what=$1 i out
  shift
  for ((i = 0; i < attempts; i++)); do
    local host=${nodes[i % ${#nodes[@]}]}:26257
    if out=$("$@" --host="$host" 2>&1); then
      printf 'cockroach-init: %s: done (%s)\n' "$what" "$host"
      return 0
    fi
    if [[ $what == init && $out == *"already been initialized"* ]]; then
      printf 'cockroach-init: init: the cluster was already initialised\n'
      return 0
    fi
    printf 'cockroach-init: %s on %s, attempt %d/%d: %s\n' "$what" "$host" $((i + 1)) "$attempts" \
      "$(tr '\n' ' ' <<<"$out")" >&2
    sleep 2
  done
  printf 'cockroach-init: %s failed %d times, giving up\n' "$what" "$attempts" >&2
  return 1
}

sql_quote() { printf "'%s'" "${1//\'/\'\'}"; }

retry init "$cockroach" init --insecure || exit 1
retry "create database" "$cockroach" sql --insecure -e "CREATE DATABASE IF NOT EXISTS sluice" || exit 1
if [[ -n ${CRDB_LICENSE_KEY:-} ]]; then
  retry "set licence" "$cockroach" sql --insecure -e \
    "SET CLUSTER SETTING cluster.organization = $(sql_quote "${CRDB_ORGANIZATION:-sluice}"); SET CLUSTER SETTING enterprise.license = $(sql_quote "$CRDB_LICENSE_KEY")" || exit 1
fi
exit 0

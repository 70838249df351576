#!/bin/sh
# Entrypoint of the TimescaleDB stand-in (timescaledb.Dockerfile): the official postgres image's
# first-start behaviour for the variables the stack sets, then postgres as PID 1 (user postgres).
set -eu
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
if [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA" /run/postgresql
  chown -R postgres:postgres "$PGDATA" /run/postgresql
  chmod 700 "$PGDATA"
  # Read the secret as root (it may not be readable by postgres), then drop privileges.
  if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
    POSTGRES_PASSWORD="$(cat "$POSTGRES_PASSWORD_FILE")"
    export POSTGRES_PASSWORD
    unset POSTGRES_PASSWORD_FILE
  fi
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "timescaledb stand-in: POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE must be set" >&2
    exit 1
  fi
  pwfile="$(mktemp)"
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
  initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 \
    --encoding=UTF8 --locale=C.UTF-8 -D "$PGDATA" >/dev/null
  rm -f "$pwfile"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  cat >> "$PGDATA/postgresql.conf" <<CONF
listen_addresses = '*'
shared_preload_libraries = 'timescaledb'
timescaledb.telemetry_level = ${TIMESCALEDB_TELEMETRY:-off}
CONF
  pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
  if [ "$POSTGRES_DB" != postgres ]; then
    psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d postgres -q -c "CREATE DATABASE \"$POSTGRES_DB\""
  fi
  psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" -q -c "CREATE EXTENSION IF NOT EXISTS timescaledb"
  pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  echo "timescaledb stand-in: database $POSTGRES_DB initialised"
fi
unset POSTGRES_PASSWORD
exec "$@"

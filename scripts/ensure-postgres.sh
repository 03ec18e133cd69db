#!/usr/bin/env bash
# Make sure the PostgreSQL the tests use answers on 127.0.0.1:5432 with trust auth and a `test`
# database. Order: already running -> start the machine's cluster -> install PostgreSQL from
# Debian's packages and start a throw-away trust-auth cluster. Idempotent; a no-op when it is up.
set -euo pipefail

HOST=127.0.0.1
PORT=5432
ready() { pg_isready -q -h "$HOST" -p "$PORT" 2>/dev/null; }
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

if ! command -v pg_isready >/dev/null; then
  echo "ensure-postgres: installing PostgreSQL (Debian packages)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  # Debian's own cluster asks for passwords over TCP; the tests use a trust-auth cluster of ours.
  for version in /etc/postgresql/*; do
    pg_ctlcluster --skip-systemctl-redirect "$(basename "$version")" main stop 2>/dev/null || true
  done
fi

if ! ready && [ -d /etc/postgresql ]; then
  for version in /etc/postgresql/*; do
    echo "ensure-postgres: starting cluster $(basename "$version")/main"
    pg_ctlcluster --skip-systemctl-redirect "$(basename "$version")" main start || true
  done
fi

if ! ready; then
  bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  data=/tmp/visinspect-postgres
  echo "ensure-postgres: starting a throw-away trust-auth cluster in $data"
  if [ ! -f "$data/PG_VERSION" ]; then
    mkdir -p "$data" && chown postgres "$data" 2>/dev/null || true
    as_postgres "$bindir/initdb" -D "$data" -U postgres -A trust >/dev/null
  fi
  as_postgres "$bindir/pg_ctl" -D "$data" -l "$data/server.log" -w \
    -o "-p $PORT -k /tmp -c listen_addresses=$HOST -c fsync=off" start
fi

for _ in $(seq 1 30); do ready && break; sleep 1; done
ready || { echo "ensure-postgres: PostgreSQL is not answering on $HOST:$PORT" >&2; exit 1; }

if ! psql -h "$HOST" -p "$PORT" -U postgres -d test -Atqc 'SELECT 1' >/dev/null 2>&1; then
  psql -h "$HOST" -p "$PORT" -U postgres -d postgres -qc 'CREATE DATABASE test'
fi
echo "ensure-postgres: ready on $HOST:$PORT (database test)"

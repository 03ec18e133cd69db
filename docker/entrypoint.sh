#!/bin/sh
# Wait for the database (bounded, one log line per attempt), migrate (one replica at a time, under
# a PostgreSQL advisory lock), then become the server (exec: SIGTERM reaches it and drains requests).
set -eu
visinspect db wait --attempts "${DB_WAIT_ATTEMPTS:-30}" --interval "${DB_WAIT_INTERVAL_S:-2}"
visinspect db upgrade
exec visinspect serve --host "${HOST:-0.0.0.0}" --port "${PORT:-8000}" --workers "${WORKERS:-1}"

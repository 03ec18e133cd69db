#!/bin/sh
# The container runs `visinspect serve`, which does all start-up work itself (visinspect.startup):
# waits up to DATABASE_WAIT_S for the database, migrates under a PostgreSQL advisory lock
# (MIGRATE_ON_START) or verifies the schema, loads the model, then serves. exec: SIGTERM reaches it.
set -eu
exec visinspect serve --host "${HOST:-0.0.0.0}" --port "${PORT:-8000}"

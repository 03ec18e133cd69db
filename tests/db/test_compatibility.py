"""Expand/contract: a release serves on while a newer one's expand migrations run and after a
rollback to it; a contract stops it; the app's role cannot change the schema.

"A newer release" is this release's migrations copied with one more migration file, run by
Alembic exactly as that release's `visinspect db upgrade` would run them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from importlib import resources
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.orm import Session

from tests.support import (
    VISINSPECT,
    app_role_database,
    make_settings,
    synthetic_record,
)
from visinspect.db import partitions, retention
from visinspect.db.compatibility import Lineage, newer_but_compatible, phase_of
from visinspect.db.schema import (
    alembic_config,
    current_revision,
    head_revision,
    migration_scripts,
    prepare_schema,
    schema_problem,
    upgrade_to_head,
)
from visinspect.db.tables import PredictionRecord, SchemaCompatibility
from visinspect.errors import StartupFailed

# The newest contract migration this release ships (detectors: the heads' unique indexes gain
# the kind), and the oldest release it lets serve (0.1.0's head: what it reads did not change).
NEWEST_CONTRACT = "9d4c1e7b3a52"
OLDEST_SERVING = "5b8f0c2e7a14"

NEWER_EXPAND = '''"""a newer release: a nullable column"""
import sqlalchemy as sa
from alembic import op

revision = "feedface0001"
down_revision = "{head}"
branch_labels = None
depends_on = None
phase = "expand"


def upgrade():
    with op.batch_alter_table("predictions") as batch_op:
        batch_op.add_column(sa.Column("inspected_by", sa.String(64), nullable=True))


def downgrade():
    with op.batch_alter_table("predictions") as batch_op:
        batch_op.drop_column("inspected_by")
'''

NEWER_CONTRACT = '''"""a release after that: a column this release writes is gone"""
import sqlalchemy as sa
from alembic import op

revision = "feedface0002"
down_revision = "feedface0001"
branch_labels = None
depends_on = None
phase = "contract"


def upgrade():
    with op.batch_alter_table("predictions") as batch_op:
        batch_op.drop_column("filename")


def downgrade():
    with op.batch_alter_table("predictions") as batch_op:
        batch_op.add_column(sa.Column("filename", sa.String(255), nullable=True))
'''


def newer_release(tmp_path: Path, *migrations: str) -> Config:
    """Alembic configured with this release's migrations plus `migrations`."""
    location = tmp_path / "newer-migrations"
    shutil.copytree(
        str(resources.files("visinspect").joinpath("migrations")),
        location,
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    for number, source in enumerate(migrations):
        path = location / "versions" / f"29990101_000{number}_newer.py"
        path.write_text(source.format(head=head_revision()))
    config = Config()
    config.set_main_option("script_location", str(location))
    return config


def migrate(config: Config, engine: Engine, target: str = "head") -> None:
    with engine.connect() as connection:  # alembic begins its own transactions
        config.attributes["connection"] = connection
        if target.startswith("-") or target == "base":
            command.downgrade(config, target)
        else:
            command.upgrade(config, target)
        connection.commit()


def problem_of(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return schema_problem(connection, create_all_mode=False)


def recorded(engine: Engine) -> tuple[str, str]:
    """The record of the database's current revision (those passed on the way stay too)."""
    with engine.connect() as connection:
        current = current_revision(connection)
    with Session(engine) as session:
        row = session.execute(
            select(
                SchemaCompatibility.revision, SchemaCompatibility.oldest_compatible_revision
            ).where(SchemaCompatibility.revision == current)
        ).one()
    return row[0], row[1]


def insert_and_count(engine: Engine) -> int:
    """What this release does while serving: insert a row as it knows it, count the rows."""
    with Session(engine) as session:
        session.add(synthetic_record(f"compat-{uuid.uuid4().hex[:8]}"))
        session.commit()
        return int(session.scalar(select(func.count(PredictionRecord.id))) or 0)


def test_every_migration_declares_its_phase_and_the_schema_begins_with_a_contract() -> None:
    scripts = list(migration_scripts().walk_revisions())
    phases = {script.revision: phase_of(script) for script in scripts}
    assert phases[scripts[-1].revision] == "contract"  # the first migration creates the schema
    assert phases[NEWEST_CONTRACT] == "contract"
    assert phases["4b7e9a2c6d18"] == "contract"  # partition_predictions: the table is rebuilt
    assert phases["da2284f84b07"] == "contract"  # inference_backend: a NOT NULL column
    assert phases["8c2a5e7d1f43"] == "expand"  # the rollups


# Statements that break the release before them: they may only appear in a contract migration.
DESTRUCTIVE = {
    "drops": r"\bDROP\b",
    "renames": r"\bRENAME\b",
    "changes a type": r"\bALTER COLUMN\s+\S+\s+(SET DATA\s+)?TYPE\b",
    "tightens to NOT NULL": r"\bSET NOT NULL\b",
    "adds a NOT NULL column without a default": r"\bADD COLUMN\b(?:(?!\bDEFAULT\b)[^,;])*\bNOT NULL\b(?:(?!\bDEFAULT\b)[^,;])*(;|,|$)",
    "empties a table": r"\bTRUNCATE\b",
}


def destructive(sql: str) -> list[str]:
    upper = sql.upper()
    return [what for what, pattern in DESTRUCTIVE.items() if re.search(pattern, upper)]


@pytest.mark.parametrize(
    ("sql", "found"),
    [
        ("ALTER TABLE predictions DROP COLUMN filename;", ["drops"]),
        ("DROP INDEX ix_predictions_image_sha256;", ["drops"]),
        ("ALTER TABLE predictions RENAME COLUMN filename TO name;", ["renames"]),
        ("ALTER TABLE predictions ALTER COLUMN class_id TYPE BIGINT;", ["changes a type"]),
        ("ALTER TABLE predictions ALTER COLUMN filename SET NOT NULL;", ["tightens to NOT NULL"]),
        (
            "ALTER TABLE predictions ADD COLUMN x VARCHAR(8) NOT NULL;",
            ["adds a NOT NULL column without a default"],
        ),
        ("TRUNCATE predictions;", ["empties a table"]),
        ("ALTER TABLE predictions ADD COLUMN x VARCHAR(8) DEFAULT 'a' NOT NULL;", []),
        ("ALTER TABLE predictions ADD COLUMN x VARCHAR(8);", []),
        ("CREATE TABLE t (id INTEGER NOT NULL, PRIMARY KEY (id));", []),
        ("CREATE INDEX ix_t ON predictions (class_id);", []),
    ],
)
def test_the_destructive_statement_check_tells_them_apart(sql: str, found: list[str]) -> None:
    assert destructive(sql) == found


def test_expand_migrations_contain_no_destructive_statement(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each expand migration's PostgreSQL statements, as `alembic upgrade --sql` prints them."""
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://offline@localhost/offline")
    expands = [s for s in migration_scripts().walk_revisions() if phase_of(s) == "expand"]
    assert expands
    for script in expands:
        capsys.readouterr()
        command.upgrade(alembic_config(), f"{script.down_revision}:{script.revision}", sql=True)
        sql = capsys.readouterr().out
        seen = ("ALTER TABLE", "CREATE", "ALTER FUNCTION")
        assert any(kind in sql for kind in seen), sql  # the check saw real statements
        assert destructive(sql) == [], (script.revision, sql)


def test_a_migration_run_records_who_may_serve(empty_engine: Engine) -> None:
    upgrade_to_head(empty_engine)
    assert recorded(empty_engine) == (head_revision(), OLDEST_SERVING)


def test_an_older_release_finds_the_record_of_a_revision_the_migration_has_passed(
    empty_engine: Engine,
) -> None:
    """A release checks its readiness in two statements: the database's revision, then that
    revision's record. A migration run may commit between them; the record of the revision it
    passed must still be there (it once was not, and 0.1.0 turned unready mid-rollout)."""
    scripts = migration_scripts()
    upgrade_to_head(empty_engine)
    chain = [s.revision for s in scripts.walk_revisions()][::-1]  # oldest first
    first_recorded = chain.index("5b8f0c2e7a14")  # 0.1.0's head: it made the record's table
    release_0_1_0 = Lineage("5b8f0c2e7a14", frozenset(chain[: first_recorded + 1]))
    with empty_engine.connect() as connection:
        for passed in chain[first_recorded + 1 :]:
            assert newer_but_compatible(connection, release_0_1_0, passed), passed


def test_this_release_serves_on_after_a_newer_expand_and_after_the_rollback(
    empty_engine: Engine, tmp_path: Path
) -> None:
    upgrade_to_head(empty_engine)
    newer = newer_release(tmp_path, NEWER_EXPAND)
    migrate(newer, empty_engine)
    with empty_engine.connect() as connection:
        assert current_revision(connection) == "feedface0001"
    assert recorded(empty_engine) == ("feedface0001", OLDEST_SERVING)
    assert problem_of(empty_engine) is None  # readiness stays green
    again = upgrade_to_head(empty_engine)  # a restart with MIGRATE_ON_START=true
    assert (again.before, again.after, again.changed) == ("feedface0001", "feedface0001", False)
    assert insert_and_count(empty_engine) == 1  # and it writes rows as it knows them
    migrate(newer, empty_engine, "-1")  # the newer release's downgrade, back to this head
    assert problem_of(empty_engine) is None
    assert recorded(empty_engine) == (head_revision(), OLDEST_SERVING)
    assert insert_and_count(empty_engine) == 2


def test_a_newer_contract_stops_this_release(empty_engine: Engine, tmp_path: Path) -> None:
    upgrade_to_head(empty_engine)
    migrate(newer_release(tmp_path, NEWER_EXPAND, NEWER_CONTRACT), empty_engine)
    assert recorded(empty_engine) == ("feedface0002", "feedface0002")
    problem = problem_of(empty_engine)
    assert problem is not None
    assert "feedface0002" in problem
    assert "not compatible" in problem
    url = empty_engine.url.render_as_string(hide_password=False)
    for migrate_on_start in (True, False):
        settings = make_settings(url, migrate_on_start=migrate_on_start)
        with pytest.raises(StartupFailed) as failure:
            prepare_schema(empty_engine, settings)
        assert failure.value.part == "schema"


DROP_UNUSED = '''"""a release after that: drops the column the expand added, which this release never used"""
import sqlalchemy as sa
from alembic import op

revision = "feedface0003"
down_revision = "feedface0001"
branch_labels = None
depends_on = None
phase = "contract"
serves_from = "{head}"


def upgrade():
    with op.batch_alter_table("predictions") as batch_op:
        batch_op.drop_column("inspected_by")


def downgrade():
    with op.batch_alter_table("predictions") as batch_op:
        batch_op.add_column(sa.Column("inspected_by", sa.String(64), nullable=True))
'''


def test_a_contract_may_name_the_first_release_that_no_longer_needs_what_it_removes(
    empty_engine: Engine, tmp_path: Path
) -> None:
    """The contract drops a column this release never used and says so: a rollback to this
    release still works after it."""
    upgrade_to_head(empty_engine)
    migrate(newer_release(tmp_path, NEWER_EXPAND, DROP_UNUSED), empty_engine)
    assert recorded(empty_engine) == ("feedface0003", head_revision())
    assert problem_of(empty_engine) is None
    assert insert_and_count(empty_engine) == 1


def test_a_schema_behind_this_release_is_not_served(empty_engine: Engine) -> None:
    upgrade_to_head(empty_engine)
    migrate(alembic_config(), empty_engine, "-1")
    problem = problem_of(empty_engine)
    assert problem is not None
    assert "visinspect db upgrade" in problem
    assert f"code expects {head_revision()}" in problem


@pytest.mark.postgres
def test_the_app_role_appends_to_the_history_and_changes_nothing_else() -> None:
    """The serving role (DATABASE_APP_ROLE) inserts predictions, whose rollups the owner's
    trigger function keeps, and reads everything; it cannot rewrite or delete the history, the
    reviews, the rollups or the migration bookkeeping, nor change the schema. The whole API as
    this role: tests/api/test_teaching.py."""
    with app_role_database() as (owner_url, app_url):
        owner, app = create_engine(owner_url), create_engine(app_url)
        try:
            assert problem_of(app) is None  # readiness works as the app role
            assert insert_and_count(app) == 1
            with app.connect() as connection:  # the trigger ran as the owner: counted
                assert connection.scalar(text("SELECT sum(count) FROM rollup_daily_classes")) == 1
            refused = (
                "UPDATE predictions SET class_name = 'forged'",
                "DELETE FROM predictions",
                "UPDATE reviews SET verdict = 'correct'",
                "DELETE FROM reviews",
                "DELETE FROM prediction_embeddings",
                "DELETE FROM head_answers",
                "UPDATE heads SET artifact_sha256 = 'x'",
                "UPDATE label_sets SET name = 'x'",
                "INSERT INTO rollup_daily_classes SELECT * FROM rollup_daily_classes",
                "UPDATE rollup_hourly_classes SET count = 0",
                "DELETE FROM alembic_version",
                "DELETE FROM schema_compatibility",
                "TRUNCATE predictions",
                "CREATE TABLE intruder (id INTEGER)",
                "ALTER TABLE predictions ADD COLUMN intruder INTEGER",
                "DROP TABLE predictions",
                "DROP INDEX ix_predictions_image_sha256",
                "ALTER FUNCTION visinspect_rollup_predictions() SECURITY INVOKER",
            )
            for statement in refused:
                with app.connect() as connection, pytest.raises(ProgrammingError) as denied:
                    connection.execute(text(statement))
                message = str(denied.value)
                assert "permission denied" in message or "must be owner" in message, statement
            allowed = (  # what serving changes in place: a set's classes, a head's status
                "UPDATE label_sets SET classes = classes WHERE false",
                "UPDATE heads SET status = status WHERE false",
            )
            with app.begin() as connection:
                for statement in allowed:
                    connection.execute(text(statement))
            # Partitions and retention are the owner's: the app role's maintenance steps aside.
            assert partitions.maintain(app, retention_days=1).skipped
            assert retention.apply_retention(app, days=1) == 0
            assert not partitions.maintain(owner, retention_days=1).skipped
        finally:
            app.dispose()
            owner.dispose()


def test_an_app_role_is_refused_for_sqlite() -> None:
    with pytest.raises(ValueError, match="DATABASE_APP_ROLE"):
        make_settings("sqlite:///x.db", database_app_role="visinspect_app")


def _db_current(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [VISINSPECT, "db", "current"],
        env={**os.environ, "DATABASE_URL": url, "LOG_FORMAT": "json"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_db_current_says_whether_this_release_can_serve(tmp_path: Path) -> None:
    """What the Kubernetes init container waits on, through the real command."""
    url = f"sqlite:///{tmp_path / 'current.db'}"
    engine = create_engine(url)
    try:
        assert _db_current(url).returncode == 2  # empty database
        upgrade_to_head(engine)
        answer = _db_current(url)
        assert (answer.returncode, "serves:  yes" in answer.stdout) == (0, True), answer.stdout
        migrate(newer_release(tmp_path, NEWER_EXPAND), engine)
        answer = _db_current(url)
        assert (answer.returncode, "current: feedface0001" in answer.stdout) == (0, True)
        migrate(newer_release(tmp_path / "2", NEWER_EXPAND, NEWER_CONTRACT), engine)
        answer = _db_current(url)
        assert answer.returncode == 2
        assert "serves:  no: schema at revision feedface0002" in answer.stdout
    finally:
        engine.dispose()


def test_the_schema_commands_load_no_model_library() -> None:
    """The init container runs `db current` with a small memory limit: no ONNX Runtime, NumPy
    or torch in it."""
    probe = (
        "import sys, visinspect.cli.db; "
        "print(sorted(m for m in ('onnxruntime', 'numpy', 'torch', 'PIL') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"

"""Fixtures shared by every test folder: the metadata-store URLs (SQLite and a real PostgreSQL)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_ENV = "MODELYARD_TEST_POSTGRES_URL"


def _pg_admin_url() -> str | None:
    return os.environ.get(PG_ENV) or None


@pytest.fixture()
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'metadata.db'}"


@pytest.fixture()
def postgres_url() -> Iterator[str]:
    """A fresh database on the PostgreSQL server named by $MODELYARD_TEST_POSTGRES_URL, dropped afterwards."""
    admin = _pg_admin_url()
    if admin is None:
        pytest.skip(f"no PostgreSQL server given: set {PG_ENV} (.ci/run starts one and sets it)")
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    url = make_url(admin).set(drivername="postgresql+psycopg")
    name = f"modelyard_test_{secrets.token_hex(4)}"
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest) -> str:
    """Each metadata-store test runs against SQLite and against a real PostgreSQL server."""
    return request.getfixturevalue(f"{request.param}_url")

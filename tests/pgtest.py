"""The one rule for tests that need PostgreSQL: they run on JIVOCORE_TEST_POSTGRES; without it
they are skipped, except under CI=true, where a missing server is a failure, never a skip."""

from __future__ import annotations

import os

import pytest

URL = os.environ.get("JIVOCORE_TEST_POSTGRES", "")


def require_postgres() -> str:
    """The test database's URL; skips (or, under CI=true, fails) the caller without one. Call it
    from a test, a fixture, or a module's top level."""
    if URL:
        return URL
    if os.environ.get("CI") == "true":
        pytest.fail(
            "CI=true but JIVOCORE_TEST_POSTGRES is not set: the PostgreSQL tests must run in CI "
            "(.ci/run starts a server with `.ci/postgres start`)",
            pytrace=False,
        )
    pytest.skip(
        'no PostgreSQL: set JIVOCORE_TEST_POSTGRES=postgresql://... (eval "$(.ci/postgres start)")',
        allow_module_level=True,
    )

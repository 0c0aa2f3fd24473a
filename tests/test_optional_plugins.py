"""A built-in plugin whose extra was not installed is left out, not a start-up failure."""

import importlib.metadata

from jivocore.plugins import install_hint, missing_extras


def installed(name: str) -> importlib.metadata.EntryPoint:
    (ep,) = importlib.metadata.entry_points(group="jivocore", name=name)
    return ep


def test_an_entry_point_without_extras_needs_nothing():
    assert missing_extras(installed("jivocore_sqlite")) == []


def test_an_installed_extra_needs_nothing():
    # The test environment installs the dev extra, which holds postgres' and email's packages.
    assert missing_extras(installed("jivocore_postgres")) == []
    assert missing_extras(installed("jivocore_email")) == []


def test_a_missing_package_of_the_extra_is_named(monkeypatch):
    # Stands in for an environment where `pip install jivocore` chose no extras.
    real = importlib.metadata.distribution

    def distribution(name):
        if name == "aiosmtpd":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    email = installed("jivocore_email")
    assert missing_extras(email) == ["aiosmtpd"]
    assert install_hint(email, ["aiosmtpd"]) == "aiosmtpd: pip install 'jivocore[email]'"

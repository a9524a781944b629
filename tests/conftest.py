"""Shared fixtures."""

import pytest


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    """One synthetic-data cache for every CLI test: each set of settings is generated once."""
    return tmp_path_factory.mktemp("cache")

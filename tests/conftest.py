"""Shared test fixtures: where the shared fixtures live, and the oracle tier."""
from __future__ import annotations

import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.normpath(os.path.join(REPO, "..", "shared", "fixtures"))


@pytest.fixture(scope="session")
def fixtures_dir() -> str:
    """``../shared/fixtures``; tests that need it skip cleanly when it is absent."""
    if not os.path.isdir(FIXTURES):
        pytest.skip(f"shared fixtures not found at {FIXTURES}")
    return FIXTURES


def fixture_prototxts() -> list[str]:
    """Every prototxt under ../shared/fixtures (empty when the folder is absent)."""
    out = []
    if os.path.isdir(FIXTURES):
        for root, _dirs, files in os.walk(FIXTURES):
            out += [os.path.join(root, f) for f in files if f.endswith(".prototxt")]
    return sorted(out)

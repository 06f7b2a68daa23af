"""Shared test fixtures: where the reference fixtures of the original KP2D code live.

Tests that need them skip (with the path in the reason) when they are absent, as in a colcon workspace;
``make test`` sets ``KP2D_REQUIRE_FIXTURES=1``, which makes their absence a failure instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DIR = Path(
    os.environ.get("KP2D_REFERENCE_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures" / "kp2d_reference")
)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The read-only fixtures produced by the original code (``../shared/fixtures/kp2d_reference``)."""
    if not (REFERENCE_DIR / "expected.json").is_file():
        message = f"reference fixtures not found at {REFERENCE_DIR}; set KP2D_REFERENCE_FIXTURES"
        if os.environ.get("KP2D_REQUIRE_FIXTURES") == "1":  # `make test` (CI): the fixtures lie beside the clone
            pytest.fail(message)
        pytest.skip(message)  # e.g. `colcon test` in a workspace, where there is no ../shared
    return REFERENCE_DIR

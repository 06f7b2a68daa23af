"""Shared test fixtures: where the reference fixtures of the original KP2D code live."""

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
        pytest.fail(f"reference fixtures not found at {REFERENCE_DIR}; set KP2D_REFERENCE_FIXTURES")
    return REFERENCE_DIR

from __future__ import annotations

import shutil

import pytest


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not installed (Debian: apt-get install -y prometheus); CI installs it")
    return path


@pytest.fixture(scope="session")
def require():
    """``require(what, ok, how)``: skip without ``what``, or fail when CI=true (CI installs it)."""
    import os

    def check(what: str, ok: bool, how: str) -> None:
        if ok:
            return
        msg = f"{what} is required for this test: {how}"
        if os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}:
            pytest.fail(f"CI=true and {msg}", pytrace=False)
        pytest.skip(msg)

    return check

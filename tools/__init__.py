"""Maintainer tools, not in the wheel: dashboard and alert generators, previews, local servers."""

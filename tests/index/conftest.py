"""Fixtures of the gallery-index tests; the helpers live in index_testlib.py beside this file."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from index_testlib import MANIFEST  # noqa: E402

from reidkit.index import IndexManifest  # noqa: E402


@pytest.fixture
def manifest() -> IndexManifest:
    return MANIFEST

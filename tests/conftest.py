"""Shared test setup: the helper modules beside the tests (``clitools``, ``plain_loop``) are importable by
name, and the fixtures every command-line test shares."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

import clitools  # noqa: E402 - needs the path above


@pytest.fixture(scope="session")
def tiny_model_checkpoint(tmp_path_factory) -> Path:
    """A small_cnn trained for one epoch on 200 noisy multidigits images, made once per test session."""
    return clitools.tiny_checkpoint(tmp_path_factory)

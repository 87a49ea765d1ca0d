"""Fixtures of the ``multiguard serve`` tests: two multidigits test images as PNG files and one server (a real
process on a free local port, n = 200) shared by the test files of this folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from clitools import tiny_checkpoint
from servetools import Server, digit_images


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> list[Path]:
    return digit_images(tmp_path_factory.mktemp("images"), 2)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    checkpoint = tiny_checkpoint(tmp_path_factory)
    server = Server(checkpoint, "--n", "200", "--max-n", "2000", "--max-files", "3", "--max-body-bytes", "200000",
                    "--max-pixels", "40000")
    yield server
    server.stop()

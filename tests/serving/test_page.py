"""The web page of ``multiguard serve`` in a real browser: headless Chromium (Debian's ``chromium``, driven by
Playwright for Python) uploads an image, and the labels and radii the page shows are those of ``/v1/predict`` for
the same file and seed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from servetools import Server


@pytest.fixture
def images(serve_images: list[Path]) -> list[Path]:
    return serve_images


@pytest.fixture
def server(serve_server: Server) -> Server:
    return serve_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium; make install)")
def test_page_shows_the_labels_and_radii_of_an_upload(server: Server, images: list[Path]) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])")
    status, answer, _ = server.predict([(images[0].name, images[0].read_bytes())], {"seed": "9"})
    assert status == 200
    expected = answer["predictions"][0]
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(server.url + "/")
            page.fill("#seed", "9")
            page.set_input_files("#file", str(images[0]))
            page.wait_for_selector("#result:not([hidden])", timeout=60_000)
            labels = page.locator("#labels tbody tr td.label").all_inner_texts()
            radii = page.locator("#labels tbody tr td.radius").all_inner_texts()
            facts = page.inner_text("#facts")
            name = page.inner_text("#image-name")
            error = page.inner_text("#error")
        finally:
            browser.close()
    assert error == "" and name == images[0].name
    assert labels == expected["labels"]
    shown = [float(r.split()[0]) if r.split()[0] != "any" else float("inf") for r in radii]
    want = [float("inf") if r == "inf" else r for r in expected["radii"]]
    assert shown == pytest.approx(want, abs=5e-4)  # the page shows 3 decimals
    assert f"{expected['samples']} samples" in facts

"""The server's limits on real processes: a bounded queue (503 with Retry-After past it, the server still up),
the per-request time limit (504 JSON error), and SIGTERM with a request in flight (the request is answered in
full, then the process exits 0)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from clitools import tiny_checkpoint
from servetools import Server


@pytest.fixture
def images(serve_images: list[Path]) -> list[Path]:
    return serve_images


# samples that keep the tiny model busy for seconds on one CPU thread (0.1 to 0.3 ms each here: 8000 could end
# within the 1 s the SIGTERM test waits on a quiet machine)
LONG_N = "20000"


def test_full_queue_answers_503_with_retry_after(tmp_path_factory, images: list[Path]) -> None:
    server = Server(tiny_checkpoint(tmp_path_factory), "--max-queue", "1", "--max-n", "100000", "--n", "100")
    try:
        files = [(images[0].name, images[0].read_bytes())]
        # one runs, one waits: of 5 requests sent together while the first runs for seconds, at least 3 are refused
        with ThreadPoolExecutor(5) as pool:
            answers = list(pool.map(lambda seed: server.predict(files, {"seed": str(seed), "n": LONG_N}), range(5)))
        refused = [a for a in answers if a[0] == 503]
        served = [a for a in answers if a[0] == 200]
        assert len(refused) >= 3 and len(refused) + len(served) == 5, [a[:2] for a in answers]
        for _, answer, headers in refused:
            assert "queue is full" in answer["error"] and headers["retry-after"] == "1"
        assert all(a[1]["predictions"][0]["samples"] == int(LONG_N) for a in served)
        status, answer, _ = server.predict(files, {"seed": "1"})  # the server still serves
        assert status == 200 and answer["predictions"][0]["samples"] == 100
    finally:
        server.stop()


def test_request_over_the_time_limit_is_504(tmp_path_factory, images: list[Path]) -> None:
    server = Server(tiny_checkpoint(tmp_path_factory), "--time-limit", "0.5", "--max-n", "100000", "--n", "100")
    try:
        files = [(images[0].name, images[0].read_bytes())]
        status, answer, _ = server.predict(files, {"n": LONG_N})
        assert status == 504 and "time limit of 0.5 s" in answer["error"], answer
        assert server.get("/health")[0] == 200
        deadline = time.monotonic() + 120  # once the worker has finished the long one, a short request is served
        while (status := server.predict(files, {"n": "100"})[0]) == 504 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert status == 200
    finally:
        server.stop()


def test_sigterm_finishes_the_request_in_flight_and_exits_0(tmp_path_factory, images: list[Path]) -> None:
    server = Server(tiny_checkpoint(tmp_path_factory), "--max-n", "100000", "--n", "100")
    files = [(images[0].name, images[0].read_bytes())]
    answers: list = []
    client = threading.Thread(target=lambda: answers.append(server.predict(files, {"seed": "3", "n": LONG_N})))
    client.start()
    time.sleep(1.0)  # the request is on the worker (it takes seconds)
    assert client.is_alive(), "the long request was answered before SIGTERM: make LONG_N larger"
    code, err = server.stop()  # SIGTERM, then wait for the exit
    client.join(timeout=60)
    assert code == 0, err
    assert answers and answers[0][0] == 200, answers
    assert answers[0][1]["predictions"][0]["samples"] == int(LONG_N)
    try:
        server.get("/health")
    except OSError:
        pass
    else:
        raise AssertionError("the server still answers after SIGTERM")

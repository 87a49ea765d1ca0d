"""Dynamic batching of ``multiguard serve``: the queue merges compatible waiting jobs (a real InferenceQueue and
plain functions), a merged model call answers each request exactly as it would alone under the same seed and
indices (the tiny checkpoint), and on a real server process concurrent small-n requests without a seed are merged
while a seeded request (equal to ``predict --json --seed``) and a request with other settings run alone."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from clitools import run, tiny_checkpoint
from servetools import Server

from multiguard.serving.batching import InferenceQueue


async def _submit_all(queue: InferenceQueue, jobs: list[dict], limit: float = 30.0) -> list:
    """Submit every job at once; each runs alone as ``("alone", payload)`` unless merged (``job["run"]``: its own
    run)."""
    async def one(job: dict):
        run = job.get("run") or (lambda: ("alone", job["payload"]))
        try:
            return await queue.submit(run, limit, key=job.get("key"), images=job.get("images", 1),
                                      payload=job["payload"])
        except TimeoutError:
            return "timeout"

    return await asyncio.gather(*(one(job) for job in jobs))


def _blocked_queue(calls: list, release: threading.Event, cap: int) -> tuple[InferenceQueue, list[dict]]:
    """A real queue whose merge records its calls, and a first job that holds the worker until ``release`` is set
    (so that the jobs sent next all wait together)."""
    def merge(payloads):
        calls.append(list(payloads))
        return [("merged", p) for p in payloads]

    queue = InferenceQueue(16, max_batch_images=cap, merge=merge)
    return queue, [{"payload": "block", "key": None, "run": lambda: (release.wait(30), "block")[1]}]


def test_queue_merges_compatible_jobs_within_the_cap() -> None:
    calls: list = []
    release = threading.Event()
    queue, jobs = _blocked_queue(calls, release, cap=4)
    jobs += [{"payload": "a1", "key": "A", "images": 2}, {"payload": "s", "key": None},
             {"payload": "b1", "key": "B"}, {"payload": "a2", "key": "A"}, {"payload": "a3", "key": "A", "images": 2},
             {"payload": "a4", "key": "A"}]

    async def main():
        task = asyncio.ensure_future(_submit_all(queue, jobs))
        await asyncio.sleep(0.3)
        release.set()
        return await task

    answers = asyncio.run(main())
    queue.close()
    assert answers[0] == ("block", 1)
    # a1 + a2 + a4 = 4 images (a3 would make 6): one merged call; the seeded job and B run alone
    assert calls == [["a1", "a2", "a4"]]
    assert answers[1] == (("merged", "a1"), 3) and answers[4] == (("merged", "a2"), 3)
    assert answers[6] == (("merged", "a4"), 3)
    assert answers[2] == (("alone", "s"), 1) and answers[3] == (("alone", "b1"), 1)
    assert answers[5] == (("alone", "a3"), 1)  # left alone behind the cap, no other A job left to join it


def test_queue_drops_timed_out_jobs_instead_of_merging_them() -> None:
    calls: list = []
    release = threading.Event()
    queue, jobs = _blocked_queue(calls, release, cap=8)

    async def main():
        first = asyncio.ensure_future(_submit_all(queue, jobs))  # holds the worker
        await asyncio.sleep(0.2)
        late = await _submit_all(queue, [{"payload": f"t{i}", "key": "A"} for i in range(3)], limit=0.2)
        fresh = asyncio.ensure_future(_submit_all(queue, [{"payload": "f", "key": "A"}]))
        await asyncio.sleep(0.1)
        release.set()
        return late, await fresh, await first

    late, fresh, _ = asyncio.run(main())
    queue.close()
    assert late == ["timeout"] * 3
    assert fresh == [(("alone", "f"), 1)] and calls == []  # the three timed-out jobs were dropped, not merged


def test_a_failing_merged_call_answers_each_job_alone() -> None:
    def merge(payloads):
        raise ValueError("one bad input")

    queue = InferenceQueue(8, max_batch_images=8, merge=merge)
    release = threading.Event()

    async def main():
        async def job(name: str, key):
            run = (lambda: (release.wait(30), name)[1]) if name == "block" else (lambda: name)
            return await queue.submit(run, 30, key=key, payload=name)

        block = asyncio.ensure_future(job("block", None))
        await asyncio.sleep(0.2)
        others = asyncio.ensure_future(asyncio.gather(job("x", "A"), job("y", "A")))
        await asyncio.sleep(0.1)
        release.set()
        return await block, await others

    block, others = asyncio.run(main())
    queue.close()
    assert block == ("block", 1) and others == [("x", 1), ("y", 1)]
    with pytest.raises(ValueError, match="max-batch-images"):
        InferenceQueue(4, max_batch_images=0)


def test_a_merged_call_answers_each_request_as_it_would_alone(tmp_path_factory) -> None:
    from multiguard.serving.predict import content_index, load_model

    model = load_model(tiny_checkpoint(tmp_path_factory), device="cpu")
    torch.manual_seed(0)
    size, channels = model.image_size, model.channels
    images = torch.rand(3, channels, size, size)
    batches = [images[:2], images[2:], images[:1]]  # the first image in two requests
    paths = [["a", "b"], ["c"], ["a"]]
    settings = {"k": 3, "n0": 100, "n": 150, "alpha": 0.001, "batch_size": 1000}
    merged = model.predict_merged(batches, paths, seed=11, **settings)
    assert [[p.path for p in answer] for answer in merged] == paths
    for r, (batch, names) in enumerate(zip(batches, paths, strict=True)):
        index = content_index(batch, b"multiguard-request:" + r.to_bytes(8, "big"))
        alone = model.predict(batch, names, seed=11, index=index, **settings)
        assert [(p.labels, p.radii, p.samples) for p in merged[r]] == [(p.labels, p.radii, p.samples) for p in alone]
    # the same image in two requests of one call gets different noise indices (independent noise)
    first = content_index(batches[0][:1], b"multiguard-request:" + (0).to_bytes(8, "big"))
    third = content_index(batches[2], b"multiguard-request:" + (2).to_bytes(8, "big"))
    assert first[0] != third[0] and first[0] != content_index(batches[0][:1])[0]


# ------------------------------------------------------------------------------------------- real server

LONG_N = "20000"  # keeps the tiny model busy for seconds: the requests sent next wait together


def _valid(prediction: dict, name: str, n: int, k: int, classes: list[str]) -> None:
    assert prediction["image"] == name and prediction["samples"] == n
    assert len(prediction["labels"]) == k == len(set(prediction["labels"])) and set(prediction["labels"]) <= set(
        classes)
    radii = [float(r) for r in prediction["radii"]]
    assert all(r >= 0 for r in radii) and radii == sorted(radii, reverse=True)
    assert len(prediction["trivial"]) == k and prediction["noise"]


def test_concurrent_small_requests_are_merged(tmp_path_factory, serve_images: list[Path]) -> None:
    checkpoint = tiny_checkpoint(tmp_path_factory)
    server = Server(checkpoint, "--n", "100", "--max-n", "100000", "--max-batch-images", "8")
    files = {p.name: (p.name, p.read_bytes()) for p in serve_images}
    a, b = (p.name for p in serve_images)
    try:
        classes = server.get("/v1/model")[1]["class_names"]
        long = threading.Thread(target=server.predict, args=([files[a]], {"seed": "1", "n": LONG_N}))
        long.start()
        time.sleep(0.3)  # the long request is on the worker; the next ones queue behind it
        asks = [([files[a], files[b]], {}), ([files[b]], {}), ([files[a]], {}), ([files[a], files[b]], {"seed": "7"}),
                ([files[b]], {"k": "2"})]
        with ThreadPoolExecutor(len(asks)) as pool:
            answers = list(pool.map(lambda ask: server.predict(*ask), asks))
        long.join(timeout=120)
        assert long_running_when_sent(answers), "the long request ended before the others were queued"
        for (sent, fields), (status, answer, _) in zip(asks, answers, strict=True):
            assert status == 200, answer
            k = int(fields.get("k", 3))
            for prediction, (name, _) in zip(answer["predictions"], sent, strict=True):
                _valid(prediction, name, 100, k, classes)
            assert len(answer["predictions"]) == len(sent)
        assert [answer["batched_requests"] for _, answer, _ in answers[:3]] == [3, 3, 3]
        assert answers[3][1]["batched_requests"] == 1 and answers[4][1]["batched_requests"] == 1
        expected = json.loads(run("predict", "--checkpoint", str(checkpoint), *(str(p) for p in serve_images),
                                  "--n", "100", "--seed", "7", "--device", "cpu", "--json").stdout)
        drop = ("image", "batch_seconds")
        assert [{key: v for key, v in p.items() if key not in drop} for p in answers[3][1]["predictions"]] == [
            {key: v for key, v in p.items() if key not in drop} for p in expected]
    finally:
        code, err = server.stop()
    lines = [line for line in err.splitlines() if "POST /v1/predict 200" in line]
    assert code == 0 and sum(line.endswith(" batched=3") for line in lines) == 3, err
    assert sum(line.endswith(" batched=1") for line in lines) == 3, err  # the long, the seeded, the k=2 one


def long_running_when_sent(answers: list) -> bool:
    """The three mergeable requests can only have been merged if they waited together: any of them alone
    (batched 1) means the long request ended too soon on this machine."""
    return all(answer.get("batched_requests") != 1 for _, answer, _ in answers[:3])


def test_batching_off_runs_each_request_alone(tmp_path_factory, serve_images: list[Path]) -> None:
    server = Server(tiny_checkpoint(tmp_path_factory), "--n", "100", "--max-n", "100000", "--max-batch-images", "1")
    files = [(serve_images[0].name, serve_images[0].read_bytes())]
    try:
        long = threading.Thread(target=server.predict, args=(files, {"seed": "1", "n": LONG_N}))
        long.start()
        time.sleep(0.3)
        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda _: server.predict(files), range(3)))
        long.join(timeout=120)
        assert [(status, answer["batched_requests"]) for status, answer, _ in answers] == [(200, 1)] * 3
        assert np.all([answer["predictions"][0]["samples"] == 100 for _, answer, _ in answers])
    finally:
        server.stop()

"""``multiguard serve`` as a user starts it (a real process on a free port) and a plain HTTP client: the answers
equal ``predict --json`` under a seed, fresh noise without one, every bad request a 4xx JSON error, the token."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from clitools import run, tiny_checkpoint
from servetools import Server


@pytest.fixture
def images(serve_images: list[Path]) -> list[Path]:
    return serve_images


@pytest.fixture
def server(serve_server: Server) -> Server:
    return serve_server


def _comparable(prediction: dict) -> dict:
    return {key: value for key, value in prediction.items() if key not in ("image", "batch_seconds")}


def test_health_and_model(server: Server, tmp_path_factory) -> None:
    assert server.get("/health")[:2] == (200, {"status": "ok"})
    status, model, _ = server.get("/v1/model")
    assert status == 200
    from multiguard.common.files import file_sha256

    assert model["checkpoint_sha256"] == file_sha256(tiny_checkpoint(tmp_path_factory))
    assert model["arch"] == "small_cnn" and model["num_classes"] == len(model["class_names"])
    assert (model["k"], model["k_prime"], model["n"], model["alpha"]) == (3, 1, 200, 0.001)
    assert model["noise"] == "sound" and model["denoiser_sha256"] is None and model["multiguard_version"]


def test_seeded_answer_equals_predict_json(server: Server, images: list[Path], tmp_path_factory) -> None:
    checkpoint = tiny_checkpoint(tmp_path_factory)
    expected = json.loads(run("predict", "--checkpoint", str(checkpoint), *map(str, images), "--n", "200",
                              "--seed", "7", "--device", "cpu", "--json").stdout)
    status, answer, _ = server.predict([(p.name, p.read_bytes()) for p in images], {"seed": "7"})
    assert status == 200, answer
    got = answer["predictions"]
    assert [p["image"] for p in got] == [p.name for p in images]
    assert [_comparable(p) for p in got] == [_comparable(p) for p in expected]
    # the same through query parameters, and k as a parameter
    status, answer, _ = server.predict([(images[0].name, images[0].read_bytes())], query="?seed=7&k=2&n=300")
    expected = json.loads(run("predict", "--checkpoint", str(checkpoint), str(images[0]), "--n", "300", "--k", "2",
                              "--seed", "7", "--device", "cpu", "--json").stdout)
    assert status == 200 and _comparable(answer["predictions"][0]) == _comparable(expected[0])


def test_fresh_noise_without_a_seed(server: Server, images: list[Path], tmp_path: Path) -> None:
    # a model whose top-1 is a coin flip shows the noise: use the radii's underlying counts through many labels
    files = [(images[0].name, images[0].read_bytes())]
    seeded = [server.predict(files, {"seed": "5", "k": "10"})[1]["predictions"][0] for _ in range(2)]
    assert seeded[0]["radii"] == seeded[1]["radii"]
    fresh = [server.predict(files, {"k": "10", "n": "300"})[1]["predictions"][0] for _ in range(4)]
    fingerprints = {json.dumps([p["labels"], p["radii"]]) for p in fresh}
    assert len(fingerprints) > 1, "four requests without a seed gave the same answer: the noise is not fresh"


def _png(width: int, height: int) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.zeros((height, width), dtype=np.uint8), mode="L").save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize(("files", "fields", "status", "words"), [
    ([("a.png", b"not an image at all")], {}, 400, "a.png"),
    ([], {"seed": "1"}, 400, "no file"),
    ([("a.png", _png(8, 8))] * 4, {}, 400, "too many files"),
    ([("big.png", _png(300, 300))], {}, 413, "pixels"),
    ([("a.png", _png(8, 8))], {"n": "0"}, 400, "n:"),
    ([("a.png", _png(8, 8))], {"n": "5000"}, 400, "--max-n"),
    ([("a.png", _png(8, 8))], {"k": "11"}, 400, "k:"),
    ([("a.png", _png(8, 8))], {"k": "two"}, 400, "k:"),
    ([("a.png", _png(8, 8))], {"alpha": "1.5"}, 400, "alpha:"),
    ([("a.png", _png(8, 8))], {"seed": "-1"}, 400, "seed:"),
    ([("a.png", _png(8, 8))], {"stop_at_radius": "-0.5"}, 400, "stop_at_radius:"),
    ([("a.png", _png(8, 8))], {"resize": "refuse"}, 400, "resize: not a request parameter"),
    ([("a.png", _png(8, 8))], {"q": "0.3", "k": "2"}, 400, "q: not a request parameter"),
])
def test_bad_requests_get_a_json_error(server: Server, files, fields, status, words) -> None:
    got, answer, _ = server.predict(files, fields)
    assert got == status and words in answer["error"], answer
    assert "Traceback" not in answer["error"]
    assert server.get("/health")[0] == 200  # still up


def test_body_over_the_limit_is_413(server: Server) -> None:
    status, answer, _ = server.predict([("a.png", b"\0" * 300_000)])
    assert status == 413 and "limit" in answer["error"]


def test_not_multipart_and_unknown_path(server: Server) -> None:
    status, answer, _ = server.request("POST", "/v1/predict", b"{}", {"Content-Type": "application/json"})
    assert status == 400 and "no file" in answer["error"]
    status, answer, _ = server.get("/v1/nothing")
    assert status == 404 and "error" in answer


def test_one_log_line_per_request(tmp_path_factory, images: list[Path]) -> None:
    server = Server(tiny_checkpoint(tmp_path_factory), "--n", "100")
    server.predict([(images[0].name, images[0].read_bytes())], {"seed": "1"})
    server.predict([], {})
    code, err = server.stop()
    lines = [line for line in err.splitlines() if "POST /v1/predict" in line]
    assert code == 0
    assert len(lines) == 2 and " 200 images=1 samples=100 ms=" in lines[0] and " 400 images=0" in lines[1], err


def test_token(tmp_path_factory, images: list[Path]) -> None:
    server = Server(tiny_checkpoint(tmp_path_factory), "--n", "100", extra_env={"MULTIGUARD_TOKEN": "s3cret"})
    try:
        files = [(images[0].name, images[0].read_bytes())]
        assert server.get("/health")[0] == 200 and server.get("/v2/health/ready")[0] == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            status, answer, _ = server.predict(files, headers=headers)
            assert status == 401 and "Bearer" in answer["error"]
            assert server.get("/v1/model", headers)[0] == 401 and server.get("/v2/models/multiguard", headers)[0] == 401
        good = {"Authorization": "Bearer s3cret"}
        assert server.predict(files, headers=good)[0] == 200 and server.get("/v1/model", good)[0] == 200
    finally:
        server.stop()


def test_all_interfaces_without_a_token_warns(tmp_path_factory) -> None:
    server = Server(tiny_checkpoint(tmp_path_factory), "--host", "0.0.0.0", "--n", "100")
    code, err = server.stop()
    assert code == 0 and "warning: listening on 0.0.0.0 without a token" in err

"""The Open Inference Protocol v2 endpoints of ``multiguard serve`` with a plain HTTP client (urllib): health,
model metadata, and infer answering what ``multiguard predict --json`` answers for the same pixels and seed, in
both input forms (UINT8 (H, W, C) and FP32 (C, H, W)); every bad inference request a 4xx JSON error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from clitools import run, tiny_checkpoint
from PIL import Image
from servetools import Server


@pytest.fixture
def images(serve_images: list[Path]) -> list[Path]:
    return serve_images


@pytest.fixture
def server(serve_server: Server) -> Server:
    return serve_server

INFER = "/v2/models/multiguard/infer"


def _pixels(path: Path) -> np.ndarray:
    """uint8 ``(H, W, 1)``: the grey pixels of a PNG file as PIL reads them."""
    return np.asarray(Image.open(path).convert("L"), dtype=np.uint8)[:, :, None]


def _uint8_input(paths: list[Path]) -> dict:
    array = np.stack([_pixels(p) for p in paths])
    return {"name": "image", "datatype": "UINT8", "shape": list(array.shape), "data": array.ravel().tolist()}


def _outputs(answer: dict) -> dict[str, list]:
    """Each output tensor of an infer answer as nested rows (its data in its shape)."""
    out = {}
    for tensor in answer["outputs"]:
        data, shape = tensor["data"], tensor["shape"]
        out[tensor["name"]] = [data[i * shape[1]:(i + 1) * shape[1]] for i in range(shape[0])] if len(shape) == 2 \
            else data
    return out


def test_health_endpoints(server: Server) -> None:
    assert server.get("/v2/health/live")[:2] == (200, {"live": True})
    assert server.get("/v2/health/ready")[:2] == (200, {"ready": True})


def test_model_metadata(server: Server, images: list[Path]) -> None:
    status, meta, _ = server.get("/v2/models/multiguard")
    assert status == 200 and meta["name"] == "multiguard" and meta["platform"] == "multiguard"
    height, width, channels = _pixels(images[0]).shape
    shapes = {tensor["datatype"]: tensor["shape"] for tensor in meta["inputs"]}
    assert shapes == {"UINT8": [-1, height, width, channels], "FP32": [-1, channels, height, width]}
    assert {t["name"]: t["datatype"] for t in meta["outputs"]} == {
        "labels": "BYTES", "radii": "FP32", "trivial": "BOOL", "samples": "INT64"}
    assert all(t["shape"][-1] == 3 for t in meta["outputs"] if t["name"] != "samples")  # k = 3, the default


def test_infer_uint8_equals_predict_json(server: Server, images: list[Path], tmp_path_factory) -> None:
    expected = json.loads(run("predict", "--checkpoint", str(tiny_checkpoint(tmp_path_factory)), *map(str, images),
                              "--n", "200", "--seed", "7", "--device", "cpu", "--json").stdout)
    status, answer, _ = server.post_json(INFER, {"id": "req-1", "inputs": [_uint8_input(images)],
                                                 "parameters": {"seed": 7}})
    assert status == 200, answer
    assert answer["id"] == "req-1" and answer["model_name"] == "multiguard"
    assert answer["parameters"] == {"alpha": 0.001, "n": 200, "k": 3, "noise": expected[0]["noise"],
                                    "batched_requests": 1}
    got = _outputs(answer)
    assert got["labels"] == [p["labels"] for p in expected]
    assert got["radii"] == [p["radii"] for p in expected]
    assert got["trivial"] == [p["trivial"] for p in expected]
    assert got["samples"] == [p["samples"] for p in expected]


def test_infer_fp32_chw_equals_uint8_hwc(server: Server, images: list[Path]) -> None:
    pixels = _pixels(images[1])
    chw = (pixels.transpose(2, 0, 1).astype(np.float32) / np.float32(255)).astype(np.float32)
    fp32 = {"name": "image", "datatype": "FP32", "shape": list(chw.shape), "data": [float(v) for v in chw.ravel()]}
    params = {"seed": 11, "k": 2, "n": 300}
    status, as_float, _ = server.post_json(INFER, {"inputs": [fp32], "parameters": params})
    assert status == 200, as_float
    status, as_bytes, _ = server.post_json(INFER, {"inputs": [_uint8_input([images[1]])], "parameters": params})
    assert status == 200 and "id" not in as_float
    assert _outputs(as_float) == _outputs(as_bytes)
    assert as_float["parameters"]["n"] == 300 and len(_outputs(as_float)["labels"][0]) == 2


def _good(images: list[Path]) -> dict:
    return _uint8_input([images[0]])


@pytest.mark.parametrize(("change", "status", "words"), [
    (lambda body: {**body, "inputs": []}, 400, "inputs:"),
    (lambda body: {"parameters": {}}, 400, "inputs:"),
    (lambda body: {"inputs": [{**body["inputs"][0], "datatype": "INT8"}]}, 400, "datatype"),
    (lambda body: {"inputs": [{**body["inputs"][0], "shape": [1, 3, 3, 1]}]}, 400, "shape"),
    (lambda body: {"inputs": [{**body["inputs"][0], "data": body["inputs"][0]["data"][:-1]}]}, 400, "data"),
    (lambda body: {"inputs": [{**body["inputs"][0], "data": [300] * len(body["inputs"][0]["data"])}]}, 400,
     "[0, 255]"),
    (lambda body: {**body, "parameters": {"n": 0}}, 400, "n:"),
    (lambda body: {**body, "parameters": {"alpha": 2}}, 400, "alpha:"),
    (lambda body: {**body, "parameters": [1]}, 400, "parameters"),
    (lambda body: [body], 400, "JSON object"),
])
def test_bad_infer_requests_get_a_json_error(server: Server, images: list[Path], change, status, words) -> None:
    body = change({"inputs": [_good(images)]})
    got, answer, _ = server.post_json(INFER, body)
    assert got == status and words in answer["error"], answer
    assert "Traceback" not in answer["error"]
    assert server.get("/v2/health/ready")[0] == 200


def test_fp32_out_of_range_unknown_model_and_not_json(server: Server, images: list[Path]) -> None:
    pixels = _pixels(images[0]).transpose(2, 0, 1)
    fp32 = {"name": "image", "datatype": "FP32", "shape": list(pixels.shape), "data": [1.5] * pixels.size}
    status, answer, _ = server.post_json(INFER, {"inputs": [fp32]})
    assert status == 400 and "[0, 1]" in answer["error"]
    status, answer, _ = server.post_json("/v2/models/other/infer", {"inputs": [_good(images)]})
    assert status == 404 and "'other'" in answer["error"]
    assert server.get("/v2/models/other")[0] == 404
    status, answer, _ = server.request("POST", INFER, b"{not json", {"Content-Type": "application/json"})
    assert status == 400 and "not JSON" in answer["error"]

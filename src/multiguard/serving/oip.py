"""The Open Inference Protocol v2 endpoints of ``multiguard serve`` (the REST protocol of KServe, Triton, Seldon
MLServer and BentoML).

``POST /v2/models/{name}/infer`` takes one input tensor: ``UINT8`` of shape ``(H, W, C)`` (pixels 0..255) or
``FP32`` of shape ``(C, H, W)`` with values in [0, 1], optionally with a leading batch dimension, of the model's
size (no resizing). It answers the output tensors ``labels`` (``BYTES``, ``(N, k)``), ``radii`` (``FP32``,
``(N, k)``, an infinite radius as the string ``"inf"``), ``trivial`` (``BOOL``, ``(N, k)``) and ``samples``
(``INT64``, ``(N,)``), and the certificate's ``alpha``, ``n`` and ``noise`` in ``parameters`` (with
``batched_requests``: how many requests shared the model call). The request's
``parameters`` may hold ``k``, ``n``, ``alpha``, ``seed`` and ``stop_at_radius`` as in ``/v1/predict``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request

from multiguard.serving.state import RequestError, ServerState

__all__ = ["add_oip_routes", "input_tensor"]


def add_oip_routes(app: FastAPI, state: ServerState) -> None:
    """Register the v2 health, model metadata and infer endpoints on ``app``."""
    from multiguard import __version__

    def check_name(name: str) -> None:
        if name != state.settings.model_name:
            raise RequestError(f"model: no model named {name!r}; this server serves {state.settings.model_name!r}",
                               404)

    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    @app.get("/v2/models/{name}")
    async def metadata(name: str) -> dict[str, Any]:
        check_name(name)
        m, k = state.model, state.settings.k
        return {"name": name, "versions": [__version__], "platform": "multiguard",
                "inputs": [{"name": "image", "datatype": "UINT8", "shape": [-1, m.image_size, m.image_size,
                                                                            m.channels]},
                           {"name": "image", "datatype": "FP32", "shape": [-1, m.channels, m.image_size,
                                                                           m.image_size]}],
                "outputs": [{"name": "labels", "datatype": "BYTES", "shape": [-1, k]},
                            {"name": "radii", "datatype": "FP32", "shape": [-1, k]},
                            {"name": "trivial", "datatype": "BOOL", "shape": [-1, k]},
                            {"name": "samples", "datatype": "INT64", "shape": [-1]}]}

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, request: Request) -> dict[str, Any]:
        check_name(name)
        try:
            body = await request.json()
        except ValueError:
            raise RequestError("body: not JSON; send an inference request of the Open Inference Protocol v2") from None
        if not isinstance(body, dict):
            raise RequestError("body: expected a JSON object with 'inputs'")
        batch = input_tensor(body.get("inputs"), state.model.channels, state.model.image_size)
        params = body.get("parameters") or {}
        if not isinstance(params, dict):
            raise RequestError("parameters: expected a JSON object")
        certificate = state.certificate(params, known_only=False)  # OIP parameters may hold a client's own keys
        names = [f"input{i}" for i in range(batch.shape[0])]
        predictions, batched = await state.predict(batch, names, certificate)
        request.state.images, request.state.samples = len(names), sum(p.samples or 0 for p in predictions)
        request.state.batched = batched
        return _answer(name, body.get("id"), predictions, certificate, __version__, batched)


def _answer(name: str, request_id: Any, predictions: list[Any], certificate: dict[str, Any],
            version: str, batched: int = 1) -> dict[str, Any]:
    rows = [p.as_dict() for p in predictions]
    count, k = len(rows), certificate["k"]
    answer = {"model_name": name, "model_version": version,
              "parameters": {"alpha": certificate["alpha"], "n": certificate["n"], "k": k,
                             "noise": rows[0]["noise"] if rows else "", "batched_requests": batched},
              "outputs": [
                  {"name": "labels", "datatype": "BYTES", "shape": [count, k],
                   "data": [label for row in rows for label in row["labels"]]},
                  {"name": "radii", "datatype": "FP32", "shape": [count, k],
                   "data": [radius for row in rows for radius in row["radii"]]},
                  {"name": "trivial", "datatype": "BOOL", "shape": [count, k],
                   "data": [flag for row in rows for flag in row["trivial"]]},
                  {"name": "samples", "datatype": "INT64", "shape": [count], "data": [row["samples"] for row in rows]},
              ]}
    if request_id is not None:
        answer["id"] = request_id
    return answer


def input_tensor(inputs: Any, channels: int, size: int) -> torch.Tensor:
    """``(N, C, S, S)`` float in [0, 1] from the one input tensor of a v2 request: ``UINT8`` ``([N,] S, S, C)``
    or ``FP32`` ``([N,] C, S, S)``; raises the server's 400 naming what is wrong."""
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise RequestError("inputs: expected a list of one input tensor")
    tensor = inputs[0]
    datatype, shape, data = tensor.get("datatype"), tensor.get("shape"), tensor.get("data")
    expected = {"UINT8": (size, size, channels), "FP32": (channels, size, size)}
    if datatype not in expected:
        raise RequestError(f"inputs: datatype must be UINT8 (H, W, C) or FP32 (C, H, W), got {datatype!r}")
    want = expected[datatype]
    if not isinstance(shape, list) or tuple(shape[-3:]) != want or len(shape) not in (3, 4):
        raise RequestError(f"inputs: shape of a {datatype} image must be {list(want)} (or [N, ...]) for this model, "
                           f"got {shape}")
    try:
        array = np.asarray(data, dtype=np.float64).reshape(shape)
    except (TypeError, ValueError):
        raise RequestError(f"inputs: data must hold {int(np.prod(shape))} numbers for shape {shape}") from None
    if array.ndim == 3:
        array = array[None]
    if datatype == "UINT8":
        if not (np.all(array == np.round(array)) and array.min() >= 0 and array.max() <= 255):
            raise RequestError("inputs: UINT8 data must be integers in [0, 255]")
        array = array.transpose(0, 3, 1, 2) / 255.0
    elif not (np.isfinite(array).all() and array.min() >= 0 and array.max() <= 1):
        raise RequestError("inputs: FP32 data must be in [0, 1]")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))

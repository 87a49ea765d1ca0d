"""What the endpoints of ``multiguard serve`` share: the settings (:class:`ServeSettings`), the model and the
queue (:class:`ServerState`), and the bad-request error (:class:`RequestError`, answered as JSON)."""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from multiguard.certificates import sequential as _sequential
from multiguard.certificates.stop_rule import StopRule
from multiguard.serving.batching import InferenceQueue, QueueFullError
from multiguard.serving.predict import LoadedModel

__all__ = ["RequestError", "ServeSettings", "ServerState"]


class RequestError(ValueError):
    """A bad request: answered with ``status`` and ``{"error": message}``."""

    def __init__(self, message: str, status: int = 400, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.headers = status, dict(headers or {})


@dataclass
class ServeSettings:
    """The certificate defaults of every request (those of ``multiguard predict``) and the server's limits."""

    k: int = 3
    n0: int = 100
    n: int = 1000
    alpha: float = 0.001
    batch_size: int = 1000
    stop_at_radius: float | None = None
    stop_rule: dict[str, Any] = field(default_factory=lambda: {
        "futility": _sequential.DEFAULT_FUTILITY, "schedule": _sequential.DEFAULT_SCHEDULE,
        "spending": _sequential.DEFAULT_SPENDING, "margin": _sequential.DEFAULT_MARGIN,
        "bounds": _sequential.DEFAULT_BOUNDS})
    q: float = 0.5
    resize: str = "stretch"  # how an upload of another size is fitted (as predict --resize)
    max_n: int = 100_000  # the most estimation samples a request may ask for
    max_files: int = 16  # images per request
    max_body_bytes: int = 20 * 2**20  # the request body (413 past it)
    max_queue: int = 16  # requests waiting for the model (503 past it)
    # dynamic batching: the most images of compatible waiting requests run in one model call (1: every request alone)
    max_batch_images: int = 32
    time_limit: float = 60.0  # seconds per request, queueing included
    token: str | None = None  # with a token, every endpoint but PUBLIC_PATHS needs "Authorization: Bearer TOKEN"
    model_name: str = "multiguard"  # the model's name in the OIP v2 endpoints
    log: bool = True  # one line per request on stderr
    seed: int | None = None  # the seed of requests that give none (None: fresh noise from secrets per request)


#: What a request may set (a query, form fields, or OIP ``parameters``); the rest is the server's command line.
REQUEST_PARAMETERS = ("k", "n", "alpha", "seed", "stop_at_radius")


@dataclass
class ServerState:
    """What the endpoints share: the model, the settings and the inference queue."""

    model: LoadedModel
    settings: ServeSettings
    queue: InferenceQueue | None = None

    def certificate(self, params: Mapping[str, Any], *, known_only: bool = True) -> dict[str, Any]:
        """The certificate settings of one request: ``params`` (k, n, alpha, seed, stop_at_radius, strings from a
        form, a query or JSON) checked against the server's limits, the rest from the settings; a missing seed
        (and no ``--seed`` of the server) stays ``None``: the worker draws it from :mod:`secrets` when the request
        runs, one seed per model call (:meth:`predict`). With ``known_only`` (``/v1/predict``) a parameter of
        another name is refused (400), never ignored: a client asking for ``resize`` or ``q`` would otherwise get
        the server's settings unawares (the Open Inference Protocol's ``parameters`` may carry a client's own
        keys, so ``/v2`` passes ``known_only=False``)."""
        s = self.settings
        unknown = sorted(set(params) - set(REQUEST_PARAMETERS))
        if unknown and known_only:
            raise RequestError(f"{unknown[0]}: not a request parameter (this server takes "
                               f"{', '.join(REQUEST_PARAMETERS)}; the others are its command line's settings)")
        k = _number(params, "k", int, s.k)
        if not 1 <= k <= len(self.model.class_names):
            raise RequestError(f"k: must be in [1, {len(self.model.class_names)}] (the number of classes), got {k}")
        n = _number(params, "n", int, s.n)
        if not 1 <= n <= s.max_n:
            raise RequestError(f"n: must be in [1, {s.max_n}] (--max-n of this server), got {n}")
        alpha = _number(params, "alpha", float, s.alpha)
        if not 0 < alpha < 1:
            raise RequestError(f"alpha: must be in (0, 1), got {alpha:g}")
        seed = _number(params, "seed", int, s.seed)
        if seed is not None and not 0 <= seed < 2**63:
            raise RequestError(f"seed: must be in [0, 2**63), got {seed}")
        radius = _number(params, "stop_at_radius", float, s.stop_at_radius)
        if radius is not None and not (radius > 0 and math.isfinite(radius)):
            raise RequestError(f"stop_at_radius: must be a positive number, got {radius:g}")
        rule = None if radius is None else StopRule(radius=radius, **s.stop_rule)
        return {"k": k, "n0": s.n0, "n": n, "alpha": alpha, "seed": seed,
                "batch_size": s.batch_size, "stop_rule": rule, "q": s.q}

    async def predict(self, batch: torch.Tensor, names: list[str],
                      certificate: dict[str, Any]) -> tuple[list[Any], int]:
        """The predictions of ``batch`` through the queue (503 when it is full, 504 past the time limit) and how
        many requests shared their model call (1: alone).

        A request without a seed whose n is below the forward batch size may be merged with the compatible
        requests waiting with it (:meth:`merge_key`): one call of the smoothed classifier, one fresh seed from
        :mod:`secrets` for all of them, each request's noise independent of the others'
        (:meth:`~multiguard.serving.predict.LoadedModel.predict_merged`). A seeded request runs alone and
        answers what ``multiguard predict --seed`` answers."""
        assert self.queue is not None, "the app's lifespan starts the queue"
        model = self.model

        def alone() -> list[Any]:
            seed = secrets.randbits(63) if certificate["seed"] is None else certificate["seed"]
            return model.predict(batch, names, **{**certificate, "seed": seed})

        try:
            return await self.queue.submit(alone, self.settings.time_limit, key=self.merge_key(certificate),
                                           images=batch.shape[0], payload=(batch, names, certificate))
        except QueueFullError as error:
            raise RequestError(str(error), 503, {"Retry-After": "1"}) from None
        except TimeoutError:
            raise RequestError(f"the request took longer than the server's time limit of "
                               f"{self.settings.time_limit:g} s", 504) from None

    @staticmethod
    def merge_key(certificate: dict[str, Any]) -> tuple | None:
        """What requests must share to be merged: every certificate setting (k, n0, n, alpha, batch size, stopping
        rule and its bounds, q); ``None`` (never merged) for a seeded request or one whose n fills forward batches
        alone (n at least the batch size)."""
        if certificate["seed"] is not None or certificate["n"] >= certificate["batch_size"]:
            return None
        return tuple(sorted((name, repr(value)) for name, value in certificate.items() if name != "seed"))

    def merge(self, payloads: Sequence[tuple[torch.Tensor, list[str], dict[str, Any]]]) -> list[list[Any]]:
        """The queue's merge: the ``(batch, names, certificate)`` of requests of one :meth:`merge_key` in one call
        of the smoothed classifier under one fresh seed from :mod:`secrets`; one list of predictions per request."""
        certificate = {name: value for name, value in payloads[0][2].items() if name != "seed"}
        return self.model.predict_merged([batch for batch, _, _ in payloads], [names for _, names, _ in payloads],
                                         seed=secrets.randbits(63), **certificate)


def _number(params: Mapping[str, Any], name: str, kind: type, default: Any) -> Any:
    value = params.get(name)
    if value is None or value == "":
        return default
    try:
        if kind is int and (isinstance(value, bool) or (isinstance(value, float) and not value.is_integer())):
            raise ValueError
        number = kind(value)
    except (TypeError, ValueError):
        raise RequestError(f"{name}: expected {'an integer' if kind is int else 'a number'}, got {value!r}") from None
    if kind is float and not math.isfinite(number):
        raise RequestError(f"{name}: expected a finite number, got {value!r}")
    return number

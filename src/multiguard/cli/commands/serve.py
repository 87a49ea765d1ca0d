"""``multiguard serve``: certified predictions over HTTP (FastAPI + uvicorn, the ``serve`` extra).

Every option of ``predict`` with the same defaults (they become each request's defaults), plus where to listen,
the token and the server's limits."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from multiguard.cli.commands.predict import _predict_options, apply_mode_of
from multiguard.cli.console import echo
from multiguard.cli.options import apply_threads, check_q_given, group, mode_args

SERVER = "server"
TOKEN_ENV = "MULTIGUARD_TOKEN"


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from multiguard.serving.app import ServeSettings, create_app
    except ImportError as error:
        raise ValueError(f"serve: needs the serve extra ({error.name} is missing): pip install 'multiguard[serve]'"
                         ) from None
    from multiguard.certificates.stop_rule import StopRule
    from multiguard.common.devices import resolve_device
    from multiguard.serving.predict import load_model

    if args.max_pixels is not None:
        os.environ["MULTIGUARD_MAX_IMAGE_PIXELS"] = str(args.max_pixels)
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None
    if args.host not in ("127.0.0.1", "localhost", "::1") and token is None:
        print(f"multiguard serve: warning: listening on {args.host} without a token: anyone who can reach this "
              f"port can use the model; set --token or {TOKEN_ENV}", file=sys.stderr, flush=True)
    check_q_given(args)
    apply_threads(args, echo)
    apply_mode_of(args)
    mode = mode_args(args, resolve_device(args.device), echo)
    model = load_model(args.checkpoint, k_prime=args.k_prime, sigma=args.sigma, device=args.device, **mode,
                       denoiser=args.denoiser, thresholds=args.threshold, threshold_scale=args.threshold_scale,
                       noise=args.noise)
    model.check_k(args.k)
    if (warning := model.spec.sigma_warning()) is not None:
        print(f"multiguard serve: {warning}", file=sys.stderr, flush=True)
    settings = ServeSettings(k=args.k, n0=args.n0, n=args.n, alpha=args.alpha, batch_size=args.batch_size,
                             stop_at_radius=args.stop_at_radius, stop_rule=StopRule.procedure_from(args), q=args.q,
                             resize=args.resize,
                             max_n=args.max_n, max_files=args.max_files, max_body_bytes=args.max_body_bytes,
                             max_queue=args.max_queue, max_batch_images=args.max_batch_images,
                             time_limit=args.time_limit, token=token,
                             model_name=args.model_name, seed=args.seed)
    if args.seed is not None:
        print(f"multiguard serve: warning: --seed {args.seed}: requests without a seed all get noise from this known "
              "seed (for tests; an attacker who knows it can aim inputs at the noise)", file=sys.stderr, flush=True)
    if settings.max_batch_images < 1:
        raise ValueError(f"max-batch-images: must be at least 1, got {settings.max_batch_images}")
    if settings.n > settings.max_n:
        raise ValueError(f"n: {settings.n} is over --max-n {settings.max_n}")
    app = create_app(model, settings)
    echo(f"multiguard serve: http://{args.host}:{args.port}/ ({args.checkpoint}; Ctrl-C or SIGTERM to stop)")
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=int(args.time_limit) + 1)
    # uvicorn finishes the requests in flight on SIGTERM/SIGINT, then raises the signal again for the handler it
    # found: with this one, that ends the command with status 0
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: None)
    uvicorn.Server(config).run()
    echo("multiguard serve: stopped")
    return 0


def _serve_options(p: argparse.ArgumentParser) -> None:
    _predict_options(p, images=False)
    p.set_defaults(seed=None)  # no server-wide seed unless asked: each request draws fresh noise
    add_server(p)


def add_server(p: argparse.ArgumentParser) -> None:
    """Where ``serve`` listens, its token and its limits."""
    p = group(p, SERVER)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface; set a token)")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument("--token", default=None, help=f"require 'Authorization: Bearer TOKEN' (default: ${TOKEN_ENV})")
    p.add_argument("--model-name", default="multiguard", metavar="NAME", help="the model's name in /v2/models/NAME")
    p.add_argument("--max-n", type=int, default=100_000, metavar="N", help="the most samples a request may ask for")
    p.add_argument("--max-files", type=int, default=16, metavar="N", help="images per request")
    p.add_argument("--max-body-bytes", type=int, default=20 * 2**20, metavar="B", help="request body limit (413)")
    p.add_argument("--max-pixels", type=int, default=None, metavar="P",
                   help="pixels per image (default: $MULTIGUARD_MAX_IMAGE_PIXELS or the library's limit)")
    p.add_argument("--max-queue", type=int, default=16, metavar="N", help="requests waiting for the model (503 past)")
    p.add_argument("--max-batch-images", type=int, default=32, metavar="N",
                   help="dynamic batching: the most images of waiting requests without a seed and with the same "
                        "settings run in one model call when n is below --batch-size (1: each request alone)")
    p.add_argument("--time-limit", type=float, default=60.0, metavar="S", help="seconds per request, queue included")

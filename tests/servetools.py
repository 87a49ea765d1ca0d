"""Helpers for the tests of ``multiguard serve``: start the server as a user does (a real process on a free local
port) and talk to it with a plain HTTP client (urllib)."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
from clitools import command, env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``multiguard serve ARGS`` on a free port of 127.0.0.1, ready once ``/health`` answers."""

    def __init__(self, checkpoint: Path, *args: str, extra_env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {**env(), **(extra_env or {})}
        self.process = subprocess.Popen(
            [*command(), "serve", "--checkpoint", str(checkpoint), "--device", "cpu", "--port", str(self.port), *args],
            env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited {self.process.returncode}: {self.process.stderr.read()}")
            try:
                if self.get("/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise AssertionError("serve did not answer /health within 120 s")

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                timeout: float = 120) -> tuple[int, dict, dict]:
        """``(status, JSON answer, headers)`` of one request (4xx and 5xx answers too)."""
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as answer:
                return answer.status, json.loads(answer.read()), {k.lower(): v for k, v in answer.headers.items()}
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read()), {k.lower(): v for k, v in error.headers.items()}

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict, dict]:
        return self.request("GET", path, headers=headers)

    def predict(self, files: list[tuple[str, bytes]], fields: dict[str, str] | None = None, query: str = "",
                headers: dict[str, str] | None = None) -> tuple[int, dict, dict]:
        body, content_type = multipart(files, fields or {})
        return self.request("POST", "/v1/predict" + query, body, {"Content-Type": content_type, **(headers or {})})

    def post_json(self, path: str, value: object, headers: dict[str, str] | None = None) -> tuple[int, dict, dict]:
        """POST ``value`` as a JSON body (``application/json``)."""
        return self.request("POST", path, json.dumps(value).encode(),
                            {"Content-Type": "application/json", **(headers or {})})

    def stop(self) -> tuple[int, str]:
        """SIGTERM, then the exit status and stderr."""
        if self.process.poll() is None:
            self.process.terminate()
        try:
            _, err = self.process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, err = self.process.communicate()
        return self.process.returncode, err


def multipart(files: list[tuple[str, bytes]], fields: dict[str, str]) -> tuple[bytes, str]:
    """A multipart/form-data body with each file in the field ``image`` and ``fields`` as text fields."""
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for filename, data in files:
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
                  "Content-Type: application/octet-stream\r\n\r\n".encode())
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def digit_images(folder: Path, count: int = 2) -> list[Path]:
    """``count`` multidigits test images written as 8-bit PNG files in ``folder``."""
    from PIL import Image

    from multiguard.data import get_dataset

    images = get_dataset("multidigits", split="test", size=count, seed=0)
    paths = []
    for i in range(count):
        pixels = (images[i][0][0].numpy() * 255).round().astype(np.uint8)
        path = folder / f"digit{i}.png"
        Image.fromarray(pixels, mode="L").save(path)
        paths.append(path)
    return paths

"""Helpers for the download tests: a real HTTP server on the loopback interface and small archives in the
real VOC 2007 and COCO 2014 layouts.

The server (``http.server`` in a thread) answers GET with the bytes registered for a path, honours
``Range: bytes=N-`` with 206 and a Content-Range, counts the bytes it sends per path, records every Range
header, and can drop the connection after a number of bytes (announcing the full length first, as a server
whose connection breaks does). Unknown paths get 404.
"""

from __future__ import annotations

import hashlib
import io
import json
import socket
import tarfile
import threading
import zipfile
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

VOC_CLASSES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
]  # fmt: skip


@dataclass
class Served:
    """What the server holds and what it did."""

    files: dict[str, bytes] = field(default_factory=dict)
    drop_after: dict[str, list[int]] = field(default_factory=dict)  # path -> byte counts of the next drops
    ignore_range: set[str] = field(default_factory=set)
    stall_after: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before the response hangs
    stalled: threading.Event = field(default_factory=threading.Event)  # set once a response hangs
    release: threading.Event = field(default_factory=threading.Event)  # set to end the hanging responses
    bytes_sent: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)

    def total_sent(self) -> int:
        return sum(self.bytes_sent.values())


def _handler(served: Served) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path = self.path
            range_header = self.headers.get("Range")
            served.requests.append((path, range_header))
            if path not in served.files:
                self.send_error(404, "Not Found")
                return
            data = served.files[path]
            start = 0
            if range_header and path not in served.ignore_range:
                start = int(range_header.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            stall = served.stall_after.pop(path, None)
            if stall is not None:  # send part of the file, then hang (a client killed now leaves its .part)
                self.wfile.write(body[:stall])
                self.wfile.flush()
                served.bytes_sent[path] += min(stall, len(body))
                served.stalled.set()
                served.release.wait(60)
                self.close_connection = True
                return
            drops = served.drop_after.get(path)
            if drops:
                cut = drops.pop(0)
                self.wfile.write(body[:cut])
                self.wfile.flush()
                served.bytes_sent[path] += min(cut, len(body))
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(body)
            served.bytes_sent[path] += len(body)

    return Handler


@contextmanager
def http_server():
    """Yield ``(base_url, served)`` for a server on 127.0.0.1 (a free port), stopped on exit."""
    served = Served()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(served))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", served
    finally:
        served.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def closed_port_url(path: str = "/file") -> str:
    """A loopback URL on which nothing listens (connection refused): a dead host."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


# --------------------------------------------------------------------------------- archives


def jpeg_bytes(color: tuple[int, int, int], size: tuple[int, int] = (20, 14)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG")
    return buffer.getvalue()


def _tar(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zipped:
        for name, data in members.items():
            zipped.writestr(zipfile.ZipInfo(name, date_time=(2014, 1, 1, 0, 0, 0)), data)
    return buffer.getvalue()


# image id -> present classes, per VOC split (difficult marks are covered by tests/test_data.py)
VOC_SPLITS = {
    "trainval": {"000005": ["dog", "person"], "000007": ["cat"], "000012": ["aeroplane", "tvmonitor"]},
    "test": {"000001": ["person"], "000002": ["train"]},
}


def voc_tar(split: str) -> bytes:
    """A VOCtrainval / VOCtest tar with VOC_SPLITS[split] in the real VOCdevkit/VOC2007 layout."""
    base = "VOCdevkit/VOC2007"
    marks = VOC_SPLITS[split]
    members = {}
    for i, (image_id, present) in enumerate(marks.items()):
        members[f"{base}/JPEGImages/{image_id}.jpg"] = jpeg_bytes((40 * i, 100, 200))
        objects = "".join(f"<object><name>{n}</name><difficult>0</difficult></object>" for n in present)
        members[f"{base}/Annotations/{image_id}.xml"] = f"<annotation>{objects}</annotation>".encode()
    members[f"{base}/ImageSets/Main/{split}.txt"] = "".join(f"{i}\n" for i in marks).encode()
    for name in VOC_CLASSES:
        lines = "".join(f"{i} {1 if name in present else -1:>2}\n" for i, present in marks.items())
        members[f"{base}/ImageSets/Main/{name}_{split}.txt"] = lines.encode()
    return _tar(members)


COCO_CATEGORIES = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 18, "name": "dog"}]
COCO_IMAGES = {  # split -> [(image id, category ids)]; an empty list: an image without annotations
    "train": [(9, [1]), (25, [3, 18]), (30, [])],
    "val": [(42, [18]), (73, [1, 3])],
}


def coco_file_name(split: str, image_id: int) -> str:
    return f"COCO_{split}2014_{image_id:012d}.jpg"


def coco_archives() -> dict[str, bytes]:
    """annotations_trainval2014.zip, train2014.zip and val2014.zip in the real COCO 2014 layout."""
    annotations = {}
    archives = {}
    for split, images in COCO_IMAGES.items():
        records = [{"id": i, "file_name": coco_file_name(split, i), "width": 20, "height": 14} for i, _ in images]
        anns = [{"id": 100 * i + c, "image_id": i, "category_id": c, "bbox": [1, 1, 3, 3], "iscrowd": 0, "area": 9}
                for i, cats in images for c in cats]
        annotations[f"annotations/instances_{split}2014.json"] = json.dumps(
            {"images": records, "annotations": anns, "categories": COCO_CATEGORIES}).encode()
        archives[f"{split}2014.zip"] = _zip(
            {f"{split}2014/{coco_file_name(split, i)}": jpeg_bytes((i * 3 % 255, 50, 90)) for i, _ in images})
    archives["annotations_trainval2014.zip"] = _zip(annotations)
    return archives


def file_entry(name: str, data: bytes, urls: list[str], unpack: str, check: list[str],
               counts: dict[str, int] | None = None, **extra) -> dict:
    """A manifest entry for ``data`` with its real size, md5 and sha256."""
    return {"name": name, "urls": urls, "size": len(data), "md5": hashlib.md5(data).hexdigest(),
            "sha256": hashlib.sha256(data).hexdigest(), "unpack": unpack, "into": "", "check": check,
            "counts": counts or {}, "licence": "test data", **extra}

"""The HTTP protocol for asking a served model, with a server and a client.

``POST URL`` with ``{"images": [...]}``, a nested list of shape (n, C, H, W) of pixel
values in [0, 1] (n <= ``max_batch``), answers ``200 {"labels": [...]}``: n top-1 class
labels, in order. ``GET URL`` answers ``{"input_shape": [C, H, W], "num_classes": K,
"max_batch": B}``. Errors answer 4xx with ``{"error": "..."}``. JSON only, no pickle,
so neither side ever runs code the other sent. The client sends the queries in
batches, each with a timeout; every failure is an AnswersError (exit 2).
"""

from __future__ import annotations

import json
import math
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import numpy as np
import torch
from torch import nn

from securemark_mpc.blackbox.trace import AnswersError, check_labels
from securemark_mpc.models import ModelSpec

MAX_BATCH = 256
BYTES_PER_PIXEL = 32  # generous JSON text per float, for the request size limit
PREDICT_PATH = "/predict"


class ModelServer(ThreadingHTTPServer):
    """Serves one model's top-1 answers at ``PREDICT_PATH``; ``port=0`` picks a free port."""

    daemon_threads = True

    def __init__(self, *, model: nn.Module, spec: ModelSpec, host: str, port: int) -> None:
        self.model, self.spec = model.eval(), spec
        self.lock = threading.Lock()
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}{PREDICT_PATH}"

    def describe(self) -> dict:
        return {
            "input_shape": list(self.spec.input_shape),
            "num_classes": self.spec.num_classes,
            "max_batch": MAX_BATCH,
        }

    def predict(self, payload: object) -> list[int]:
        """Top-1 labels for a request body; ValueError with a message for a bad one."""
        if not isinstance(payload, dict) or "images" not in payload:
            raise ValueError('the body must be a JSON object {"images": [...]}')
        try:
            images = torch.tensor(payload["images"], dtype=torch.float32)
        except (TypeError, ValueError):
            raise ValueError('"images" must be a rectangular nested list of numbers') from None
        shape = tuple(self.spec.input_shape)
        if images.ndim != 4 or tuple(images.shape[1:]) != shape:
            raise ValueError(f'"images" must have shape (n, {", ".join(map(str, shape))})')
        if not 1 <= len(images) <= MAX_BATCH:
            raise ValueError(f"send between 1 and {MAX_BATCH} images per request")
        if not torch.isfinite(images).all():
            raise ValueError('"images" holds NaN or infinite values')
        with self.lock, torch.no_grad():
            return self.model(images).argmax(dim=1).tolist()


@contextmanager
def serving(
    *, model: nn.Module, spec: ModelSpec, host: str = "127.0.0.1", port: int = 0
) -> Iterator[ModelServer]:
    """A server answering in a background thread for the duration of the block."""
    with ModelServer(model=model, spec=spec, host=host, port=port) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield server
        finally:
            server.shutdown()
            thread.join(timeout=10)


class _Handler(BaseHTTPRequestHandler):
    server: ModelServer

    def _reply(self, status: HTTPStatus, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if urlsplit(self.path).path != PREDICT_PATH:
            return self._reply(HTTPStatus.NOT_FOUND, {"error": f"use {PREDICT_PATH}"})
        self._reply(HTTPStatus.OK, self.server.describe())

    def do_POST(self) -> None:  # noqa: N802
        if urlsplit(self.path).path != PREDICT_PATH:
            return self._reply(HTTPStatus.NOT_FOUND, {"error": f"use {PREDICT_PATH}"})
        limit = MAX_BATCH * math.prod(self.server.spec.input_shape) * BYTES_PER_PIXEL + 1024
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return self._reply(HTTPStatus.LENGTH_REQUIRED, {"error": "Content-Length required"})
        if not 0 < length <= limit:
            return self._reply(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"body must be 1..{limit} bytes"}
            )
        try:
            labels = self.server.predict(json.loads(self.rfile.read(length)))
        except (ValueError, UnicodeDecodeError) as error:
            return self._reply(HTTPStatus.BAD_REQUEST, {"error": str(error)})
        self._reply(HTTPStatus.OK, {"labels": labels})

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Quiet: one served batch is not worth a line on the console."""


@dataclass(frozen=True)
class EndpointClient:
    """Asks a served model for top-1 labels, ``batch_size`` images per request."""

    url: str
    timeout: float = 30.0
    batch_size: int = 100

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise AnswersError(f"{self.url!r} is not an http(s) URL")
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be in 1..{MAX_BATCH}")

    def _post(self, images: np.ndarray) -> object:
        body = json.dumps({"images": images.tolist()}).encode()
        request = urllib.request.Request(
            self.url, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise AnswersError(f"{self.url}: the endpoint answered HTTP {error.code}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise AnswersError(f"{self.url}: could not query the endpoint ({reason})") from None
        except ValueError:
            raise AnswersError(f"{self.url}: the endpoint's answer is not JSON") from None

    def labels(self, images: np.ndarray, *, num_classes: int) -> np.ndarray:
        """Top-1 labels of every image, validated like an answers file."""
        answered = []
        for start in range(0, len(images), self.batch_size):
            batch = images[start : start + self.batch_size]
            reply = self._post(batch)
            if not isinstance(reply, dict) or "labels" not in reply:
                raise AnswersError(f'{self.url}: the answer is not {{"labels": [...]}}')
            answered.append(
                check_labels(
                    reply["labels"], count=len(batch), num_classes=num_classes, source=self.url
                )
            )
        return np.concatenate(answered)

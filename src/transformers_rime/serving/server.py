"""`build_server` / `serve`: a LitServe server around [`RimeEmbeddingAPI`] with the operations a deployment needs.

- `POST /v1/embeddings` (OpenAI's shape; RIME's switches as extra body fields), batched by LitServe;
- `GET /health` (the process is up), `GET /ready` (every inference worker has loaded the model: LitServe's own
  health check), `GET /v1/models`, `GET /metrics` (Prometheus);
- a bearer API key (`api_key`), a bound on the requests in flight (`max_in_flight`: beyond it a 503 with
  `Retry-After`, never a hang), a body-size bound (LitServe's `max_payload_size`: 413) and a request timeout
  (LitServe: 504).

Scaling: `devices` / `workers_per_device` start one inference worker (one model copy) per device and worker on one
machine, and LitServe spreads requests over them; across machines, run one server per machine behind any HTTP
load balancer (the server keeps no state between requests).
"""

from __future__ import annotations

import os
import secrets
import signal
import tempfile
import time

import litserve as ls
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from .api import RimeEmbeddingAPI, error_response
from .requests import ServeLimits


OPEN_PATHS = ("/health", "/ready")  # probes answer without the API key


class ApiKeyMiddleware:
    """ASGI middleware: every path but the probes needs `Authorization: Bearer <api_key>` (else a 401)."""

    def __init__(self, app, api_key: str):
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not secrets.compare_digest(given, self.expected):
                response = error_response(401, "missing or invalid API key (send `Authorization: Bearer <key>`).")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class InFlightLimitMiddleware:
    """ASGI middleware: at most `max_in_flight` embedding requests accepted at once per API process; one more is
    answered at once with a 503 and `Retry-After`, so an overloaded server sheds load instead of letting requests
    wait until they time out. It also records the request metrics (count by status, latency, requests in flight)."""

    def __init__(self, app, max_in_flight: int, path: str = "/v1/embeddings", retry_after: int = 1):
        self.app = app
        self.max_in_flight = max_in_flight
        self.path = path
        self.retry_after = retry_after
        self.in_flight = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        from . import metrics

        if self.in_flight >= self.max_in_flight:
            metrics.REQUESTS.labels(status="503").inc()
            message = f"the server is at its limit of {self.max_in_flight} requests in flight; retry shortly."
            await error_response(503, message, {"Retry-After": str(self.retry_after)})(scope, receive, send)
            return
        status = {"code": 500}

        async def record_status(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        self.in_flight += 1
        metrics.IN_FLIGHT.inc()
        start = time.perf_counter()
        try:
            await self.app(scope, receive, record_status)
        finally:
            self.in_flight -= 1
            metrics.IN_FLIGHT.dec()
            metrics.REQUESTS.labels(status=str(status["code"])).inc()
            metrics.LATENCY.observe(time.perf_counter() - start)


class PrometheusLogger(ls.Logger):
    """Receives what the inference workers log (`LitAPI.log`), in LitServe's logger process."""

    def process(self, key, value):
        from . import metrics

        metrics.record(key, value)


def build_server(
    model: str,
    *,
    api_key: str | None = None,
    limits: ServeLimits | None = None,
    max_batch_size: int = 8,
    batch_timeout: float = 0.01,
    max_in_flight: int = 64,
    max_body_bytes: int = 64 * 1024 * 1024,
    timeout: float = 120.0,
    encode_batch_size: int = 16,
    max_length: int | None = None,
    model_name: str | None = None,
    accelerator: str = "auto",
    devices="auto",
    workers_per_device: int = 1,
    loading_kwargs: dict | None = None,
) -> ls.LitServer:
    """The server for `model` (see the module docstring); `serve` runs it.

    Args:
        model: a RIME directory or Hub id.
        api_key: require `Authorization: Bearer <api_key>` (probes excepted).
        limits: per-request [`ServeLimits`] (items, text, pixels, bytes, frames, rewrite budget, media access).
        max_batch_size / batch_timeout: how many requests LitServe batches together, and how long it waits for them.
        max_in_flight: embedding requests accepted at once per API process before answering 503.
        max_body_bytes: the largest request body (413 beyond it).
        timeout: seconds a request may wait for its answer (504 beyond it).
        encode_batch_size / max_length / loading_kwargs: passed to [`RimeEmbeddingAPI`].
        model_name: the name the API reports (default: `model`).
        accelerator / devices / workers_per_device: LitServe's placement of the inference workers.
    """
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="rime-metrics-"))
    model_name = model_name or str(model)
    api = RimeEmbeddingAPI(
        model,
        limits=limits,
        model_name=model_name,
        encode_batch_size=encode_batch_size,
        max_length=max_length,
        max_batch_size=max_batch_size,
        batch_timeout=batch_timeout,
        loading_kwargs=loading_kwargs,
    )
    middlewares = [(InFlightLimitMiddleware, {"max_in_flight": max_in_flight})]
    if api_key:
        middlewares.append((ApiKeyMiddleware, {"api_key": api_key}))  # added last: runs first
    server = ls.LitServer(
        api,
        accelerator=accelerator,
        devices=devices,
        workers_per_device=workers_per_device,
        timeout=timeout,
        healthcheck_path="/ready",
        max_payload_size=max_body_bytes,
        middlewares=middlewares,
        loggers=PrometheusLogger(),
        model_metadata={"model": model_name},
    )

    async def alive():
        return JSONResponse({"status": "ok"})

    async def models():
        entry = {"id": model_name, "object": "model", "created": 0, "owned_by": "transformers_rime"}
        return JSONResponse({"object": "list", "data": [entry]})

    async def exposition():
        from . import metrics

        content, content_type = metrics.exposition()
        return Response(content, media_type=content_type)

    async def not_a_json_object(request, error: RequestValidationError):
        return error_response(400, "the body must be a JSON object (OpenAI's embeddings request).")

    server.app.add_exception_handler(RequestValidationError, not_a_json_object)
    server.app.add_api_route("/health", alive, methods=["GET"])
    server.app.add_api_route("/metrics", exposition, methods=["GET"])
    server.app.add_api_route("/v1/models", models, methods=["GET"])
    return server


def serve(model: str, host: str = "127.0.0.1", port: int = 8000, num_api_servers: int | None = None, **kwargs):
    """Build the server (`build_server(model, **kwargs)`) and run it until interrupted.

    SIGTERM (what process managers and Kubernetes send) shuts down as Ctrl-C does: LitServe stops its HTTP servers,
    which first finish the requests already accepted, and only then stops the inference workers.
    """
    server = build_server(model, **kwargs)
    signal.signal(signal.SIGTERM, _interrupt)
    server.run(host=host, port=port, num_api_servers=num_api_servers, generate_client_file=False)


def _interrupt(signum, frame):
    raise KeyboardInterrupt

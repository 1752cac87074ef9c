"""The ASGI application: KServe v2 routes on Starlette.

Endpoints (``{m}`` a model name; each ``/v2/models/{m}/...`` route also exists
as ``/v2/models/{m}/versions/{v}/...``)::

    GET  /v2/health/live          GET /v2/health/ready          GET /v2
    GET  /v2/models/{m}           GET /v2/models/{m}/ready
    POST /v2/models/{m}/infer     (JSON tensors, or Triton's binary tensor extension)
    GET  /v2/models/{m}/config    GET /v2/models/{m}/stats      GET /v2/models/stats
    POST /v2/models/{m}/classify  (multipart image in, top-k out)
    GET  /metrics                 (Prometheus text)

The event loop only parses and answers; models run in a thread pool through
each model's :class:`~edgeinfer.serve.batching.Batcher`.  Request bodies are
read with a size limit (413) and a deadline (408), as request headers are
(:mod:`.transport`), so a slow or huge upload costs a coroutine for a bounded
time, never a model thread.
"""

import asyncio
import concurrent.futures
import contextlib
import io
import json
import logging
import time

import numpy as np

from .. import __version__
from ..errors import EdgeInferError, InputError
from ..lazy import require
from . import metrics as prom
from .batching import Batcher
from .protocol import HEADER_LENGTH, HTTPError, bad, encode_infer, parse_infer, parse_json
from .protocol import split_body

LOG = logging.getLogger("edgeinfer.serve")

# Bodies larger than this are parsed and encoded in a thread, so one big JSON
# request does not stall every other connection on the event loop.
OFFLOAD_BYTES = 256 * 1024

EXTENSIONS = ["binary_tensor_data", "model_configuration", "statistics", "classify"]


class Options(object):
    """The server's limits and batching settings; see ``edgeinfer serve --help``.

    Args:
        max_batch: most rows stacked into one run (default 1: no batching).
        max_delay_ms: longest a request waits to be stacked (default 0).
        max_queue: requests waiting per model before 503 (default 64).
        instances: runs in flight per model (default None: for ONNX Runtime models
            :func:`edgeinfer.serve.repository.default_instances`, else 1).
        timeout_s: per-request limit on queueing plus running, 504 after (default 30).
        client_timeout_s: longest a client may take to send a request's headers, and
            again its body; after it, 408 and the connection is closed (default 30).
        max_body_bytes: largest request body, 413 beyond (default 64 MiB).
        drain_s: on shutdown, longest wait for queued requests (default 10).
    """

    def __init__(self, max_batch=1, max_delay_ms=0.0, max_queue=64, instances=None, timeout_s=30.0,
                 client_timeout_s=30.0, max_body_bytes=64 << 20, drain_s=10.0):
        self.max_batch = max_batch
        self.max_delay_ms = max_delay_ms
        self.max_queue = max_queue
        self.instances = instances
        self.timeout_s = timeout_s
        self.client_timeout_s = client_timeout_s
        self.max_body_bytes = max_body_bytes
        self.drain_s = drain_s


def _endpoint_of(path):
    """A small fixed label for a path (never the raw path: unbounded label values)."""
    tail = path.rstrip("/").rsplit("/", 1)[-1]
    if tail in ("infer", "classify", "ready", "live", "config", "stats", "metrics"):
        return tail
    return "metadata" if path.startswith("/v2") else "other"


class Server(object):
    """The state behind the routes: models, options, metrics.

    Args:
        repository: the :class:`~edgeinfer.serve.repository.Repository` to serve.
        options: an :class:`Options`.
        cache: the :class:`edgeinfer.Cache` the sessions share, or None.
    """

    def __init__(self, repository, options, cache=None):
        self.repository = repository
        self.options = options
        self.cache = cache
        self.ready = False
        workers = sum(model.instances for model in repository.all())
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, workers), thread_name_prefix="edgeinfer-model")
        self.registry = prom.Registry()
        self._build_metrics()
        for model in repository.all():
            model.batcher = Batcher(model, self.executor, options.max_batch, options.max_delay_ms,
                                    options.max_queue, model.instances,
                                    observe=self._observer(model))

    def _build_metrics(self):
        add = self.registry.add
        self.m_requests = add(prom.Counter(
            "edgeinfer_requests_total", "HTTP requests answered, by endpoint and status code.",
            ("endpoint", "code")))
        self.m_latency = add(prom.Histogram(
            "edgeinfer_request_duration_seconds", "Time from request to response, by endpoint.",
            ("endpoint",)))
        self.m_infer = add(prom.Counter(
            "edgeinfer_inference_requests_total", "Inference requests by model and outcome.",
            ("model", "version", "outcome")))
        models = self.repository.all()
        add(prom.Gauge("edgeinfer_queue_depth", "Requests waiting to run, by model.",
                       ("model", "version"),
                       read=lambda: [((m.name, m.version), m.batcher.depth) for m in models]))
        add(prom.Gauge("edgeinfer_runs_in_flight", "Model runs executing now, by model.",
                       ("model", "version"),
                       read=lambda: [((m.name, m.version), m.batcher.busy) for m in models]))
        self.m_batch = add(prom.Histogram(
            "edgeinfer_batch_size", "Rows per model run (dynamic batching stacks requests).",
            ("model", "version"), buckets=prom.BATCH_BUCKETS))
        self.m_run = add(prom.Histogram(
            "edgeinfer_model_run_seconds", "Time one model run (a batch) takes.",
            ("model", "version")))
        add(prom.Gauge("edgeinfer_model_load_seconds", "Time loading each bundle took.",
                       ("model", "version"),
                       read=lambda: [((m.name, m.version), round(m.load_s, 6)) for m in models]))
        add(prom.ScrapedCounter("edgeinfer_cache_hits_total", "Result cache hits, by tier.",
                                ("tier",), read=lambda: self._cache_counts("hits")))
        add(prom.ScrapedCounter("edgeinfer_cache_misses_total", "Result cache misses, by tier.",
                                ("tier",), read=lambda: self._cache_counts("misses")))

    def count_header_timeout(self):
        """A connection closed for sending its headers too slowly (see :mod:`.transport`)."""
        self.m_requests.inc("headers", "408")

    def _cache_counts(self, what):
        if self.cache is None:
            return []
        tiers = self.cache.stats()["tiers"]
        return [((name,), info.get(what, 0)) for name, info in sorted(tiers.items())]

    def _observer(self, model):
        labels = (model.name, model.version)

        def observe(rows, seconds):
            self.m_batch.observe(*labels, value=rows)
            self.m_run.observe(*labels, value=seconds)
        return observe

    async def startup(self):
        for model in self.repository.all():
            model.batcher.start()
        self.ready = True

    async def shutdown(self):
        """Drain: uvicorn has already waited for open requests; finish the queues, close."""
        self.ready = False
        await asyncio.gather(*[m.batcher.close(self.options.drain_s)
                               for m in self.repository.all()])
        self.executor.shutdown(wait=True)
        self.repository.close()
        if self.cache is not None:
            self.cache.close()

    # -- request helpers -------------------------------------------------------------------

    def model(self, request):
        params = request.path_params
        name, version = params["model"], params.get("version")
        model = self.repository.find(name, version)
        if model is None:
            known = ", ".join("{} (v{})".format(m.name, m.version) for m in self.repository.all())
            what = "Model {!r}".format(name) + (" version {}".format(version) if version else "")
            raise HTTPError(404, "{} is not served here. Note: models: {}.".format(what, known))
        return model

    async def body(self, request, header_length=None):
        """The request body (bytes-like): at most ``max_body_bytes`` (413), arriving
        within ``client_timeout_s`` (408, and the connection is closed).

        With ``header_length`` (the Inference-Header-Content-Length text), the body is
        placed so that the binary part after that many bytes starts 64-byte aligned,
        which numpy arrays viewing it, and the backend reading them, want.
        """
        limit = self.options.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HTTPError(413, "The request body is {} bytes; the limit is {}.".format(
                declared, limit))
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise HTTPError(415, "Content-Encoding {!r} is not supported; send the body "
                                 "uncompressed.".format(encoding))
        try:
            return await asyncio.wait_for(self._read(request, declared, limit, header_length),
                                          self.options.client_timeout_s)
        except asyncio.TimeoutError:
            raise HTTPError(408, "The request body did not arrive within {:g} s. Note: "
                                 "--client-timeout-s sets the limit.".format(
                                     self.options.client_timeout_s), {"Connection": "close"})

    @staticmethod
    async def _read(request, declared, limit, header_length):
        """The body, as a bytearray or a view of one.  With a Content-Length the buffer is
        made once at that size and each chunk is copied into place: a 600 KB tensor upload
        is not joined from chunks, and the tensors are then numpy views into this buffer
        (issue 8)."""
        receive = request.receive
        size = int(declared) if declared is not None and declared.isdigit() else None
        pad = 0
        if size is not None and header_length is not None and header_length.isdigit():
            pad = -int(header_length) % 64
        body = bytearray(pad + (size or 0))
        # A fixed-size buffer is written through a view; a chunked one grows (no view then,
        # since a bytearray with a view cannot be resized).
        view = memoryview(body)[pad:] if size is not None else None
        filled = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise HTTPError(400, "The client closed the connection before sending its body.")
            chunk = message.get("body", b"")
            more = message.get("more_body", False)
            end = filled + len(chunk)
            if size is None:
                if end > limit:
                    raise HTTPError(413, "The request body is over the limit of {} "
                                         "bytes.".format(limit))
                body += chunk
            elif end > size:
                raise bad("The body is longer than its Content-Length of {} bytes.".format(size))
            else:
                view[filled:end] = chunk
            filled = end
        if view is not None:
            view.release()
        if size is not None and filled != size:
            raise bad("The body has {} bytes, but its Content-Length says {}.".format(
                filled, size))
        return memoryview(body)[pad:] if pad else body

    async def run(self, model, feeds, rows):
        """Queue one request on the model; map errors to statuses.

        Returns:
            ``(outputs, queue_ns, run_ns)``; the caller records the success with
            :meth:`ServedModel.record_success` once the answer is encoded.
        """
        start = time.perf_counter_ns()
        labels = (model.name, model.version)
        try:
            answer = await model.batcher.submit(feeds, rows, self.options.timeout_s)
        except BaseException as exc:
            model.record_failure(time.perf_counter_ns() - start)
            outcome = "rejected" if isinstance(exc, HTTPError) and exc.status == 503 else "failed"
            self.m_infer.inc(*labels, outcome, amount=1)
            raise
        self.m_infer.inc(*labels, "success")
        return answer


def build_app(server):
    """The Starlette application serving ``server``'s models."""
    require("starlette", "the HTTP server")
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    def answer(data, status=200, headers=None):
        return Response(json.dumps(data, separators=(",", ":")), status_code=status,
                        headers=headers, media_type="application/json")

    def handler(func):
        # Every route answers errors as {"error": "..."} with the right status;
        # anything unexpected is a 500 that is logged, never a dropped connection.
        async def wrapped(request):
            try:
                return await func(request)
            except HTTPError as exc:
                return answer({"error": exc.message}, exc.status, exc.headers)
            except InputError as exc:
                return answer({"error": str(exc)}, 400)
            except EdgeInferError as exc:
                LOG.warning("request failed: %s", exc)
                return answer({"error": str(exc)}, 500)
            except Exception as exc:
                LOG.exception("internal error on %s", request.url.path)
                return answer({"error": "internal error: {}: {}".format(
                    type(exc).__name__, exc)}, 500)
        return wrapped

    async def live(request):
        return answer({"live": True})

    async def ready(request):
        if not server.ready:
            return answer({"ready": False, "error": "The server is starting or stopping."}, 503)
        return answer({"ready": True})

    async def server_metadata(request):
        return answer({"name": "edgeinfer", "version": __version__, "extensions": EXTENSIONS})

    async def model_metadata(request):
        return answer(server.model(request).metadata())

    async def model_ready(request):
        server.model(request)
        if not server.ready:
            return answer({"ready": False, "error": "The server is starting or stopping."}, 503)
        return answer({"ready": True})

    async def model_config(request):
        return answer(server.model(request).config(server.options.max_batch,
                                                   server.options.max_delay_ms))

    async def model_stats(request):
        models = ([server.model(request)] if "model" in request.path_params
                  else server.repository.all())
        return answer({"model_stats": [m.statistics() for m in models]})

    async def infer(request):
        model = server.model(request)
        header_length = request.headers.get(HEADER_LENGTH)
        body = await server.body(request, header_length)
        clock = time.perf_counter_ns
        start = clock()
        header, tail = split_body(body, header_length)

        def parse():
            return parse_infer(parse_json(header), tail, model)
        # Binary tensors are numpy views of the body, so only the JSON is work: a big JSON
        # body is parsed in a thread, a small header (the binary case) here, with no hop.
        loop = asyncio.get_running_loop()
        big = len(header) > OFFLOAD_BYTES
        parsed = await loop.run_in_executor(None, parse) if big else parse()
        parsed_at = clock()
        outputs, queue_ns, run_ns = await server.run(model, parsed.feeds, parsed.rows)
        ran_at = clock()
        size = sum(v.nbytes for v in outputs.values())
        if size > OFFLOAD_BYTES:
            data, json_length = await loop.run_in_executor(None, encode_infer, model, parsed,
                                                           outputs)
        else:
            data, json_length = encode_infer(model, parsed, outputs)
        done = clock()
        model.record_success(parsed.rows, done - start, queue_ns, parsed_at - start, run_ns,
                             done - ran_at)
        if json_length is None:
            return Response(data, media_type="application/json")
        return Response(data, media_type="application/octet-stream",
                        headers={"Inference-Header-Content-Length": str(json_length)})

    async def classify(request):
        model = server.model(request)
        preprocess, spec = _classify_setup(model)
        top_k = _top_k(request.query_params.get("top_k", "5"))
        body = await server.body(request)

        async def replay():
            return {"type": "http.request", "body": body, "more_body": False}
        try:
            form = await Request(request.scope, replay).form(max_files=1, max_fields=16)
        except AssertionError as exc:   # Starlette's way of saying python-multipart is missing
            raise HTTPError(501, "Image upload needs python-multipart ({}). Note: install "
                                 "`pip install edgeinfer[serve]`.".format(exc))
        except HTTPException as exc:
            raise bad("The body is not a multipart form: {}.".format(exc.detail))
        upload = form.get("image")
        if upload is None or not hasattr(upload, "read"):
            raise bad("The form has no file field 'image'. Note: curl -F image=@cat.jpg "
                      "{}".format(request.url.path))
        data = await upload.read()
        await form.close()
        loop = asyncio.get_running_loop()
        start = time.perf_counter_ns()
        sample = await loop.run_in_executor(None, _image_sample, data, preprocess, spec)
        decoded = time.perf_counter_ns()
        outputs, queue_ns, run_ns = await server.run(model, {spec.name: sample}, 1)
        ran = time.perf_counter_ns()
        predictions = _top(outputs, model, top_k)
        done = time.perf_counter_ns()
        model.record_success(1, done - start, queue_ns, decoded - start, run_ns, done - ran)
        return answer({"model_name": model.name, "model_version": model.version,
                       "predictions": predictions})

    async def prometheus(request):
        return Response(server.registry.render(), media_type=prom.CONTENT_TYPE)

    async def not_found(request, exc):
        return answer({"error": "{} {}: {}.".format(request.method, request.url.path,
                                                    exc.detail or "not found")},
                      exc.status_code, getattr(exc, "headers", None))

    model_routes = [("", model_metadata, ["GET"]), ("/ready", model_ready, ["GET"]),
                    ("/infer", infer, ["POST"]), ("/config", model_config, ["GET"]),
                    ("/stats", model_stats, ["GET"]), ("/classify", classify, ["POST"])]
    routes = [
        Route("/v2/health/live", handler(live), methods=["GET"]),
        Route("/v2/health/ready", handler(ready), methods=["GET"]),
        Route("/v2", handler(server_metadata), methods=["GET"]),
        Route("/v2/models/stats", handler(model_stats), methods=["GET"]),
        Route("/metrics", handler(prometheus), methods=["GET"]),
    ]
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        routes.extend(Route(prefix + suffix, handler(func), methods=methods)
                      for suffix, func, methods in model_routes)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await server.startup()
        try:
            yield
        finally:
            await server.shutdown()
    app = Starlette(routes=routes, exception_handlers={HTTPException: not_found},
                    lifespan=lifespan)
    return _Metered(app, server)


class _Metered(object):
    """ASGI middleware counting every HTTP answer by endpoint and status, and timing it."""

    def __init__(self, app, server):
        self.app = app
        self.server = server

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = [500]

        async def watched(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)
        try:
            await self.app(scope, receive, watched)
        finally:
            endpoint = _endpoint_of(scope["path"])
            self.server.m_requests.inc(endpoint, str(status[0]))
            self.server.m_latency.observe(endpoint, value=time.perf_counter() - start)


# -- classify helpers --------------------------------------------------------------------


def _classify_setup(model):
    from ..preprocess import Preprocess
    recorded = model.session.manifest.get("preprocess")
    if not recorded or len(model.inputs) != 1:
        raise bad("Model {!r} has no image preprocessing recorded (or more than one input), "
                  "so it cannot classify images. Note: use /infer with tensors.".format(
                      model.name))
    return Preprocess.from_dict(recorded), model.inputs[0]


def _top_k(text):
    if not text.isdigit() or not 1 <= int(text) <= 1000:
        raise bad("top_k must be a whole number from 1 to 1000, not {!r}.".format(text))
    return int(text)


def _image_sample(data, preprocess, spec):
    """One batch-of-one input from image bytes (in a thread: decoding is CPU work)."""
    from PIL import Image
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            sample = preprocess.apply(image)
    except Exception as exc:   # Pillow raises many types for a file that is not an image
        raise bad("Field 'image' is not an image Pillow can read ({}: {}). Note: send a PNG, "
                  "JPEG or BMP file.".format(type(exc).__name__, str(exc)[:120]))
    batch = sample[np.newaxis]
    if batch.ndim != len(spec.shape) or any(
            isinstance(d, int) and d > 0 and d != s for d, s in zip(spec.shape, batch.shape)):
        raise bad("Input tensor: {} | The preprocessed image has shape {}, the model takes "
                  "{}.".format(spec.name, list(batch.shape), spec.describe()))
    return batch.astype(spec.dtype, copy=False)


def _top(outputs, model, top_k):
    """Top-k classes of the first output's first row, as softmax scores when it is logits."""
    name = model.output_names[0]
    row = np.asarray(outputs[name], dtype=np.float64).reshape(-1)
    if not (row.min() >= 0 and abs(row.sum() - 1) < 1e-3):
        row = np.exp(row - row.max())
        row /= row.sum()
    classes = model.session.manifest.get("classes") or []
    order = np.argsort(-row)[:top_k]
    return [{"index": int(i), "label": classes[i] if i < len(classes) else str(int(i)),
             "score": round(float(row[i]), 6)} for i in order]

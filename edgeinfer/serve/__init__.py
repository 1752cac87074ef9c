"""``edgeinfer serve``: an HTTP inference server speaking KServe v2 / Open Inference Protocol.

The protocol Triton, KServe and MLServer speak, so their clients (tritonclient,
KServe SDKs, perf_analyzer) work unchanged.  Parts:

* :mod:`.protocol` - requests and responses on the wire (JSON and binary tensors);
* :mod:`.repository` - the bundles served, by name and version;
* :mod:`.batching` - the bounded per-model queue, dynamic batching, runs off the loop;
* :mod:`.metrics` - Prometheus text;
* :mod:`.app` - the Starlette routes;
* :mod:`.transport` - uvicorn's HTTP protocol with a deadline on request headers.

Starlette and uvicorn come with ``pip install edgeinfer[serve]`` and are imported
only here, when a server starts.  Needs Python 3.8+.
"""

import logging
import sys

from ..errors import UsageError
from ..lazy import require

LOG = logging.getLogger("edgeinfer.serve")


def serve(paths, host="127.0.0.1", port=8000, cache=None, options=None, load_options=None,
          max_connections=1000, keep_alive_s=5.0):
    """Load the bundles and serve them until interrupted (SIGINT/SIGTERM drain and stop).

    Args:
        paths: the ``.eib`` bundles to serve.
        host: address to listen on (default ``"127.0.0.1"``; ``"0.0.0.0"`` for all).
        port: TCP port (default 8000; 0 picks a free one).
        cache: an :class:`edgeinfer.Cache` every model's session consults (default None).
        options: :class:`~edgeinfer.serve.app.Options` (default None: the defaults).
        load_options: keyword arguments for :func:`edgeinfer.load`, e.g.
            ``{"device": "GPU"}`` (default None).
        max_connections: open connections beyond which new ones get 503 (default 1000).
        keep_alive_s: an idle keep-alive connection is closed after this (default 5).

    Raises:
        MissingDependency: Starlette or uvicorn is not installed (``edgeinfer[serve]``).
        UsageError: Python older than 3.8, or bad options.
        BundleError, BackendError: a bundle that cannot be loaded.
    """
    if sys.version_info < (3, 8):
        raise UsageError("edgeinfer serve needs Python 3.8 or newer; this is {}.{}.".format(
            *sys.version_info[:2]), "Run it with python3.8+, or use `edgeinfer run`.")
    uvicorn = require("uvicorn", "the HTTP server")
    require("starlette", "the HTTP server")
    from .app import Options, Server, build_app
    from .repository import Repository
    from .transport import http_protocol
    options = options or Options()
    _check(options, port, max_connections)
    repository = Repository(paths, cache=cache, load_options=load_options,
                            instances=options.instances, max_batch=options.max_batch)
    for model in repository.all():
        LOG.info("loaded %s v%s in %.2f s (%s, batch %s, %d run(s) at a time)", model.name,
                 model.version, model.load_s, model.describe_inputs(),
                 "up to {} rows".format(options.max_batch) if model.batchable
                 and options.max_batch > 1 else "off", model.instances)
    server = Server(repository, options, cache)
    # No access log and no X-Forwarded-For rewriting: the server uses neither, and each
    # costs every request on the event loop.  The protocol class closes clients that send
    # their headers too slowly (uvicorn itself has no such limit).
    config = uvicorn.Config(
        build_app(server), host=host, port=port, log_level="warning", access_log=False,
        lifespan="on", limit_concurrency=max_connections, timeout_keep_alive=keep_alive_s,
        timeout_graceful_shutdown=options.drain_s, proxy_headers=False,
        http=http_protocol(options.client_timeout_s, server.count_header_timeout))
    try:
        sock = _listen(host, port)
    except BaseException:
        repository.close()
        raise
    LOG.info("serving %d model(s) on http://%s:%d (KServe v2; metrics at /metrics)",
             len(repository.all()), host, sock.getsockname()[1])
    uvicorn.Server(config).run(sockets=[sock])


def _listen(host, port):
    """A listening socket: bound here so a busy port is one clear error, and port 0
    (any free port) is known before the log line that names it."""
    import socket
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except (OSError, OverflowError) as exc:
        sock.close()
        raise UsageError("Cannot listen on {}:{}: {}.".format(host, port, getattr(
            exc, "strerror", None) or exc), "Choose another --port or --host.")
    sock.set_inheritable(True)
    return sock


def _check(options, port, max_connections):
    def whole(name, value, low):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise UsageError("{} must be a whole number >= {}, not {!r}.".format(name, low, value))

    def positive(name, value, zero=False):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                value >= 0 if zero else value > 0):
            raise UsageError("{} must be a number {} 0, not {!r}.".format(
                name, ">=" if zero else ">", value))
    whole("--port", port, 0)
    whole("--max-batch", options.max_batch, 1)
    whole("--max-queue", options.max_queue, 1)
    if options.instances is not None:
        whole("--instances", options.instances, 1)
    whole("--max-connections", max_connections, 1)
    whole("--max-body-mb", options.max_body_bytes, 1)
    positive("--max-delay-ms", options.max_delay_ms, zero=True)
    positive("--timeout-s", options.timeout_s)
    positive("--client-timeout-s", options.client_timeout_s)
    positive("--drain-s", options.drain_s, zero=True)

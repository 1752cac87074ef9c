"""The HTTP connection layer: uvicorn's HTTP/1.1 protocol with a deadline on request headers.

uvicorn closes an idle keep-alive connection, but it sets no limit on a client
that opens a connection and then sends its request line and headers slowly (or
never): each byte restarts its keep-alive timer, so a few hundred such clients
(slowloris) hold every connection slot and the server answers no one.  The
protocol here gives each request ``timeout_s`` from its first byte (or from the
moment the connection opens) to the end of its headers; a client that misses it
gets ``408 Request Timeout`` and the connection is closed.  The body has its own
deadline of the same length, kept by the route that reads it
(:meth:`edgeinfer.serve.app.Server.body`).

Only the asyncio ``Protocol`` methods (``connection_made``, ``data_received``,
``connection_lost``) are overridden; the one uvicorn attribute read is
``cycle``, the request in progress, which both of its HTTP/1.1 protocols set
once a request's headers are parsed.
"""

import importlib.util
import json

TIMEOUT_BODY = json.dumps({"error": "The request headers did not arrive in time; the "
                                    "connection is closed."}).encode()
TIMEOUT_RESPONSE = b"".join([
    b"HTTP/1.1 408 Request Timeout\r\n",
    b"content-type: application/json\r\n",
    b"content-length: ", str(len(TIMEOUT_BODY)).encode(), b"\r\n",
    b"connection: close\r\n\r\n", TIMEOUT_BODY])


def http_protocol(timeout_s, on_timeout=None):
    """uvicorn's HTTP/1.1 protocol class (httptools when installed, else h11) with a
    deadline on each request's headers.

    Args:
        timeout_s: seconds a client has to send a request's line and headers, counted
            from the connection opening or the request's first byte.
        on_timeout: called with no arguments each time a connection is closed for
            missing the deadline, for metrics (default None).

    Returns:
        A protocol class for ``uvicorn.Config(http=...)``.
    """
    # uvicorn's faster parser when httptools is installed, as its own "auto" picks.
    if importlib.util.find_spec("httptools") is not None:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Base
    else:
        from uvicorn.protocols.http.h11_impl import H11Protocol as Base

    class HeaderDeadlineProtocol(Base):
        _header_timer = None

        def connection_made(self, transport):
            super(HeaderDeadlineProtocol, self).connection_made(transport)
            self._arm()

        def data_received(self, data):
            cycle = self.cycle
            if self._header_timer is None and (cycle is None or cycle.response_complete):
                self._arm()   # the first bytes of a new request on a kept-alive connection
            super(HeaderDeadlineProtocol, self).data_received(data)
            if self.cycle is not cycle:
                self._disarm()   # its headers are in: the request is the app's now

        def connection_lost(self, exc):
            self._disarm()
            super(HeaderDeadlineProtocol, self).connection_lost(exc)

        def _arm(self):
            self._header_timer = self.loop.call_later(timeout_s, self._expire)

        def _disarm(self):
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expire(self):
            self._header_timer = None
            if self.transport.is_closing():
                return
            self.transport.write(TIMEOUT_RESPONSE)
            self.transport.close()
            if on_timeout is not None:
                on_timeout()

    return HeaderDeadlineProtocol

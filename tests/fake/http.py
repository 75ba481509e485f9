"""The HTTP/1.1 plumbing of the fake: a threaded server, and a handler that writes what the exchange says.

Answers are written by hand (one write, exact Content-Length) so a truncated body or a reset is exactly
the fault asked for; a hang waits until the exchange stops.
"""

from __future__ import annotations

import socket
import struct
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qsl

from tests.fake.replies import REASONS

if TYPE_CHECKING:
    from tests.fake.server import FakeExchange


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    exchange: FakeExchange

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (killed, timed out) is routine here, not worth a traceback."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cast(Server, self.server).exchange._opened(self.connection)

    def finish(self) -> None:
        cast(Server, self.server).exchange._closed(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the fake serves thousands of requests per second."""

    def do_GET(self) -> None:
        exchange = cast(Server, self.server).exchange
        path, _, query = self.path.partition("?")
        params = dict(parse_qsl(query, keep_blank_values=True))
        client = self.client_address[0]
        at = exchange.clock()
        served = exchange._answer(path, params, client)
        exchange._log(at, client, served, path, params)
        reply = served.reply
        if reply.drop:
            if reply.drop == "hang":
                exchange._stopping.wait()
                self.close_connection = True
            else:
                self._reset()
            return
        if served.latency > 0 and exchange._stopping.wait(served.latency):
            self.close_connection = True
            return
        body = reply.body[: len(reply.body) // 2] if served.truncate else reply.body
        head = [
            f"HTTP/1.1 {reply.status} {REASONS.get(reply.status, 'Error')}",
            f"Content-Type: {reply.content_type}",
            f"Content-Length: {len(body)}",
            *(f"{name}: {value}" for name, value in reply.headers),
        ]
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)

    def _reset(self) -> None:
        """Drop the connection with a TCP RST, as a crashing load balancer does."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

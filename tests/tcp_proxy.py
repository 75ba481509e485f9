"""A TCP proxy in front of a database server: outages are cut connections, never a stopped server."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading


class TcpProxy:
    """A threaded TCP proxy from 127.0.0.1:<port> to a server, to cut or refuse connections at will.

    ``drop_connections()`` resets every live connection (client and server side), as a crashed server
    or a broken network would; ``refuse(True)`` closes the listening socket so new connections are
    refused, ``refuse(False)`` listens again on the same port. ``cut_after(n)`` lets ``n`` more bytes
    reach the server, then refuses and resets everything: a network lost in the middle of a message.
    ``bytes_to_server`` counts what clients sent.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.host = "127.0.0.1"
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._closed = False
        self._budget: int | None = None
        self.bytes_to_server = 0
        self._listening = threading.Event()
        self._listener = self._listen(0)
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, name="tcp-proxy-accept", daemon=True)
        self._acceptor.start()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _listen(self, port: int) -> socket.socket:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, port))
        listener.listen(64)
        self._listening.set()
        return listener

    def _accept_loop(self) -> None:
        while not self._closed:
            self._listening.wait()
            listener = self._listener
            try:
                client, _ = listener.accept()
            except OSError:
                continue  # the listener was closed by refuse() or close()
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            _reset(client)
            return
        upstream.settimeout(None)
        with self._lock:
            if self._closed:
                _reset(client)
                _reset(upstream)
                return
            self._sockets.update((client, upstream))
        threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
        self._pump(upstream, client, False)

    def _pump(self, source: socket.socket, sink: socket.socket, to_server: bool) -> None:
        try:
            while chunk := source.recv(65536):
                cut = False
                if to_server:
                    with self._lock:
                        if self._budget is not None and len(chunk) >= self._budget:
                            chunk, cut, self._budget = chunk[: self._budget], True, None
                        elif self._budget is not None:
                            self._budget -= len(chunk)
                        self.bytes_to_server += len(chunk)
                sink.sendall(chunk)
                if cut:
                    self.refuse(True)
                    self.drop_connections()
                    return
        except OSError:
            pass
        finally:
            self._forget(source, sink)

    def cut_after(self, sent: int) -> None:
        """Refuse and reset every connection once ``sent`` more bytes have gone to the server."""
        with self._lock:
            self._budget = sent

    def _forget(self, *pair: socket.socket) -> None:
        with self._lock:
            live = [s for s in pair if s in self._sockets]
            self._sockets.difference_update(live)
        for s in live:
            _reset(s)

    @property
    def connections(self) -> int:
        """Live proxied connections."""
        with self._lock:
            return len(self._sockets) // 2

    def drop_connections(self) -> None:
        """Reset every live connection on both sides."""
        with self._lock:
            live = list(self._sockets)
            self._sockets.clear()
        for s in live:
            _reset(s)

    def refuse(self, on: bool) -> None:
        """Refuse new connections (``on``) or accept them again; takes effect before returning."""
        with self._lock:
            if on and self._listening.is_set():
                self._listening.clear()
                _close_listener(self._listener)
            elif not on and not self._listening.is_set():
                self._listener = self._listen(self.port)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self.refuse(True)
        self._listening.set()
        self.drop_connections()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _close_listener(listener: socket.socket) -> None:
    with contextlib.suppress(OSError):
        listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
    listener.close()


def _reset(s: socket.socket) -> None:
    """Close with an RST, as a crashed peer would, after waking any thread blocked on the socket."""
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RD)
    s.close()

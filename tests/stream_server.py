"""A real HTTP server on 127.0.0.1 that serves one video file as a stream, in a background thread.

Modes: ``whole`` (the file at once), ``slow`` (``chunk`` bytes every ``pause`` seconds, a live-like
stream), ``cut`` (the first ``cut`` bytes, then the connection closes), ``silent`` (accepts the TCP
connection and never answers).
"""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class StreamServer:
    """Serves ``path`` at ``http://127.0.0.1:PORT/<name>``; use as a context manager.

    Args:
        path: The file served (an MPEG-TS suits streaming).
        mode: ``whole``, ``slow``, ``cut`` or ``silent``.
        chunk: Bytes per write in ``slow`` mode.
        pause: Seconds between writes in ``slow`` mode.
        cut: Bytes sent in ``cut`` mode before closing.
    """

    def __init__(self, path: Path, mode: str = "whole", *, chunk: int = 4096, pause: float = 0.05,
                 cut: int = 0) -> None:  # fmt: skip
        self.path, self.mode, self.chunk, self.pause, self.cut = path, mode, chunk, pause, cut
        self._accepted: list[socket.socket] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{self.path.name}"

    def __enter__(self) -> StreamServer:
        if self.mode == "silent":
            self._socket = socket.create_server(("127.0.0.1", 0))
            self.port = self._socket.getsockname()[1]
            self._thread = threading.Thread(target=self._accept, daemon=True)
        else:
            self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
            self._server.daemon_threads = True
            self.port = self._server.server_address[1]
            self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.mode == "silent":
            self._socket.close()
            for conn in self._accepted:
                conn.close()
        else:
            self._server.shutdown()
            self._server.server_close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._socket.accept()  # and never answer
            except OSError:
                return
            self._accepted.append(conn)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # the body ends when the connection closes (a live stream)

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                data = server.path.read_bytes()
                if server.mode == "cut":
                    data = data[: server.cut]
                self.send_response(200)
                self.send_header("Content-Type", "video/mp2t")
                if server.mode != "slow":
                    self.send_header("Content-Length", str(len(server.path.read_bytes())))
                self.end_headers()
                try:
                    if server.mode == "slow":
                        for start in range(0, len(data), server.chunk):
                            self.wfile.write(data[start : start + server.chunk])
                            self.wfile.flush()
                            time.sleep(server.pause)
                    else:
                        self.wfile.write(data)
                except OSError:  # the client went away
                    pass

        return Handler

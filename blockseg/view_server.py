"""The HTTP server of ``blockseg view``: files with CORS headers and byte ranges.

The standard library's threaded HTTP server with what a browser-based viewer
needs on top: CORS headers on every answer, ``OPTIONS`` pre-flight answers
and single ``Range`` requests (:class:`CorsRequestHandler`), the run's
output folder at ``/`` and read-only mounts for inputs that lie outside it
(:func:`start_server`), on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import posixpath
import re
import threading
import urllib.parse
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


HOST = "127.0.0.1"
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class CorsRequestHandler(SimpleHTTPRequestHandler):
    """Files of ``directory`` plus ``mounts``, with CORS headers and byte ranges."""

    mounts: dict[str, Path] = {}

    def __init__(self, *args, mounts: dict[str, Path] | None = None, **kwargs) -> None:
        self.mounts = dict(mounts or {})
        super().__init__(*args, **kwargs)

    def translate_path(self, path: str) -> str:
        path = path.split("?", 1)[0].split("#", 1)[0]
        clean = posixpath.normpath(urllib.parse.unquote(path))
        words = [w for w in clean.split("/") if w and w not in (os.curdir, os.pardir)]
        root = Path(self.directory)
        # the longest mount prefix that matches wins
        for prefix in sorted(self.mounts, key=len, reverse=True):
            parts = prefix.split("/")
            if words[: len(parts)] == parts:
                root, words = self.mounts[prefix], words[len(parts):]
                break
        return str(root.joinpath(*words)) if words else str(root)

    def end_headers(self) -> None:
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Access-Control-Expose-Headers", "Content-Length, Content-Range, Accept-Ranges")
        self.send_header("Accept-Ranges", "bytes")
        super().end_headers()

    def do_OPTIONS(self) -> None:
        self.send_response(HTTPStatus.NO_CONTENT)
        self.send_header("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")
        requested = self.headers.get("Access-Control-Request-Headers")
        self.send_header("Access-Control-Allow-Headers", requested or "Range")
        self.send_header("Access-Control-Max-Age", "86400")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        wanted = self.headers.get("Range")
        path = self.translate_path(self.path)
        if wanted is None or not os.path.isfile(path):
            super().do_GET()
            return
        self._send_range(path, wanted.strip())

    def _send_range(self, path: str, wanted: str) -> None:
        size = os.path.getsize(path)
        match = _RANGE.match(wanted)
        if not match or match.group(1) == match.group(2) == "":
            # several ranges or another unit: answer with the whole file, as RFC 9110 allows
            super().do_GET()
            return
        first, last = match.groups()
        if first == "":  # the last N bytes
            start, end = max(0, size - int(last)), size - 1
        else:
            start, end = int(first), min(int(last), size - 1) if last else size - 1
        if start >= size or start > end:
            self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        with open(path, "rb") as handle:
            handle.seek(start)
            body = handle.read(end - start + 1)
        self.send_response(HTTPStatus.PARTIAL_CONTENT)
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def guess_type(self, path) -> str:
        # zarr chunks have no extension; say what they are rather than guess
        if str(path).endswith(".json"):
            return "application/json"
        return "application/octet-stream"

    def list_directory(self, path):
        # viewers never need listings; do not advertise the folder tree
        self.send_error(HTTPStatus.NOT_FOUND, "no listings")
        return None

    def log_message(self, format: str, *args) -> None:
        pass  # a viewer fetches thousands of chunks: keep the terminal for the links


def start_server(directory: Path, mounts: dict[str, Path] | None = None, port: int = 0) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """Serve ``directory`` (and ``mounts``) on 127.0.0.1:``port`` (0: any free port) in a thread.

    Examples
    --------
    >>> import tempfile, urllib.request
    >>> folder = Path(tempfile.mkdtemp()); _ = (folder / "zarr.json").write_text("{}")
    >>> server, thread = start_server(folder)
    >>> port = server.server_address[1]
    >>> with urllib.request.urlopen(f"http://127.0.0.1:{port}/zarr.json") as answer:
    ...     answer.headers["Access-Control-Allow-Origin"], answer.read()
    ('*', b'{}')
    >>> server.shutdown(); server.server_close()
    """
    if not 0 <= int(port) <= 65535:
        raise ValueError(f"port {port} is outside 0..65535 (0 picks a free one)")

    def handler(*args, **kwargs):
        return CorsRequestHandler(*args, directory=str(directory), mounts=mounts, **kwargs)

    try:
        server = ThreadingHTTPServer((HOST, int(port)), handler)
    except OSError as error:
        from blockseg.config import ConfigError

        raise ConfigError(f"--port: cannot serve on {HOST}:{port} ({error.strerror})") from None
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="blockseg-view", daemon=True)
    thread.start()
    return server, thread

"""The HTTP server of ``blockseg view``: files with CORS headers and byte ranges.

The standard library's threaded HTTP server with what a browser-based viewer
needs on top: CORS headers on every answer, ``OPTIONS`` pre-flight answers
and single ``Range`` requests (:class:`CorsRequestHandler`), the run's
output folder at ``/`` and read-only mounts for inputs that lie outside it
(:func:`start_server`), on 127.0.0.1 only.

The neuroglancer client itself (the built static files that the
``neuroglancer`` package ships, :func:`neuroglancer_client_dir`) is mounted
at ``/v/blockseg/``, so the viewer and the data come from the same server
and a node with no internet can show a run. That build is the one the
package's own Python server hosts: it insists on a page under
``/v/<token>/`` and keeps an event stream open to ``/events/<token>``
(and posts its settings to ``/state/<token>``), so the handler answers
those too, with an idle stream and a plain acknowledgement; the viewer
state itself comes from the link's ``#!`` fragment. A request log
(``request_log``) records every answer, one line each, for checking what a
browser asked for.
"""

from __future__ import annotations

import importlib.util
import json
import os
import posixpath
import re
import threading
import time
import urllib.parse
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


HOST = "127.0.0.1"
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
#: The token in the neuroglancer client's paths (``/v/<token>/``, ``/events/<token>``, ...).
CLIENT_TOKEN = "blockseg"
#: Where the server mounts the neuroglancer client.
CLIENT_PREFIX = f"v/{CLIENT_TOKEN}"
#: Seconds between the comments that keep the client's idle event stream open.
KEEP_ALIVE = 10.0
#: Content types of the client's files; zarr keys have no extension and stay octet-stream.
_CLIENT_TYPES = {
    ".html": "text/html; charset=utf-8", ".js": "text/javascript", ".css": "text/css",
    ".wasm": "application/wasm", ".map": "application/json", ".json": "application/json",
}


def neuroglancer_client_dir() -> Path | None:
    """The folder of the built neuroglancer client in the installed ``neuroglancer`` package, if any.

    Found without importing the package (which pulls in its own server).
    Install it with ``pip install "blockseg[view]"``.
    """
    try:
        spec = importlib.util.find_spec("neuroglancer")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        client = Path(location) / "static" / "client"
        if (client / "index.html").is_file():
            return client
    return None


class CorsRequestHandler(SimpleHTTPRequestHandler):
    """Files of ``directory`` plus ``mounts``, with CORS headers and byte ranges."""

    mounts: dict[str, Path] = {}

    def __init__(
        self, *args, mounts: dict[str, Path] | None = None, request_log: "RequestLog | None" = None, **kwargs
    ) -> None:
        self.mounts = dict(mounts or {})
        self.request_log = request_log
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

    def _client_endpoint(self) -> str | None:
        """``events``, ``state`` or ``action`` for the neuroglancer client's own requests, else None."""
        words = self.path.split("?", 1)[0].strip("/").split("/")
        if len(words) == 2 and words[1] == CLIENT_TOKEN and words[0] in ("events", "state", "action"):
            return words[0]
        return None

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] == "/favicon.ico":
            self._send_empty(HTTPStatus.NO_CONTENT)  # browsers ask for it; there is none, and that is fine
            return
        if self._client_endpoint() == "events":
            self._idle_event_stream()
            return
        wanted = self.headers.get("Range")
        path = self.translate_path(self.path)
        if wanted is None or not os.path.isfile(path):
            super().do_GET()
            return
        self._send_range(path, wanted.strip())

    def do_POST(self) -> None:
        endpoint = self._client_endpoint()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if endpoint == "state":
            # the client's settings: acknowledged with the generation it sent, kept nowhere
            try:
                generation = json.loads(body or b"{}").get("g", 0)
            except (ValueError, AttributeError):
                generation = 0
            answer = json.dumps({"g": generation}).encode()
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)
        elif endpoint == "action":
            self._send_empty(HTTPStatus.OK)
        else:
            self.send_error(HTTPStatus.METHOD_NOT_ALLOWED, "read-only")

    def _send_empty(self, status: HTTPStatus) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _idle_event_stream(self) -> None:
        """An event stream that never sends an event: the client sees its "Python server" connected."""
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        self.close_connection = True
        try:
            while not getattr(self.server, "closing", False):
                self.wfile.write(b": idle\n\n")
                self.wfile.flush()
                deadline = time.monotonic() + KEEP_ALIVE
                while time.monotonic() < deadline and not getattr(self.server, "closing", False):
                    time.sleep(0.2)
        except OSError:  # the page went away
            pass

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
        return _CLIENT_TYPES.get(posixpath.splitext(str(path))[1], "application/octet-stream")

    def list_directory(self, path):
        # viewers never need listings; do not advertise the folder tree
        self.send_error(HTTPStatus.NOT_FOUND, "no listings")
        return None

    def log_message(self, format: str, *args) -> None:
        pass  # a viewer fetches thousands of chunks: keep the terminal for the links

    def log_request(self, code="-", size="-") -> None:
        if self.request_log is not None:
            self.request_log.write(self.command, self.path, int(getattr(code, "value", code)))


class RequestLog:
    """Every answer of the server as a line ``METHOD STATUS PATH`` in a file, flushed as it goes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._handle = open(self.path, "a", encoding="utf-8")

    def write(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self._handle.write(f"{method} {status} {path}\n")
            self._handle.flush()

    def close(self) -> None:
        with self._lock:
            self._handle.close()


def start_server(
    directory: Path, mounts: dict[str, Path] | None = None, port: int = 0, request_log: Path | None = None
) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """Serve ``directory`` (and ``mounts``) on 127.0.0.1:``port`` (0: any free port) in a thread.

    With ``request_log`` every answer is appended to that file (``METHOD STATUS PATH``).

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

    requests = RequestLog(request_log) if request_log is not None else None

    def handler(*args, **kwargs):
        return CorsRequestHandler(*args, directory=str(directory), mounts=mounts, request_log=requests, **kwargs)

    try:
        server = ThreadingHTTPServer((HOST, int(port)), handler)
    except OSError as error:
        from blockseg.config import ConfigError

        raise ConfigError(f"--port: cannot serve on {HOST}:{port} ({error.strerror})") from None
    server.daemon_threads = True
    server.request_log = requests  # closed by whoever stops the server (blockseg view does)
    thread = threading.Thread(target=server.serve_forever, name="blockseg-view", daemon=True)
    thread.start()
    return server, thread

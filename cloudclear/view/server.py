"""The ``cloudclear view`` server: the page's files and its JSON / PNG API (docs/view.md).

A stdlib :class:`~http.server.ThreadingHTTPServer`. Every ``/api/`` request and ``/`` need the
token (query ``token=`` or header ``X-Cloudclear-Token``, compared in constant time); the static
files are served by name from the package's ``static/`` folder only. The page names scenes and
outputs by id, never by path; every error is JSON ``{"error": "one line"}``.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import webbrowser
from datetime import date as Date
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cloudclear.errors import CloudClearError
from cloudclear.view import render
from cloudclear.view.state import ViewState
from cloudclear.view.work import BusyError, Runs, Scores

STATIC = Path(__file__).parent / "static"
_STATIC_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".json": "application/json",
}
KINDS = ("scene", "mask", "output", "status")


class BadRequest(Exception):
    """A request answered with a 4xx: the status and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class ViewServer(ThreadingHTTPServer):
    """The server, holding what the handlers share."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], state: ViewState, token: str):
        super().__init__(address, Handler)
        self.state = state
        self.token = token
        self.scores = Scores()
        self.runs = Runs(state)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = host if isinstance(host, str) and host not in ("", "0.0.0.0") else "127.0.0.1"
        if ":" in shown:
            shown = f"[{shown}]"
        return f"http://{shown}:{port}/?token={self.token}"


def _one(q: dict[str, list[str]], name: str, default: str | None = None) -> str:
    v = q.get(name)
    if not v:
        if default is None:
            raise BadRequest(400, f"missing parameter {name}")
        return default
    return v[0]


def _size(q: dict[str, list[str]], name: str) -> int | None:
    if name not in q:
        return None
    try:
        n = int(q[name][0])
    except ValueError:
        raise BadRequest(400, f"{name} must be an integer, not {q[name][0]!r}") from None
    if not 1 <= n <= render.MAX_SIZE:
        raise BadRequest(400, f"{name} must be 1..{render.MAX_SIZE}, not {n}")
    return n


def _bbox(q: dict[str, list[str]], full: list[float]) -> tuple[float, float, float, float]:
    if "bbox" not in q:
        return (full[0], full[1], full[2], full[3])
    try:
        parts = [float(v) for v in q["bbox"][0].split(",")]
    except ValueError:
        raise BadRequest(400, f"bbox must be left,bottom,right,top numbers, not {q['bbox'][0]!r}") from None
    if len(parts) != 4 or not all(abs(v) < 1e12 for v in parts) or parts[2] <= parts[0] or parts[3] <= parts[1]:
        raise BadRequest(
            400, f"bbox must be left,bottom,right,top with right > left and top > bottom, not {q['bbox'][0]!r}"
        )
    return (parts[0], parts[1], parts[2], parts[3])


class Handler(BaseHTTPRequestHandler):
    server: ViewServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass  # quiet: the terminal shows the URL line only

    # ------------------------------------------------------------- replies
    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj, allow_nan=False, default=str).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": " ".join(message.split()) or HTTPStatus(status).phrase})

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The stdlib's own errors (a malformed request, an unsupported method) as JSON too."""
        self.close_connection = True
        self._error(code, message or HTTPStatus(code).phrase)

    # ------------------------------------------------------------- dispatch
    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, method: str) -> None:
        try:
            self._route(method)
        except (BrokenPipeError, ConnectionResetError):
            return  # the browser went away (a page left, a request superseded): nothing to answer
        except BadRequest as exc:
            self._error(exc.status, str(exc))
        except BusyError as exc:
            self._error(409, str(exc))
        except CloudClearError as exc:
            self._error(400, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        except Exception as exc:  # noqa: BLE001 - one request fails, the server goes on
            self._error(500, f"{type(exc).__name__}: {exc}".splitlines()[0])

    def _authorised(self, q: dict[str, list[str]]) -> bool:
        given = self.headers.get("X-Cloudclear-Token") or (q.get("token") or [""])[0]
        return secrets.compare_digest(given.encode(), self.server.token.encode())

    def _route(self, method: str) -> None:
        split = urlsplit(self.path)
        raw_path = split.path
        q = parse_qs(split.query, keep_blank_values=False)
        if raw_path.startswith("/static/"):
            if method != "GET":
                raise BadRequest(405, "method not allowed")
            return self._static(raw_path[len("/static/") :])
        if raw_path == "/" or raw_path.startswith("/api/"):
            if not self._authorised(q):
                raise BadRequest(403, "missing or wrong token: open the URL cloudclear view printed")
        else:
            raise BadRequest(404, f"no such route {raw_path[:80]}")
        if raw_path == "/":
            return self._static("index.html")
        if method == "POST":
            if raw_path == "/api/run":
                return self._run_post()
            raise BadRequest(
                404 if raw_path not in ("/api/state", "/api/info", "/api/image", "/api/scores") else 405,
                f"no such route POST {raw_path[:80]}",
            )
        if raw_path == "/api/state":
            return self._json(200, self.server.state.to_dict())
        if raw_path == "/api/info":
            return self._json(200, self._info(q)[0])
        if raw_path == "/api/image":
            return self._image(q)
        if raw_path == "/api/scores":
            return self._scores(q)
        if raw_path.startswith("/api/run/"):
            run = self.server.runs.runs.get(raw_path[len("/api/run/") :])
            if run is None:
                raise BadRequest(404, "no such run")
            return self._json(200, run.to_dict())
        raise BadRequest(404, f"no such route {raw_path[:80]}")

    # --------------------------------------------------------------- routes
    def _static(self, name: str) -> None:
        if not _STATIC_NAME.fullmatch(name) or name.startswith("."):
            raise BadRequest(404, "no such file")
        path = STATIC / name
        if not path.is_file() or path.resolve().parent != STATIC.resolve():
            raise BadRequest(404, f"no such file {name}")
        self._send(200, path.read_bytes(), _TYPES.get(path.suffix, "application/octet-stream"))

    def _item(self, q: dict[str, list[str]]) -> tuple[str, Any]:
        kind = _one(q, "kind")
        if kind not in KINDS:
            raise BadRequest(400, f"kind must be one of {', '.join(KINDS)}, not {kind[:40]!r}")
        iid = _one(q, "id")
        state = self.server.state
        if kind in ("scene", "mask"):
            found = state.scene(iid)
            if found is None:
                raise BadRequest(404, f"no scene {iid[:80]!r}")
            if kind == "mask" and found[1].mask is None:
                raise BadRequest(404, f"scene {iid[:80]!r} has no mask")
            return kind, found
        out = state.output(iid)
        if out is None:
            raise BadRequest(404, f"no output {iid[:80]!r}")
        if kind == "status" and out.status is None:
            raise BadRequest(404, f"output {out.path.name} has no status sidecar")
        return kind, out

    def _info(self, q: dict[str, list[str]]) -> tuple[dict[str, Any], str, Any]:
        kind, item = self._item(q)
        if kind in ("scene", "mask"):
            return render.scene_info(item[1]), kind, item
        path = item.path if kind == "output" else item.status
        return render.raster_info(str(path), item.date), kind, item

    def _image(self, q: dict[str, list[str]]) -> None:
        bands = _one(q, "bands", "rgb")
        if bands not in render.BANDS:
            raise BadRequest(400, f"bands must be rgb or false, not {bands[:40]!r}")
        w, h = _size(q, "width"), _size(q, "height")
        info, kind, item = self._info(q)
        box = _bbox(q, info["bounds"])
        if w is None or h is None:
            res = (info["bounds"][2] - info["bounds"][0]) / max(info["width"], 1)
            dw, dh = render.default_size(box, res)
            aspect = (box[3] - box[1]) / (box[2] - box[0])
            if w is not None:
                dh = max(1, min(render.MAX_SIZE, round(w * aspect)))
            elif h is not None:
                dw = max(1, min(render.MAX_SIZE, round(h / aspect)))
            w, h = w or dw, h or dh
        if kind in ("scene", "mask"):
            rgba = render.scene_image(item[0], item[1], kind, box, w, h, bands)
        elif kind == "output":
            rgba = render.output_image(str(item.path), box, w, h, bands)
        else:
            rgba = render.status_image(str(item.status), box, w, h)
        self._send(200, render.png(rgba), "image/png")

    def _scores(self, q: dict[str, list[str]]) -> None:
        oid = _one(q, "id")
        out = self.server.state.output(oid)
        if out is None:
            raise BadRequest(404, f"no output {oid[:80]!r}")
        got = self.server.scores.get(self.server.state, out)
        if got is None:
            raise BadRequest(404, f"no reference for {out.path.name}")
        self._json(200, {k: (None if isinstance(v, float) and v != v else v) for k, v in got.items()})

    def _run_post(self) -> None:
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise BadRequest(400, "bad Content-Length") from None
        if n > 10_000:
            raise BadRequest(400, "request body too large")
        try:
            body = json.loads(self.rfile.read(n) or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BadRequest(400, "the body must be JSON {date, method, place}") from None
        if not isinstance(body, dict):
            raise BadRequest(400, "the body must be a JSON object {date, method, place}")
        state = self.server.state
        method, date, place = body.get("method"), body.get("date"), body.get("place")
        if not isinstance(method, str) or method not in state.methods:
            raise BadRequest(400, f"method must be one of {', '.join(state.methods)}")
        if not isinstance(date, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", date):
            raise BadRequest(400, "date must be YYYY-MM-DD")
        try:
            Date.fromisoformat(date)
        except ValueError:
            raise BadRequest(400, f"date {date!r} is not a valid date") from None
        places = state.places()
        if place is None:
            with_date = [p for p in places if date in state.dates(p)]
            if len(with_date) != 1:
                raise BadRequest(
                    400, f"no S2 scene on {date}" if not with_date else "several places on that date: give place"
                )
            place = with_date[0]
        if not isinstance(place, str) or place not in places:
            raise BadRequest(400, f"place must be one of {', '.join(places)}")
        if date not in state.dates(place):
            raise BadRequest(400, f"no S2 scene of {place} on {date}")
        run = self.server.runs.start(date, method, place)
        self._json(202, {"run": run.id})


def make_server(paths: list[str | Any], host: str = "127.0.0.1", port: int = 0, token: str | None = None) -> ViewServer:
    """The server for ``paths`` (catalogs and output folders), bound, not yet serving.

    Raises:
        CatalogNotFoundError: a path is neither a catalog nor a folder.
        OutputError: the address cannot be bound.
    """
    from cloudclear.errors import OutputError

    state = ViewState(list(paths))
    try:
        return ViewServer((host, port), state, token or secrets.token_urlsafe(24))
    except OSError as exc:
        raise OutputError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None


def serve(
    paths: list[str | Any], host: str = "127.0.0.1", port: int = 0, open_browser: bool = True, on_url: Any = None
) -> None:
    """Serve until interrupted (Ctrl-C): print the URL (through ``on_url``), open a browser."""
    server = make_server(paths, host, port)
    try:
        (on_url or print)(f"cloudclear view: {server.url}")
        if open_browser:
            threading.Thread(target=webbrowser.open, args=(server.url,), daemon=True).start()
        server.serve_forever()
    finally:
        server.server_close()

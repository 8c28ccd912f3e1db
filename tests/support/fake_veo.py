"""A loopback Veo: a real HTTP server speaking the Gemini API wire format google-genai 2.34 sends.

The real ``genai.Client`` runs unchanged against it through ``HttpOptions(base_url=...)``.
What it answers is scripted per test (``fake_veo.script(...)``) and every request is recorded
(API key header removed) so tests can assert what was sent. Wire format, from
``google.genai.models._GenerateVideosParameters_to_mldev``, ``_operations_converters`` and
``files.AsyncFiles.download``:

- ``POST /v1beta/models/{model}:predictLongRunning``
  -> ``{"name": "models/{model}/operations/{id}"}``
- ``GET /v1beta/models/{model}/operations/{id}`` -> ``{"name", "done", "response":
  {"generateVideoResponse": {"generatedSamples": [{"video": {"uri"|"encodedVideo"}}],
  "raiMediaFilteredCount", "raiMediaFilteredReasons"}}}`` or ``{"error": {...}}``
- ``GET /v1beta/files/{id}:download?alt=media`` -> the MP4 bytes
- errors: HTTP status with ``{"error": {"code", "message", "status"}}``
"""

from __future__ import annotations

import base64
import itertools
import json
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import imageio_ffmpeg
import pytest

# google.rpc status names the real API puts next to each HTTP code.
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

_MLDEV_RESPONSE_TYPE = (
    "type.googleapis.com/google.ai.generativelanguage.v1beta.PredictLongRunningResponse"
)
_VERTEX_RESPONSE_TYPE = "type.googleapis.com/cloud.ai.large_models.vision.GenerateVideoResponse"

#: The 400 the Gemini API gives when a key's region/tier may not set personGeneration.
PERSON_GENERATION_MESSAGE = "allow_adult for personGeneration is currently not supported."


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake received; ``headers`` never hold the API key."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any  # parsed JSON, or None
    api_key_sent: bool = False

    @property
    def is_submit(self) -> bool:
        return self.method == "POST" and self.path.endswith(":predictLongRunning")

    @property
    def is_poll(self) -> bool:
        if self.method == "POST":  # Vertex: {model}:fetchPredictOperation {"operationName"}
            return self.path.endswith(":fetchPredictOperation")
        return self.method == "GET" and "/operations/" in self.path

    @property
    def is_vertex(self) -> bool:
        return self.path.startswith("/v1beta1/")

    @property
    def resource(self) -> str:
        """The path without its API version and ``:method``, e.g. ``models/veo-3.1-...``."""
        return self.path.split("/", 2)[2].split(":", 1)[0]

    @property
    def is_download(self) -> bool:
        return self.method == "GET" and self.path.endswith(":download")


@dataclass
class Script:
    """What the fake answers. Error lists are HTTP statuses consumed one per request, in order.

    ``outcome``: ``"file"`` (a video uri on this server, downloaded separately), ``"inline"``
    (``encodedVideo`` bytes in the operation), ``"filtered"`` (done, no video, RAI counts),
    ``"error"`` (done with ``operation_error``), ``"never"`` (stays pending forever).
    """

    pending_polls: int = 0
    outcome: str = "file"
    submit_errors: list[int] = field(default_factory=list)
    poll_errors: list[int] = field(default_factory=list)
    download_errors: list[int] = field(default_factory=list)
    reject_person_generation: bool = False
    filtered_reasons: tuple[str, ...] = (
        "Your current safety settings for person generation prevented this video.",
    )
    operation_error: dict[str, Any] = field(
        default_factory=lambda: {"code": 3, "message": "The input image could not be processed."}
    )


@dataclass
class _Operation:
    name: str
    vertex: bool = False
    polls: int = 0


class FakeVeo:
    """The server's state, shared between the test (main thread) and the handler threads."""

    def __init__(self, video: bytes) -> None:
        self.video = video
        self.requests: list[RecordedRequest] = []
        self._script = Script()
        self._operations: dict[str, _Operation] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        host, port = self._server.server_address[:2]
        self.base_url = f"http://{host}:{port}/"

    def script(self, **changes: Any) -> Script:
        """Replace the scenario: ``fake_veo.script(pending_polls=2, outcome="inline")``."""
        with self._lock:
            self._script = Script(**changes)
            return self._script

    @property
    def submits(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.is_submit]

    @property
    def polls(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.is_poll]

    @property
    def downloads(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.is_download]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # The handler calls this with the lock held; it returns (status, content type, body).
    def answer(self, req: RecordedRequest) -> tuple[int, str, bytes]:
        self.requests.append(req)
        s = self._script
        if req.is_submit:
            if s.submit_errors:
                return _error(s.submit_errors.pop(0))
            params = (req.body or {}).get("parameters", {})
            if s.reject_person_generation and "personGeneration" in params:
                return _error(400, PERSON_GENERATION_MESSAGE)
            name = f"{req.resource}/operations/op{next(self._ids)}"
            self._operations[name] = _Operation(name, vertex=req.is_vertex)
            return _json({"name": name})
        if req.is_poll:
            if s.poll_errors:
                return _error(s.poll_errors.pop(0))
            name = req.body["operationName"] if req.method == "POST" else req.resource
            op = self._operations.get(name)
            if op is None:
                return _error(404, "Operation not found.")
            op.polls += 1
            if s.outcome == "never" or op.polls <= s.pending_polls:
                return _json({"name": op.name, "done": False})
            return _json(self._finished(op, s))
        if req.is_download:
            if s.download_errors:
                return _error(s.download_errors.pop(0))
            if req.query.get("alt") != ["media"]:
                return _error(400, "alt=media required")
            return 200, "video/mp4", self.video
        return _error(404, f"No route for {req.method} {req.path}")

    def _finished(self, op: _Operation, s: Script) -> dict[str, Any]:
        body: dict[str, Any] = {"name": op.name, "done": True}
        if s.outcome == "error":
            body["error"] = s.operation_error
            return body
        response: dict[str, Any] = {}
        if s.outcome == "filtered":
            response["raiMediaFilteredCount"] = 1
            response["raiMediaFilteredReasons"] = list(s.filtered_reasons)
        elif op.vertex:  # Vertex sends bytes, or a gs:// uri when output_gcs_uri was set
            encoded = base64.b64encode(self.video).decode()
            response["videos"] = [
                {"gcsUri": "gs://bucket/veo/sample_0.mp4", "mimeType": "video/mp4"}
                if s.outcome == "file"
                else {"bytesBase64Encoded": encoded, "mimeType": "video/mp4"}
            ]
        elif s.outcome == "inline":
            encoded = base64.b64encode(self.video).decode()
            response["generatedSamples"] = [
                {"video": {"encodedVideo": encoded, "encoding": "video/mp4"}}
            ]
        else:  # "file": a download uri; the client keeps only its file id and asks base_url
            file_id = op.name.rsplit("/", 1)[-1]
            uri = f"https://generativelanguage.googleapis.com/v1beta/files/{file_id}:download?alt=media"
            response["generatedSamples"] = [{"video": {"uri": uri}}]
        if op.vertex:
            body["response"] = {"@type": _VERTEX_RESPONSE_TYPE, **response}
        else:
            body["response"] = {"@type": _MLDEV_RESPONSE_TYPE, "generateVideoResponse": response}
        return body


def _json(obj: Any, status: int = 200) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(obj).encode()


def _error(status: int, message: str | None = None) -> tuple[int, str, bytes]:
    text = message or HTTPStatus(status).phrase
    status_name = _STATUS_NAMES.get(status, "UNKNOWN")
    return _json({"error": {"code": status, "message": text, "status": status_name}}, status)


def _handler_for(fake: FakeVeo) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects
        disable_nagle_algorithm = True  # headers and body go out as two writes; don't stall 40 ms

        def log_message(self, format: str, *args: Any) -> None:  # quiet test output
            pass

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            url = urlsplit(self.path)
            headers = {
                k.lower(): v for k, v in self.headers.items() if k.lower() != "x-goog-api-key"
            }
            recorded = RecordedRequest(
                method=self.command,
                path=url.path,
                query=parse_qs(url.query),
                headers=headers,
                body=json.loads(raw) if raw else None,
                api_key_sent=bool(self.headers.get("x-goog-api-key")),
            )
            with fake._lock:
                status, content_type, body = fake.answer(recorded)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = _serve
        do_POST = _serve

    return Handler


def make_tiny_mp4(path: Path) -> bytes:
    """Write a real 1 s, 64x36, 24 fps H.264 MP4 with imageio-ffmpeg's binary; return its bytes."""
    subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=64x36:rate=24",
            "-t",
            "1",
            "-pix_fmt",
            "yuv420p",
            "-c:v",
            "libx264",
            str(path),
        ],
        check=True,
    )
    return path.read_bytes()


@pytest.fixture(scope="session")
def veo_video_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A tiny real MP4, made once per test run, that the fake serves as Veo's video."""
    return make_tiny_mp4(tmp_path_factory.mktemp("fake_veo") / "veo.mp4")


@pytest.fixture
def fake_veo(veo_video_bytes: bytes) -> Iterator[FakeVeo]:
    """A running loopback Veo on 127.0.0.1 (random port); script it, then read ``.requests``."""
    fake = FakeVeo(veo_video_bytes)
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()

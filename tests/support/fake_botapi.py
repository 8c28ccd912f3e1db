"""A loopback Telegram Bot API server, so the real PTB bot runs unchanged in end-to-end tests.

Point the bot at it with ``ApplicationBuilder().token(TOKEN).base_url(fake.base_url)
.base_file_url(fake.base_file_url)``; act as the user with ``send_text``, ``send_command``,
``send_photo``, ``send_document`` and ``press``; assert on what the user would see with
``messages``, ``videos``, ``alerts`` and ``calls``; wait with ``await fake.wait_for_...``.
It serves the methods this bot calls and nothing else: a new one answers 404 "method not
found", so a test shows what to add here. Messages are plain text (any ``parse_mode`` is
refused), as the bot sends them.

The server speaks the wire format PTB's ``HTTPXRequest`` sends (form-encoded or multipart
bodies whose non-string values are JSON) and answers with the Bot API envelope
``{"ok": true, "result": ...}`` or ``{"ok": false, "error_code": ..., "description": ...}``.
Errors mirror real Telegram where bots commonly trip: "message is not modified", "file is too
big", 64-byte callback data, unknown callback queries and messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.message
import io
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import pytest
from PIL import Image
from telegram import TelegramObject, Update

__all__ = [
    "BOT_FIRST_NAME",
    "BOT_ID",
    "BOT_USERNAME",
    "MAX_DOWNLOAD_SIZE",
    "TOKEN",
    "Alert",
    "BotMessage",
    "Call",
    "FakeBotApi",
    "FakeUser",
    "Held",
    "Pushed",
    "SentVideo",
    "UploadedFile",
    "WebhookDelivery",
    "fake_botapi",
]

TOKEN = "123456:TEST-token"
BOT_ID = 999
BOT_USERNAME = "animate_test_bot"
BOT_FIRST_NAME = "Animate Test"
# getFile refuses anything larger, as the public Bot API server does.
MAX_DOWNLOAD_SIZE = 20 * 1024 * 1024
# Uploads over this size are refused with 413 by the public Bot API server.
MAX_UPLOAD_SIZE = 50 * 1024 * 1024
MAX_CALLBACK_DATA = 64
# Telegram keeps a photo as several JPEG renditions; these are the box sides it uses (s, m, x).
PHOTO_SIZES = (90, 320, 800)

T = TypeVar("T")

# How PTB encodes values: strings as-is, everything else JSON-dumped into the form field.
_JSON_FIELDS = frozenset(
    "reply_markup reply_parameters entities caption_entities allowed_updates commands "
    "link_preview_options".split()
)
_INT_FIELDS = frozenset(
    "chat_id message_id offset limit timeout width height duration cache_time".split()
)
_BOOL_FIELDS = frozenset(
    "show_alert supports_streaming disable_notification protect_content "
    "drop_pending_updates disable_content_type_detection allow_sending_without_reply".split()
)

NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup are "
    "exactly the same as a current content and reply markup of the message"
)
QUERY_TOO_OLD = "Bad Request: query is too old and response timeout expired or query ID is invalid"
BLOCKED = "Forbidden: bot was blocked by the user"


@dataclasses.dataclass(frozen=True)
class FakeUser:
    """A Telegram user talking to the bot in a private chat (chat id == user id)."""

    id: int
    first_name: str = "Ann"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "is_bot": False,
            "first_name": self.first_name,
            "language_code": "en",
        }

    def chat_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": "private", "first_name": self.first_name}


@dataclasses.dataclass(frozen=True)
class UploadedFile:
    """One multipart file part of a request."""

    field: str
    filename: str | None
    content_type: str | None
    data: bytes


@dataclasses.dataclass(frozen=True)
class Call:
    """One Bot API request the bot made, with its decoded parameters and the answer it got."""

    index: int
    method: str
    params: dict[str, Any]
    files: dict[str, UploadedFile]
    status: int
    result: Any = None
    description: str | None = None
    #: ``time.monotonic()`` when the server answered (benchmarks; tests order by ``index``).
    at: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == HTTPStatus.OK

    def summary(self) -> str:
        shown = {
            k: (v if len(repr(v)) < 80 else repr(v)[:77] + "...") for k, v in self.params.items()
        }
        files = f" files={sorted(self.files)}" if self.files else ""
        error = f" {self.description!r}" if self.description else ""
        return f"#{self.index} {self.method} -> {self.status}{error} {shown}{files}"


@dataclasses.dataclass(frozen=True)
class BotMessage:
    """A message the bot sent, as the user currently sees it (edits applied)."""

    chat_id: int
    message_id: int
    kind: str  # "text" or "video"
    date: int
    text: str | None = None
    caption: str | None = None
    reply_markup: dict[str, Any] | None = None
    reply_to_message_id: int | None = None
    file_id: str | None = None
    # The media part of the Message object ({"video": {...}}), merged into the JSON we return.
    media: dict[str, Any] = dataclasses.field(default_factory=dict)
    edits: int = 0
    edit_date: int | None = None
    deleted: bool = False

    @property
    def content(self) -> str:
        """Text or caption, whichever the message has."""
        return self.text if self.text is not None else (self.caption or "")

    @property
    def buttons(self) -> list[list[tuple[str, str | None]]]:
        """Inline keyboard rows as (label, callback_data) pairs; empty without a keyboard."""
        rows = (self.reply_markup or {}).get("inline_keyboard") or []
        return [[(b.get("text", ""), b.get("callback_data")) for b in row] for row in rows]

    def button_data(self, label: str) -> str:
        """The callback data of the button whose label contains ``label``."""
        for row in self.buttons:
            for text, data in row:
                if label in text and data is not None:
                    return data
        raise AssertionError(f"no button {label!r} on message {self.message_id}: {self.buttons}")


@dataclasses.dataclass(frozen=True)
class SentVideo:
    """A sendVideo the server accepted, with the uploaded bytes (or the resent file's bytes)."""

    chat_id: int
    message_id: int
    file_id: str
    data: bytes
    thumbnail: bytes | None
    caption: str | None
    width: int | None
    height: int | None
    duration: int | None
    supports_streaming: bool | None
    reply_to_message_id: int | None
    reply_markup: dict[str, Any] | None
    file_name: str | None
    resent: bool  # True when sent by file_id instead of uploaded


@dataclasses.dataclass(frozen=True)
class Alert:
    """An answerCallbackQuery: the toast (or alert box, with show_alert) the user saw."""

    callback_query_id: str
    user_id: int | None
    text: str | None
    show_alert: bool


@dataclasses.dataclass(frozen=True)
class Pushed:
    """Ids of what a user action put into the update queue."""

    update_id: int
    message_id: int | None = None
    callback_query_id: str | None = None
    file_id: str | None = None


@dataclasses.dataclass
class Held:
    """Requests to ``method`` that the server parks, unanswered, until ``release()``.

    ``arrived`` counts the requests parked so far (the first ``count`` calls are held); a
    test waits on it to act while the bot is inside that request, e.g. kill it mid-download.
    """

    method: str
    count: int
    arrived: int = 0
    released: threading.Event = dataclasses.field(default_factory=threading.Event)

    def release(self) -> None:
        self.released.set()


@dataclasses.dataclass(frozen=True)
class WebhookDelivery:
    """One webhook POST of an update and the bot's answer; ``calls_before`` is how many Bot
    API calls the bot had made when the answer came (to order it against the handler's)."""

    update_id: int
    status: int
    calls_before: int


@dataclasses.dataclass(frozen=True)
class _StoredFile:
    file_id: str
    file_unique_id: str
    data: bytes
    file_size: int
    file_path: str


@dataclasses.dataclass
class _Failure:
    method: str
    status: int
    description: str
    retry_after: int | None
    chat_id: int | None
    remaining: int


class ApiError(Exception):
    """Raised inside a method handler to answer with an error envelope."""

    def __init__(
        self, status: int, description: str, parameters: dict[str, Any] | None = None
    ) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.parameters = parameters


def _bad(description: str) -> ApiError:
    return ApiError(HTTPStatus.BAD_REQUEST, f"Bad Request: {description}")


def _decode_value(name: str, value: Any) -> Any:
    """Undo PTB's form encoding for the fields whose type we rely on (ValueError if malformed)."""
    if name in _JSON_FIELDS or name in _BOOL_FIELDS:
        return json.loads(value)
    if name in _INT_FIELDS:
        return int(value) if value.lstrip("-").isdigit() else float(value)
    return value


def _plain(params: dict[str, Any], field: str, limit: int) -> str | None:
    """The text in ``field``, refused as Telegram would when over ``limit`` characters. The bot
    sends plain text; a ``parse_mode`` is refused here rather than half-checked."""
    if params.get("parse_mode"):
        raise _bad(f"this fake takes plain text only, not parse_mode {params['parse_mode']!r}")
    text = params.get(field)
    if text is not None and len(text) > limit:
        raise _bad(f"message {field} is too long")
    return text


def _parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, str], dict[str, Any]]:
    header = email.message.Message()
    header["content-type"] = content_type
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str):
        raise _bad("multipart body without boundary")
    fields: dict[str, str] = {}
    files: dict[str, UploadedFile] = {}
    for part in body.split(b"--" + boundary.encode())[1:]:
        if part.startswith(b"--"):
            break
        part = part.removeprefix(b"\r\n").removesuffix(b"\r\n")
        head, _, content = part.partition(b"\r\n\r\n")
        headers = email.message_from_bytes(head + b"\r\n\r\n")
        name = headers.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        filename = headers.get_filename()
        if filename is None:
            fields[name] = content.decode("utf-8")
        else:
            files[name] = UploadedFile(
                field=name,
                filename=unquote(filename),
                content_type=headers.get_content_type(),
                data=content,
            )
    return fields, files


def _image_size(data: bytes) -> tuple[int, int]:
    """Width and height of an image (the bot's thumbnails are JPEGs)."""
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def _check_round_trip(data: dict[str, Any]) -> None:
    """Parse ``data`` with PTB and fail on any key PTB does not know (a typo in this fake)."""
    update = Update.de_json(data, bot=None)
    if update is None or update.update_id != data["update_id"]:
        raise AssertionError(f"PTB could not parse the update: {data}")

    def walk(obj: object, path: str) -> None:
        if isinstance(obj, TelegramObject):
            if obj.api_kwargs:
                raise AssertionError(f"unknown keys at {path}: {dict(obj.api_kwargs)}")
            for key, value in obj._get_attrs(recursive=False).items():
                walk(value, f"{path}.{key}")
        elif isinstance(obj, tuple | list):
            for i, item in enumerate(obj):
                walk(item, f"{path}[{i}]")

    walk(update, "update")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog of 5 drops connections when many requests come at once
    # (a bot answering 20 taps); the client then waits out TCP's 1 s + 2 s SYN retries.
    request_queue_size = 256
    fake: FakeBotApi


class _Handler(BaseHTTPRequestHandler):
    # Keep-alive, like api.telegram.org, so httpx reuses its pooled connections.
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY, as Telegram's front ends do: the headers and the body go out in two
    # writes, and with Nagle's algorithm on, the body waits for the client's delayed ACK
    # (40 ms on Linux), which every long poll's answer then carried.
    disable_nagle_algorithm = True
    server: _Server

    def do_POST(self) -> None:
        self.server.fake._serve(self)

    def do_GET(self) -> None:
        self.server.fake._serve(self)

    def log_message(self, format: str, *args: Any) -> None:
        # Request lines carry the token and would flood test output.
        pass


class FakeBotApi:
    """A Bot API server on 127.0.0.1 in a background thread; a context manager.

    Args:
        token: if given, requests with another token get 401 Unauthorized; by default any token
            is accepted.
        clock: seconds since the epoch for message dates; inject one for fixed dates.

    Example:
        >>> with FakeBotApi() as fake:
        ...     app = ApplicationBuilder().token(TOKEN).base_url(fake.base_url) \\
        ...         .base_file_url(fake.base_file_url).build()
    """

    def __init__(self, token: str | None = None, clock: Callable[[], float] = time.time) -> None:
        self.token = token
        self._clock = clock
        # One re-entrant lock guards all state; predicates passed to wait_for may call helpers.
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._async_waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._server: _Server | None = None
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._polling = 0
        self._allowed_updates: frozenset[str] = frozenset()

        self._calls: list[Call] = []
        self._pending: list[dict[str, Any]] = []
        self._pushed: dict[int, dict[str, Any]] = {}
        self._update_ids = itertools.count(10_001)
        self._file_ids = itertools.count(1)
        self._callback_ids = itertools.count(1)
        self._next_message_id: dict[int, int] = {}
        self._users: dict[int, FakeUser] = {}
        # Every message id that exists in a chat (user's and bot's), for reply checks.
        self._existing: dict[int, set[int]] = {}
        self._messages: dict[int, dict[int, BotMessage]] = {}
        self._videos: list[SentVideo] = []
        self._alerts: list[Alert] = []
        self._callbacks: dict[str, int] = {}
        self._files: dict[str, _StoredFile] = {}
        self._files_by_path: dict[str, _StoredFile] = {}
        self._failures: list[_Failure] = []
        self._commands: list[dict[str, Any]] = []
        self._webhook: tuple[str, str] | None = None  # (url, secret_token) once set
        #: Where webhook updates really go, like the TLS proxy in front of a bot: the bot
        #: registers its public https:// URL, the proxy forwards to its local http port.
        self.webhook_proxy_to: str | None = None
        self._webhook_thread: threading.Thread | None = None
        self._deliveries: list[WebhookDelivery] = []
        self._holds: list[Held] = []
        #: Called with (method, params) as each Bot API call arrives, before it is answered,
        #: on the server's thread: a test looks at the bot's state at that moment.
        self.on_call: Callable[[str, dict[str, Any]], None] | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeBotApi:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.fake = self
        self._server = server
        self._port = server.server_address[1]
        # A short select timeout so stop() returns promptly.
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Answer parked long polls with no updates and shut the server down; idempotent."""
        if self._server is None:
            return
        with self._cond:
            self._stopping = True
            for held in self._holds:
                held.release()
            # Wake long polls so they answer [] now instead of after their timeout.
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = None

    def __enter__(self) -> FakeBotApi:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._port is not None, "FakeBotApi is not started"
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/bot"

    @property
    def base_file_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/file/bot"

    # ------------------------------------------------------------------ user actions

    def send_text(self, user: FakeUser, text: str) -> Pushed:
        """The user sends a plain text message."""
        return self._push_message(user, {"text": text})

    def send_command(self, user: FakeUser, command: str) -> Pushed:
        """The user sends a command such as ``"/start args"``, tagged as a bot_command entity."""
        if not command.startswith("/"):
            raise ValueError(f"a command starts with '/': {command!r}")
        length = len(command.split(maxsplit=1)[0])
        entity = {"type": "bot_command", "offset": 0, "length": length}
        return self._push_message(user, {"text": command, "entities": [entity]})

    def send_photo(self, user: FakeUser, data: bytes, caption: str | None = None) -> Pushed:
        """The user sends a compressed photo; Telegram stores several sizes, largest last.

        The largest size's bytes are ``data`` unchanged, so a download can be compared with it.
        """
        sizes = self._photo_sizes(data)
        fields: dict[str, Any] = {"photo": sizes}
        if caption is not None:
            fields["caption"] = caption
        pushed = self._push_message(user, fields)
        return dataclasses.replace(pushed, file_id=sizes[-1]["file_id"])

    def send_document(
        self,
        user: FakeUser,
        data: bytes,
        file_name: str = "photo.jpg",
        mime_type: str = "image/jpeg",
        caption: str | None = None,
        file_size: int | None = None,
    ) -> Pushed:
        """The user sends a file uncompressed. ``file_size`` may claim more than ``len(data)``,
        to test the 20 MB download limit without allocating it."""
        stored = self._store_file(data, "documents", file_name.rpartition(".")[2], file_size)
        document = {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_name": file_name,
            "mime_type": mime_type,
            "file_size": stored.file_size,
        }
        fields: dict[str, Any] = {"document": document}
        if caption is not None:
            fields["caption"] = caption
        pushed = self._push_message(user, fields)
        return dataclasses.replace(pushed, file_id=stored.file_id)

    def send_other(self, user: FakeUser, kind: str, payload: Any) -> Pushed:
        """The user sends a message of another kind: ``send_other(ANN, "location",
        {"latitude": 1.0, "longitude": 2.0})``; ``payload`` is that field as Telegram sends it."""
        return self._push_message(user, {kind: payload})

    def post_in_channel(
        self, channel_id: int, photo: bytes | None = None, text: str | None = None
    ) -> Pushed:
        """A post in a channel the bot was added to: no ``from``, only the channel as sender."""
        channel = {"id": channel_id, "type": "channel", "title": "Some channel"}
        fields: dict[str, Any] = {"sender_chat": channel}
        if photo is not None:
            fields["photo"] = self._photo_sizes(photo)
        if text is not None:
            fields["text"] = text
        with self._lock:
            message_id = self._new_message_id(channel_id)
            post = {"message_id": message_id, "date": int(self._clock()), "chat": channel}
            update_id = self._push("channel_post", {**post, **fields})
            return Pushed(update_id=update_id, message_id=message_id)

    def press(
        self, user: FakeUser, message_id: int, callback_data: str, strict: bool = True
    ) -> Pushed:
        """The user presses an inline button on one of the bot's messages in their chat.

        With ``strict`` (the default) the message must currently show a button with that
        callback data, as a real user can press nothing else; pass False to forge data.
        """
        with self._lock:
            message = self._messages.get(user.id, {}).get(message_id)
            if message is None or message.deleted:
                raise AssertionError(f"no bot message {message_id} in chat {user.id} to press on")
            if strict and callback_data not in [d for row in message.buttons for _, d in row]:
                raise AssertionError(
                    f"message {message_id} has no button {callback_data!r}: {message.buttons}"
                )
            query_id = f"{user.id}-{next(self._callback_ids)}"
            self._users.setdefault(user.id, user)
            query = {
                "id": query_id,
                "from": user.to_dict(),
                "message": self._message_dict(message),
                "chat_instance": f"ci{user.id}",
                "data": callback_data,
            }
            update_id = self._push("callback_query", query)
            self._callbacks[query_id] = user.id
            return Pushed(update_id=update_id, message_id=message_id, callback_query_id=query_id)

    def press_button(self, user: FakeUser, message_id: int, label: str) -> Pushed:
        """Press the button whose label contains ``label`` on a bot message."""
        return self.press(user, message_id, self.message(user.id, message_id).button_data(label))

    # ------------------------------------------------------------------ queries

    def sent(self) -> list[Call]:
        """Every request the bot made, in order (injected failures included)."""
        with self._lock:
            return list(self._calls)

    def sent_since(self, index: int) -> list[Call]:
        """Requests from the ``index``-th on: cheap to ask again and again (benchmarks)."""
        with self._lock:
            return self._calls[index:]

    def calls(self, method: str | None = None, ok: bool | None = None) -> list[Call]:
        """Requests to ``method`` (any when None), optionally only those that did/did not fail."""
        with self._lock:
            return [
                c
                for c in self._calls
                if (method is None or c.method.lower() == method.lower())
                and (ok is None or c.ok == ok)
            ]

    def messages(self, chat_id: int, include_deleted: bool = False) -> dict[int, BotMessage]:
        """The bot's messages in a chat by message id, as they look now (edits applied)."""
        with self._lock:
            return {
                mid: m
                for mid, m in self._messages.get(chat_id, {}).items()
                if include_deleted or not m.deleted
            }

    def message(self, chat_id: int, message_id: int) -> BotMessage:
        """One bot message as it looks now (deleted ones too); AssertionError if never sent."""
        with self._lock:
            found = self._messages.get(chat_id, {}).get(message_id)
        if found is None:
            raise AssertionError(f"the bot sent no message {message_id} to chat {chat_id}")
        return found

    def last_message(self, chat_id: int) -> BotMessage | None:
        """The newest message from the bot still visible in the chat."""
        visible = self.messages(chat_id)
        return visible[max(visible)] if visible else None

    def videos(self, chat_id: int | None = None) -> list[SentVideo]:
        """Videos the bot sent, in order, with their bytes."""
        with self._lock:
            return [v for v in self._videos if chat_id is None or v.chat_id == chat_id]

    @property
    def alerts(self) -> list[Alert]:
        """Every answerCallbackQuery, in order."""
        with self._lock:
            return list(self._alerts)

    @property
    def commands(self) -> list[dict[str, Any]]:
        """The command list from the last setMyCommands."""
        with self._lock:
            return list(self._commands)

    @property
    def polling(self) -> int:
        """How many getUpdates requests are parked in the server right now."""
        with self._lock:
            return self._polling

    @property
    def pending_updates(self) -> int:
        """Updates pushed and not yet confirmed by a getUpdates offset."""
        with self._lock:
            return len(self._pending)

    def dump(self, last: int = 20) -> str:
        """Recent calls for failure messages; successful getUpdates are left out as noise."""
        with self._lock:
            shown = [c for c in self._calls if not (c.method == "getUpdates" and c.ok)]
        lines = [c.summary() for c in shown[-last:]] or ["(no calls besides getUpdates)"]
        return "recent Bot API calls:\n  " + "\n  ".join(lines)

    # ------------------------------------------------------------------ waiting

    # A timeout argument (not asyncio.timeout around the call) so a failure can dump the calls.
    async def wait_for(
        self,
        predicate: Callable[[], T],
        timeout: float = 10.0,  # noqa: ASYNC109
        what: str | None = None,
    ) -> T:
        """Wait until ``predicate()`` is truthy and return its value.

        The predicate is re-evaluated whenever the server records something (a call or a push),
        never on a timer. An AssertionError from it counts as "not yet" (so it may use
        ``message()`` before the message exists). On timeout, AssertionError with the last such
        error and the recent calls.
        """
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        waiter = (loop, event)
        last_error = ""
        with self._lock:
            self._async_waiters.add(waiter)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    # Clear first: a change during the predicate then sets it again.
                    event.clear()
                    try:
                        value = predicate()
                    except AssertionError as exc:
                        last_error = f"\nlast check: {exc}"
                    else:
                        if value:
                            return value
                    await event.wait()
        except TimeoutError:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what or predicate}{last_error}\n"
                f"{self.dump()}"
            ) from None
        finally:
            with self._lock:
                self._async_waiters.discard(waiter)

    async def wait_for_call(
        self,
        method: str,
        timeout: float = 10.0,  # noqa: ASYNC109
        **match: Any,
    ) -> Call:
        """Wait for a successful call of ``method`` whose params equal every ``match`` item."""

        def find() -> Call | None:
            for call in self.calls(method, ok=True):
                if all(call.params.get(k) == v for k, v in match.items()):
                    return call
            return None

        return await self.wait_for(find, timeout, what=f"{method} {match}")

    async def wait_for_video(
        self,
        chat_id: int,
        count: int = 1,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> SentVideo:
        """Wait until the chat has received ``count`` videos and return the ``count``-th."""

        def find() -> SentVideo | None:
            videos = self.videos(chat_id)
            return videos[count - 1] if len(videos) >= count else None

        return await self.wait_for(find, timeout, what=f"video #{count} in chat {chat_id}")

    async def wait_for_text(
        self,
        chat_id: int,
        substring: str,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> BotMessage:
        """Wait until a visible bot message (text or caption, edits applied) contains
        ``substring``; return the newest such message."""

        def find() -> BotMessage | None:
            hits = [m for m in self.messages(chat_id).values() if substring in m.content]
            return hits[-1] if hits else None

        return await self.wait_for(find, timeout, what=f"{substring!r} in chat {chat_id}")

    async def wait_for_reply(
        self,
        chat_id: int,
        after: Pushed,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> BotMessage:
        """Wait for the bot's first message in the chat after the user's message ``after``
        (the answer to it, whatever it says) and return it as it looks now."""

        def find() -> BotMessage | None:
            later = [m for mid, m in self.messages(chat_id).items() if mid > after.message_id]
            return min(later, key=lambda m: m.message_id) if later else None

        return await self.wait_for(find, timeout, what=f"a reply to message {after.message_id}")

    # ------------------------------------------------------------------ failure injection

    def fail_next(
        self,
        method: str,
        status: int = HTTPStatus.TOO_MANY_REQUESTS,
        retry_after: int | None = None,
        description: str | None = None,
        count: int = 1,
        chat_id: int | None = None,
    ) -> None:
        """Answer the next ``count`` calls of ``method`` (for ``chat_id`` only, if given) with an
        error: 429 with retry_after (default 1), 403 "bot was blocked by the user", 5xx, ..."""
        if status == HTTPStatus.TOO_MANY_REQUESTS and retry_after is None:
            retry_after = 1
        if description is None:
            if status == HTTPStatus.TOO_MANY_REQUESTS:
                description = f"Too Many Requests: retry after {retry_after}"
            elif status == HTTPStatus.FORBIDDEN:
                description = BLOCKED
            else:
                description = HTTPStatus(status).phrase
        with self._lock:
            self._failures.append(
                _Failure(method.lower(), status, description, retry_after, chat_id, count)
            )

    def hold(self, method: str, count: int = 1) -> Held:
        """Park the next ``count`` calls of ``method`` until the returned ``Held`` is released
        (or the server stops); later calls are answered at once."""
        held = Held(method.lower(), count)
        with self._lock:
            self._holds.append(held)
        return held

    def update(self, update_id: int) -> dict[str, Any]:
        """A pushed update as Telegram sends it, e.g. to deliver it a second time."""
        with self._lock:
            return json.loads(json.dumps(self._pushed[update_id]))

    @property
    def webhook_deliveries(self) -> list[WebhookDelivery]:
        """Every webhook POST that got an answer, in order."""
        with self._lock:
            return list(self._deliveries)

    def _park(self, name: str) -> None:
        with self._lock:
            held = next((h for h in self._holds if h.method == name.lower() and h.count), None)
            if held is None:
                return
            held.count -= 1
            held.arrived += 1
            self._notify()
        held.released.wait()

    # ------------------------------------------------------------------ HTTP plumbing

    def _serve(self, handler: _Handler) -> None:
        path = urlsplit(handler.path).path
        try:
            if self._stopping:
                handler.close_connection = True
                raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, "Service Unavailable")
            if path.startswith("/file/bot"):
                token, _, file_path = path.removeprefix("/file/bot").partition("/")
                self._check_token(token)
                self._park("download")
                data = self._download(unquote(file_path))
                self._reply(handler, HTTPStatus.OK, data, "application/octet-stream")
                return
            if not path.startswith("/bot"):
                raise ApiError(HTTPStatus.NOT_FOUND, "Not Found")
            token, _, method = path.removeprefix("/bot").partition("/")
            self._check_token(token)
            try:
                params, files = self._read_params(handler)
            except (ValueError, UnicodeDecodeError) as exc:
                raise _bad(f"can't parse request body: {exc}") from exc
            status, body = self._call(method, params, files)
        except ApiError as exc:
            status, body = exc.status, self._error_body(exc)
        self._reply(handler, status, json.dumps(body).encode())

    def _check_token(self, token: str) -> None:
        if self.token is not None and token != self.token:
            raise ApiError(HTTPStatus.UNAUTHORIZED, "Unauthorized")

    @staticmethod
    def _error_body(exc: ApiError) -> dict[str, Any]:
        body: dict[str, Any] = {
            "ok": False,
            "error_code": int(exc.status),
            "description": exc.description,
        }
        if exc.parameters:
            body["parameters"] = exc.parameters
        return body

    @staticmethod
    def _reply(
        handler: _Handler, status: int, payload: bytes, content_type: str = "application/json"
    ) -> None:
        # The client may have given up (timeout, shutdown); that is not the server's problem.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            handler.send_response(status)
            handler.send_header("Content-Type", content_type)
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)

    @staticmethod
    def _read_params(handler: _Handler) -> tuple[dict[str, Any], dict[str, UploadedFile]]:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        content_type = handler.headers.get("Content-Type") or ""
        raw: dict[str, Any] = dict(parse_qsl(urlsplit(handler.path).query))
        files: dict[str, UploadedFile] = {}
        if content_type.startswith("multipart/form-data"):
            fields, files = _parse_multipart(content_type, body)
            raw.update(fields)
        elif body:
            raw.update(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        return {k: _decode_value(k, v) for k, v in raw.items()}, files

    def _call(
        self, method: str, params: dict[str, Any], files: dict[str, UploadedFile]
    ) -> tuple[int, dict[str, Any]]:
        handler = self._methods().get(method.lower())
        if handler is None:
            self._record(method, params, files, HTTPStatus.NOT_FOUND, None, "method not found")
            raise ApiError(HTTPStatus.NOT_FOUND, "Not Found: method not found")
        name = handler.__name__.removeprefix("_m_")
        self._park(name)
        if self.on_call is not None:
            self.on_call(name, params)
        # Long polling blocks outside the lock (the condition releases it while waiting).
        with self._lock:
            failure = self._take_failure(name, params)
        if failure is not None:
            self._record(name, params, files, failure.status, None, failure.description)
            raise failure
        try:
            result = handler(params, files)
        except ApiError as exc:
            self._record(name, params, files, exc.status, None, exc.description)
            raise
        except Exception as exc:
            # A bug in this fake (or a request it cannot read) should show up in dump(), not as
            # a dropped connection that PTB reports as a vague NetworkError.
            description = f"Internal Server Error: fake_botapi failed on {name}: {exc!r}"
            self._record(name, params, files, HTTPStatus.INTERNAL_SERVER_ERROR, None, description)
            raise ApiError(HTTPStatus.INTERNAL_SERVER_ERROR, description) from exc
        self._record(name, params, files, HTTPStatus.OK, result, None)
        return HTTPStatus.OK, {"ok": True, "result": result}

    def _take_failure(self, name: str, params: dict[str, Any]) -> ApiError | None:
        for failure in self._failures:
            if failure.method != name.lower():
                continue
            if failure.chat_id is not None and params.get("chat_id") != failure.chat_id:
                continue
            failure.remaining -= 1
            if failure.remaining <= 0:
                self._failures.remove(failure)
            parameters = {"retry_after": failure.retry_after} if failure.retry_after else None
            return ApiError(failure.status, failure.description, parameters)
        return None

    def _record(
        self,
        method: str,
        params: dict[str, Any],
        files: dict[str, UploadedFile],
        status: int,
        result: Any,
        description: str | None,
    ) -> None:
        with self._lock:
            call = Call(
                len(self._calls),
                method,
                params,
                files,
                int(status),
                result,
                description,
                time.monotonic(),
            )
            self._calls.append(call)
            self._notify()

    def _notify(self) -> None:
        """Wake long polls and every wait_for (caller holds the lock)."""
        self._cond.notify_all()
        for loop, event in list(self._async_waiters):
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:
                # The waiter's loop is closed: nobody is waiting any more.
                self._async_waiters.discard((loop, event))

    def _methods(self) -> dict[str, Callable[[dict[str, Any], dict[str, UploadedFile]], Any]]:
        methods = {
            name.removeprefix("_m_").lower(): getattr(self, name)
            for name in dir(self)
            if name.startswith("_m_")
        }
        return methods

    # ------------------------------------------------------------------ state helpers

    def _push(self, kind: str, payload: dict[str, Any]) -> int:
        with self._lock:
            update_id = next(self._update_ids)
            data = {"update_id": update_id, kind: payload}
            _check_round_trip(data)
            self._pushed[update_id] = data
            if self._allowed(data):
                self._pending.append(data)
            self._notify()
            return update_id

    def _allowed(self, update: dict[str, Any]) -> bool:
        kinds = set(update) - {"update_id"}
        return not self._allowed_updates or kinds <= self._allowed_updates

    def _push_message(self, user: FakeUser, fields: dict[str, Any]) -> Pushed:
        with self._lock:
            self._users[user.id] = user
            message_id = self._new_message_id(user.id)
            message = {
                "message_id": message_id,
                "date": int(self._clock()),
                "chat": user.chat_dict(),
                "from": user.to_dict(),
                **fields,
            }
            update_id = self._push("message", message)
            return Pushed(update_id=update_id, message_id=message_id)

    def _new_message_id(self, chat_id: int) -> int:
        message_id = self._next_message_id.get(chat_id, 1)
        self._next_message_id[chat_id] = message_id + 1
        self._existing.setdefault(chat_id, set()).add(message_id)
        return message_id

    def _store_file(
        self, data: bytes, folder: str, extension: str, file_size: int | None = None
    ) -> _StoredFile:
        with self._lock:
            n = next(self._file_ids)
            stored = _StoredFile(
                file_id=f"BAACAgIAAxk-{folder}-{n:06d}",
                file_unique_id=f"AgAD{n:06d}",
                data=data,
                file_size=file_size if file_size is not None else len(data),
                file_path=f"{folder}/file_{n}.{extension or 'bin'}",
            )
            self._files[stored.file_id] = stored
            self._files_by_path[stored.file_path] = stored
            return stored

    def _photo_sizes(self, data: bytes) -> list[dict[str, Any]]:
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                width, height = image.size
                renditions: list[tuple[bytes, int, int]] = []
                for side in PHOTO_SIZES:
                    if side >= max(width, height):
                        break
                    small = image.convert("RGB")
                    small.thumbnail((side, side))
                    buffer = io.BytesIO()
                    small.save(buffer, "JPEG")
                    renditions.append((buffer.getvalue(), *small.size))
        except OSError as exc:
            raise ValueError(f"not an image Telegram would accept as a photo: {exc}") from exc
        renditions.append((data, width, height))
        sizes = []
        for blob, w, h in renditions:
            stored = self._store_file(blob, "photos", "jpg")
            sizes.append(
                {
                    "file_id": stored.file_id,
                    "file_unique_id": stored.file_unique_id,
                    "width": w,
                    "height": h,
                    "file_size": stored.file_size,
                }
            )
        return sizes

    def _chat_dict(self, chat_id: int) -> dict[str, Any]:
        user = self._users.get(chat_id)
        if user is not None:
            return user.chat_dict()
        # A chat the test never wrote from: still deliverable, as for a user known from the DB.
        return {"id": chat_id, "type": "private", "first_name": "User"}

    def _message_dict(self, message: BotMessage) -> dict[str, Any]:
        data: dict[str, Any] = {
            "message_id": message.message_id,
            "date": message.date,
            "chat": self._chat_dict(message.chat_id),
            "from": {
                "id": BOT_ID,
                "is_bot": True,
                "first_name": BOT_FIRST_NAME,
                "username": BOT_USERNAME,
            },
            **message.media,
        }
        if message.text is not None:
            data["text"] = message.text
        if message.caption is not None:
            data["caption"] = message.caption
        if message.reply_markup:
            data["reply_markup"] = message.reply_markup
        if message.edit_date is not None:
            data["edit_date"] = message.edit_date
        return data

    def _chat_id(self, params: dict[str, Any]) -> int:
        chat_id = params.get("chat_id")
        if chat_id is None or chat_id == "":
            raise _bad("chat_id is empty")
        if not isinstance(chat_id, int):
            raise _bad("chat not found")
        return chat_id

    def _reply_to(self, chat_id: int, params: dict[str, Any]) -> int | None:
        # PTB sends replies as reply_parameters (reply_to_message_id is deprecated).
        reply = params.get("reply_parameters") or {}
        message_id = reply.get("message_id")
        allow = reply.get("allow_sending_without_reply", False)
        if message_id is None:
            return None
        if message_id not in self._existing.get(chat_id, set()):
            if allow:
                return None
            raise _bad("message to be replied not found")
        return int(message_id)

    @staticmethod
    def _check_markup(markup: Any) -> dict[str, Any] | None:
        if markup is None:
            return None
        if not isinstance(markup, dict):
            raise _bad("can't parse reply keyboard markup JSON object")
        for row in markup.get("inline_keyboard", []):
            for button in row:
                data = button.get("callback_data")
                if data is not None and not 1 <= len(data.encode()) <= MAX_CALLBACK_DATA:
                    raise _bad("BUTTON_DATA_INVALID")
        return markup

    def _store_bot_message(self, chat_id: int, params: dict[str, Any], **fields: Any) -> BotMessage:
        reply_to = self._reply_to(chat_id, params)
        markup = self._check_markup(params.get("reply_markup"))
        message = BotMessage(
            chat_id=chat_id,
            message_id=self._new_message_id(chat_id),
            date=int(self._clock()),
            reply_markup=markup,
            reply_to_message_id=reply_to,
            **fields,
        )
        self._messages.setdefault(chat_id, {})[message.message_id] = message
        return message

    def _upload(
        self, params: dict[str, Any], files: dict[str, UploadedFile], field: str
    ) -> UploadedFile | _StoredFile | None:
        """The file in ``field``: an upload or an earlier file_id."""
        if field in files:
            return files[field]
        value = params.get(field)
        if value is None:
            return None
        stored = self._files.get(str(value))
        if stored is None:
            raise _bad("wrong file identifier/HTTP URL specified")
        return stored

    def _editable(self, params: dict[str, Any]) -> BotMessage:
        chat_id = self._chat_id(params)
        message = self._messages.get(chat_id, {}).get(params.get("message_id"))  # type: ignore[arg-type]
        if message is None or message.deleted:
            raise _bad("message to edit not found")
        return message

    def _apply_edit(self, old: BotMessage, **changes: Any) -> dict[str, Any]:
        new = dataclasses.replace(old, **changes)
        if (new.text, new.caption, new.reply_markup) == (old.text, old.caption, old.reply_markup):
            raise _bad(NOT_MODIFIED.removeprefix("Bad Request: "))
        new = dataclasses.replace(new, edits=old.edits + 1, edit_date=int(self._clock()))
        self._messages[old.chat_id][old.message_id] = new
        return self._message_dict(new)

    # ------------------------------------------------------------------ Bot API methods
    # Each _m_<Name> takes decoded params and uploaded files and returns the "result" JSON.

    def _m_getMe(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> Any:
        return {
            "id": BOT_ID,
            "is_bot": True,
            "first_name": BOT_FIRST_NAME,
            "username": BOT_USERNAME,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }

    def _m_getUpdates(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> Any:
        offset = params.get("offset") or 0
        limit = params.get("limit") or 100
        timeout = float(params.get("timeout") or 0)
        deadline = time.monotonic() + timeout
        with self._cond:
            # Like Telegram, allowed_updates sticks until changed, and updates of other kinds
            # created after this call are dropped (queued ones are still delivered).
            if params.get("allowed_updates") is not None:
                self._allowed_updates = frozenset(params["allowed_updates"])
            # An offset confirms (and forgets) every earlier update.
            if offset > 0:
                self._pending = [u for u in self._pending if u["update_id"] >= offset]
            self._polling += 1
            # Tell waiters a long poll is parked, so a test can push "while the bot waits".
            self._notify()
            try:
                while not self._pending and not self._stopping:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
            finally:
                self._polling -= 1
            return list(self._pending[:limit])

    def _m_deleteWebhook(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> Any:
        with self._lock:
            self._webhook = None
        return True

    def _m_setWebhook(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> Any:
        """Webhook mode: pending and new updates are POSTed to ``url`` with the secret header,
        as Telegram does, by a delivery thread (retrying until the bot answers 200)."""
        url = params.get("url")
        if not url:
            raise _bad("bad webhook: an HTTPS URL must be provided for webhook")
        with self._cond:
            self._webhook = (url, params.get("secret_token") or "")
            if self._webhook_thread is None:
                self._webhook_thread = threading.Thread(target=self._deliver_webhooks, daemon=True)
                self._webhook_thread.start()
            self._cond.notify_all()
        return True

    @property
    def webhook(self) -> tuple[str, str] | None:
        """``(url, secret_token)`` the bot registered with setWebhook, if any."""
        with self._lock:
            return self._webhook

    def _deliver_webhooks(self) -> None:
        import urllib.error
        import urllib.request

        while True:
            with self._cond:
                while not self._stopping and not (self._webhook and self._pending):
                    self._cond.wait()
                if self._stopping:
                    return
                assert self._webhook is not None
                (url, secret), update = self._webhook, self._pending[0]
            request = urllib.request.Request(
                self.webhook_proxy_to or url,
                data=json.dumps(update).encode(),
                headers={
                    "Content-Type": "application/json",
                    "X-Telegram-Bot-Api-Secret-Token": secret,
                },
            )
            status = 0
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    status = response.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            except (urllib.error.URLError, OSError):
                pass
            delivered = status == HTTPStatus.OK
            with self._cond:
                if status:
                    self._deliveries.append(
                        WebhookDelivery(update["update_id"], status, len(self._calls))
                    )
                    self._notify()
                if delivered and self._pending and self._pending[0] is update:
                    self._pending.pop(0)
                elif not delivered:
                    # Telegram retries later; a short pause keeps a down bot from a busy loop.
                    self._cond.wait(0.2)

    def _m_setMyCommands(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> Any:
        with self._lock:
            self._commands = list(params.get("commands") or [])
        return True

    def _m_sendChatAction(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> Any:
        self._chat_id(params)
        if not params.get("action"):
            raise _bad("action is empty")
        return True

    def _m_sendMessage(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> Any:
        chat_id = self._chat_id(params)
        text = _plain(params, "text", 4096)
        if not text:
            raise _bad("message text is empty")
        with self._lock:
            message = self._store_bot_message(chat_id, params, kind="text", text=text)
            return self._message_dict(message)

    def _m_editMessageText(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> Any:
        text = _plain(params, "text", 4096)
        if not text:
            raise _bad("message text is empty")
        with self._lock:
            message = self._editable(params)
            if message.text is None:
                raise _bad("there is no text in the message to edit")
            # Like Telegram, an edit without reply_markup removes the inline keyboard.
            markup = self._check_markup(params.get("reply_markup"))
            return self._apply_edit(message, text=text, reply_markup=markup)

    def _m_editMessageReplyMarkup(
        self, params: dict[str, Any], files: dict[str, UploadedFile]
    ) -> Any:
        with self._lock:
            message = self._editable(params)
            markup = self._check_markup(params.get("reply_markup"))
            return self._apply_edit(message, reply_markup=markup)

    def _m_deleteMessage(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> Any:
        chat_id = self._chat_id(params)
        with self._lock:
            message = self._messages.get(chat_id, {}).get(params.get("message_id"))  # type: ignore[arg-type]
            if message is None or message.deleted:
                raise _bad("message to delete not found")
            self._messages[chat_id][message.message_id] = dataclasses.replace(message, deleted=True)
            self._existing[chat_id].discard(message.message_id)
            return True

    def _m_answerCallbackQuery(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> Any:
        query_id = str(params.get("callback_query_id") or "")
        with self._lock:
            if query_id not in self._callbacks:
                raise _bad(QUERY_TOO_OLD.removeprefix("Bad Request: "))
            self._alerts.append(
                Alert(
                    callback_query_id=query_id,
                    user_id=self._callbacks[query_id],
                    text=params.get("text"),
                    show_alert=bool(params.get("show_alert")),
                )
            )
            return True

    def _m_getFile(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> Any:
        with self._lock:
            stored = self._files.get(str(params.get("file_id") or ""))
        if stored is None:
            raise _bad("invalid file_id")
        if stored.file_size > MAX_DOWNLOAD_SIZE:
            raise _bad("file is too big")
        return {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": stored.file_size,
            "file_path": stored.file_path,
        }

    def _download(self, file_path: str) -> bytes:
        with self._lock:
            stored = self._files_by_path.get(file_path)
        if stored is None:
            raise ApiError(HTTPStatus.NOT_FOUND, "Not Found")
        return stored.data

    def _m_sendVideo(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> Any:
        chat_id = self._chat_id(params)
        source = self._upload(params, files, "video")
        if source is None:
            raise _bad("there is no video in the request")
        caption = _plain(params, "caption", 1024)
        thumb = self._upload(params, files, "thumbnail")
        with self._lock:
            if isinstance(source, UploadedFile):
                if len(source.data) > MAX_UPLOAD_SIZE:
                    raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "Request Entity Too Large")
                stored = self._store_file(source.data, "videos", "mp4")
                file_name = source.filename
            else:
                stored, file_name = source, None
            video: dict[str, Any] = {
                "file_id": stored.file_id,
                "file_unique_id": stored.file_unique_id,
                "width": params.get("width") or 0,
                "height": params.get("height") or 0,
                "duration": params.get("duration") or 0,
                "mime_type": "video/mp4",
                "file_size": stored.file_size,
            }
            if file_name:
                video["file_name"] = file_name
            if thumb is not None:
                thumb_file = self._store_file(thumb.data, "thumbnails", "jpg")
                thumb_width, thumb_height = _image_size(thumb.data)
                video["thumbnail"] = {
                    "file_id": thumb_file.file_id,
                    "file_unique_id": thumb_file.file_unique_id,
                    "width": thumb_width,
                    "height": thumb_height,
                    "file_size": thumb_file.file_size,
                }
            message = self._store_bot_message(
                chat_id,
                params,
                kind="video",
                caption=caption,
                file_id=stored.file_id,
                media={"video": video},
            )
            self._videos.append(
                SentVideo(
                    chat_id=chat_id,
                    message_id=message.message_id,
                    file_id=stored.file_id,
                    data=stored.data,
                    thumbnail=thumb.data if thumb is not None else None,
                    caption=caption,
                    width=params.get("width"),
                    height=params.get("height"),
                    duration=params.get("duration"),
                    supports_streaming=params.get("supports_streaming"),
                    reply_to_message_id=message.reply_to_message_id,
                    reply_markup=message.reply_markup,
                    file_name=file_name,
                    resent=not isinstance(source, UploadedFile),
                )
            )
            return self._message_dict(message)


@pytest.fixture
def fake_botapi() -> Iterator[FakeBotApi]:
    """A started FakeBotApi, stopped after the test."""
    with FakeBotApi() as fake:
        yield fake

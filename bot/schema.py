"""The database schema: forward-only migrations, numbered, one list per dialect.

Owned by nobody's queries: ``bot.db`` applies them when it opens a database; ``bot.store``
(users, cards, flags, strangers) and ``bot.queue`` (jobs) each speak SQL about their own
tables only.
"""

from __future__ import annotations

import enum


class Dialect(enum.StrEnum):
    """Which SQL the database speaks; the few queries that differ are chosen by it.

    Defined here, not in ``bot.db`` (which re-exports it): ``bot.db`` opens
    ``bot.db_postgres``, which needs it too, and neither may import the other back.
    """

    SQLITE = "sqlite"
    POSTGRES = "postgres"


#: Forward-only schema migrations; migration ``n`` (0-based) moves ``PRAGMA user_version``
#: from ``n`` to ``n + 1``. Append new scripts, never edit a shipped one.
SQLITE_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL DEFAULT '',
        options TEXT,                    -- JobOptions as JSON: defaults for the next card
        allowed INTEGER,                 -- NULL: config decides; 0 denied; 1 allowed
        allowed_by INTEGER,
        allowed_at REAL,
        first_seen REAL,
        last_seen REAL
    );
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        user_id INTEGER NOT NULL,
        chat_id INTEGER NOT NULL,
        photo_message_id INTEGER NOT NULL,
        photo_path TEXT NOT NULL,
        options TEXT NOT NULL,
        status TEXT NOT NULL,
        dedupe_key TEXT NOT NULL UNIQUE,
        status_message_id INTEGER,
        attempts INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL DEFAULT 3,
        created_at REAL NOT NULL,
        started_at REAL,
        heartbeat_at REAL,
        finished_at REAL,
        worker_id TEXT,
        used_backend TEXT,
        fallback_reason TEXT,
        veo_operation TEXT,
        cost_usd REAL NOT NULL DEFAULT 0,
        error TEXT,
        video_path TEXT,
        video_file_id TEXT,
        video_size INTEGER,
        video_duration REAL,
        video_width INTEGER,
        video_height INTEGER,
        seed INTEGER,
        extra TEXT NOT NULL DEFAULT '{}',
        cancel_requested INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX jobs_status_id ON jobs (status, id);
    CREATE INDEX jobs_user_created ON jobs (user_id, created_at);
    CREATE INDEX jobs_user_started ON jobs (user_id, started_at);
    CREATE TABLE cards (
        chat_id INTEGER NOT NULL,
        message_id INTEGER NOT NULL,
        user_id INTEGER NOT NULL,
        photo_message_id INTEGER NOT NULL,
        photo_path TEXT NOT NULL,
        options TEXT NOT NULL,
        created_at REAL NOT NULL,
        generation INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (chat_id, message_id)
    );
    CREATE TABLE flags (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
    # 2: a retried job waits before it can be claimed again (backoff after a transient error).
    """
    ALTER TABLE jobs ADD COLUMN not_before REAL;
    """,
    # 3: a job's own failures and the crashes under it are counted apart (``bot.jobs.Charge``),
    # so restarts do not spend the attempts of a good photo (rows from before start at zero);
    # a delivered clip's message id is recorded in the same write that says ``done``.
    """
    ALTER TABLE jobs ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN crashes INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN video_message_id INTEGER;
    """,
    # 4: when each stranger was last told the bot is private (they hear it once a day).
    """
    CREATE TABLE strangers (
        user_id INTEGER PRIMARY KEY,
        told_at REAL NOT NULL
    );
    CREATE INDEX cards_created ON cards (created_at);
    CREATE INDEX jobs_photo ON jobs (photo_path);
    CREATE INDEX cards_photo_message ON cards (chat_id, photo_message_id);
    """,
    # 5: Telegram's file id of the photo, so a consumer on another host (no shared disk)
    # fetches it through the Bot API.
    """
    ALTER TABLE jobs ADD COLUMN photo_file_id TEXT;
    ALTER TABLE cards ADD COLUMN photo_file_id TEXT;
    """,
)

#: PostgreSQL's list (``bot.db_postgres``): the same tables as ``SQLITE_MIGRATIONS`` in PostgreSQL's
#: types: ids and Telegram numbers are BIGINT (user and chat ids pass 2**31), times DOUBLE
#: PRECISION epoch seconds (REAL is 4 bytes here), flags 0/1 integers as on SQLite. Migration
#: ``n`` moves the ``schema_version`` table from ``n`` to ``n + 1``. The first script is SQLite's
#: first four at once; later ones are appended to both lists together.
POSTGRES_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE users (
        id BIGINT PRIMARY KEY,
        name TEXT NOT NULL DEFAULT '',
        options TEXT,
        allowed INTEGER,
        allowed_by BIGINT,
        allowed_at DOUBLE PRECISION,
        first_seen DOUBLE PRECISION,
        last_seen DOUBLE PRECISION
    );
    CREATE TABLE jobs (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        user_id BIGINT NOT NULL,
        chat_id BIGINT NOT NULL,
        photo_message_id BIGINT NOT NULL,
        photo_path TEXT NOT NULL,
        options TEXT NOT NULL,
        status TEXT NOT NULL,
        dedupe_key TEXT NOT NULL UNIQUE,
        status_message_id BIGINT,
        attempts INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL DEFAULT 3,
        created_at DOUBLE PRECISION NOT NULL,
        started_at DOUBLE PRECISION,
        heartbeat_at DOUBLE PRECISION,
        finished_at DOUBLE PRECISION,
        worker_id TEXT,
        used_backend TEXT,
        fallback_reason TEXT,
        veo_operation TEXT,
        cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
        error TEXT,
        video_path TEXT,
        video_file_id TEXT,
        video_size BIGINT,
        video_duration DOUBLE PRECISION,
        video_width INTEGER,
        video_height INTEGER,
        seed BIGINT,
        extra TEXT NOT NULL DEFAULT '{}',
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        not_before DOUBLE PRECISION,
        failures INTEGER NOT NULL DEFAULT 0,
        crashes INTEGER NOT NULL DEFAULT 0,
        video_message_id BIGINT
    );
    CREATE INDEX jobs_status_id ON jobs (status, id);
    CREATE INDEX jobs_user_created ON jobs (user_id, created_at);
    CREATE INDEX jobs_user_started ON jobs (user_id, started_at);
    CREATE INDEX jobs_photo ON jobs (photo_path);
    CREATE TABLE cards (
        chat_id BIGINT NOT NULL,
        message_id BIGINT NOT NULL,
        user_id BIGINT NOT NULL,
        photo_message_id BIGINT NOT NULL,
        photo_path TEXT NOT NULL,
        options TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        generation INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (chat_id, message_id)
    );
    CREATE INDEX cards_created ON cards (created_at);
    CREATE INDEX cards_photo_message ON cards (chat_id, photo_message_id);
    CREATE TABLE flags (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE strangers (
        user_id BIGINT PRIMARY KEY,
        told_at DOUBLE PRECISION NOT NULL
    );
    """,
    # SQLite's 5: the photo's Telegram file id, for consumers on other hosts.
    """
    ALTER TABLE jobs ADD COLUMN photo_file_id TEXT;
    ALTER TABLE cards ADD COLUMN photo_file_id TEXT;
    """,
)

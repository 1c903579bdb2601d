"""SQL schema of ``state.db`` and ``index.db`` (both SQLite in WAL mode)."""

from __future__ import annotations

STATE_SCHEMA = """
-- One row per subscriber (name). Everything below `committed` is done (handled or dead-lettered);
-- `done` lists offsets in [committed, position) already done out of order; the other offsets in
-- that range were in flight and are redelivered after a restart.
CREATE TABLE IF NOT EXISTS subscribers (
    name          TEXT PRIMARY KEY,
    patterns      TEXT NOT NULL,              -- JSON list of topic patterns
    start_offset  INTEGER NOT NULL,           -- first offset this subscriber receives
    committed     INTEGER NOT NULL,
    position      INTEGER NOT NULL,           -- next offset to read from the log
    done          TEXT NOT NULL DEFAULT '[]', -- JSON list of offsets
    processed     INTEGER NOT NULL DEFAULT 0, -- handled successfully
    failures      INTEGER NOT NULL DEFAULT 0, -- failed tries
    dead          INTEGER NOT NULL DEFAULT 0, -- sent to the DLQ
    handler_hist  TEXT NOT NULL DEFAULT '{}', -- JSON {bucket: count} of handler times
    created       REAL NOT NULL,
    updated       REAL NOT NULL,
    heartbeat     REAL,                        -- last time a running broker flushed this row
    pid           INTEGER                      -- process running it
);

-- Deliveries that took more than one try (or are being retried): tries are kept after success.
-- A delivery with no row here and an offset below `committed` succeeded at its first try.
CREATE TABLE IF NOT EXISTS deliveries (
    subscriber  TEXT NOT NULL,
    "offset"    INTEGER NOT NULL,
    event_id    TEXT NOT NULL,
    topic       TEXT NOT NULL,
    tries       INTEGER NOT NULL,
    status      TEXT NOT NULL,               -- retrying | done | dead
    last_error  TEXT,
    updated     REAL NOT NULL,
    PRIMARY KEY (subscriber, "offset")
);
CREATE INDEX IF NOT EXISTS deliveries_by_time ON deliveries (updated);  -- history retention

-- Every failed try, with its traceback. Rows of finished deliveries (and their `deliveries`
-- rows, and resolved or discarded DLQ entries) are deleted after `history_retention`.
CREATE TABLE IF NOT EXISTS errors (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    subscriber     TEXT NOT NULL,
    "offset"       INTEGER NOT NULL,
    event_id       TEXT NOT NULL,
    topic          TEXT NOT NULL,
    correlation_id TEXT,
    attempt        INTEGER NOT NULL,
    kind           TEXT NOT NULL,             -- error | timeout | rejected
    error_type     TEXT NOT NULL,
    message        TEXT NOT NULL,
    traceback      TEXT NOT NULL,
    time           REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS errors_by_delivery ON errors (subscriber, "offset");
CREATE INDEX IF NOT EXISTS errors_by_time ON errors (time);

-- Dead letter queue: one entry per (subscriber, offset) that ran out of tries.
CREATE TABLE IF NOT EXISTS dlq (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    subscriber     TEXT NOT NULL,
    "offset"       INTEGER NOT NULL,
    event_id       TEXT NOT NULL,
    topic          TEXT NOT NULL,
    correlation_id TEXT,
    tries          INTEGER NOT NULL,
    error          TEXT NOT NULL,
    status         TEXT NOT NULL,             -- dead | retrying | resolved | discarded
    dead_at        REAL NOT NULL,
    updated        REAL NOT NULL,
    retries        INTEGER NOT NULL DEFAULT 0, -- times an operator sent it back
    UNIQUE (subscriber, "offset")
);
CREATE INDEX IF NOT EXISTS dlq_by_status ON dlq (status, subscriber);
CREATE INDEX IF NOT EXISTS dlq_by_dead_at ON dlq (dead_at);  -- alerts: what went dead since

-- Operator requests (from the CLI or dashboard) carried out by the running broker.
CREATE TABLE IF NOT EXISTS requests (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    action   TEXT NOT NULL,
    args     TEXT NOT NULL,
    status   TEXT NOT NULL DEFAULT 'pending',   -- pending | done | failed
    result   TEXT,
    created  REAL NOT NULL,
    done_at  REAL
);
CREATE INDEX IF NOT EXISTS requests_pending ON requests (status);

-- Processes sharing the data directory (see localbroker/state/coordination.py). A row is added
-- when a broker starts, its heartbeat renewed every second, and it is removed on close; a row
-- whose process died is removed by the next live process that notices.
CREATE TABLE IF NOT EXISTS processes (
    id        TEXT PRIMARY KEY,                -- '<pid>@<host>-<random>': unique per start
    pid       INTEGER NOT NULL,
    host      TEXT NOT NULL,
    started   REAL NOT NULL,
    heartbeat REAL NOT NULL,
    version   TEXT NOT NULL                    -- localbroker's version
);  -- the roles it holds are the leases whose holder it is

-- Leases: what one process at a time may do (a singleton role, a subscriber's queue).
-- `epoch` grows at every change of holder: a fencing token that a holder's writes check.
CREATE TABLE IF NOT EXISTS leases (
    name     TEXT PRIMARY KEY,
    holder   TEXT,                             -- a processes.id, NULL when free
    expires  REAL NOT NULL,                    -- wall-clock time after which others may take it
    epoch    INTEGER NOT NULL
);

-- Small key/value table for extensions (sync and archive cursors, ...).
CREATE TABLE IF NOT EXISTS kv (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
"""

#: Format of ``index.db`` (``PRAGMA user_version``). The broker rebuilds an index of another
#: format from the log when it opens it; tools read the log instead until it has.
INDEX_FORMAT = 2

# Narrow on purpose (about a third of the log's size; format 1 cost as much as the log): ids
# that are UUIDs are stored as their 16 bytes (others as text), topics as a number, times as
# integer milliseconds, and a chain's first event stores no correlation id (it is its own id).
# Only what queries need is indexed: event ids (lookups, chains' first events, the causation
# join), chain ids (partial: the first events, which have none, take no room), and topics
# with offsets (topic filters and counts). Time ranges become offset ranges by a binary search
# on the primary key: the append time grows with the offset.
INDEX_SCHEMA = """
CREATE TABLE IF NOT EXISTS topics (
    topic_id  INTEGER PRIMARY KEY,
    name      TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS events (
    "offset"       INTEGER PRIMARY KEY,
    id             BLOB NOT NULL,          -- 16 bytes (a UUID), or the id as text
    topic          INTEGER NOT NULL,       -- topics.topic_id
    key            TEXT,
    time           INTEGER NOT NULL,       -- append time, milliseconds since the epoch
    correlation_id BLOB,                   -- NULL: the event's own id (it starts its chain)
    causation_id   BLOB
);
CREATE INDEX IF NOT EXISTS events_by_id ON events (id);
CREATE INDEX IF NOT EXISTS events_by_correlation ON events (correlation_id)
    WHERE correlation_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_by_topic ON events (topic, "offset");
"""

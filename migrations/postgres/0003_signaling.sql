-- The real-time hub's durable state: each room's sequenced history and the
-- open chat queue entries, so that a restart loses neither.

-- One event of a room's history. `(room, seq)` is the key, so two writers
-- can never both store the same seq; the unique index on
-- `(room, sender, client_id)` makes a resent chat message a duplicate
-- instead of a second row. NULLs are distinct in it, so events without a
-- client id never collide.
CREATE TABLE signaling_events (
    room TEXT NOT NULL,
    seq BIGINT NOT NULL,
    audience TEXT,
    kind TEXT NOT NULL,
    sender TEXT,
    client_id TEXT,
    body TEXT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (room, seq)
);
CREATE UNIQUE INDEX signaling_events_client_id ON signaling_events(room, sender, client_id);
-- Retention sweeps old chat transcripts by kind and age.
CREATE INDEX signaling_events_kind_at ON signaling_events(kind, at);

-- One chat pre-assessment conversation in the queue. Flags are 0 or 1
-- because the Any driver cannot decode SQLite booleans.
CREATE TABLE signaling_queue_entries (
    room TEXT PRIMARY KEY NOT NULL,
    ticket BIGINT NOT NULL,
    service TEXT NOT NULL,
    home_municipality TEXT NOT NULL,
    resident TEXT NOT NULL,
    anonymous BIGINT NOT NULL CHECK (anonymous IN (0, 1)),
    eligible_municipalities TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('waiting', 'assigned', 'closed')),
    staff TEXT,
    enqueued_at BIGINT NOT NULL
);
-- A restart loads only the open entries, in ticket order.
CREATE INDEX signaling_queue_entries_open ON signaling_queue_entries(ticket) WHERE state <> 'closed';

CREATE EXTENSION IF NOT EXISTS btree_gist;

-- Kontakt's foundation schema for PostgreSQL. Keep it in step with
-- migrations/sqlite/0001_foundation.sql: both databases pass the same tests.
-- Times are unix seconds in UTC. Dates are ISO text (YYYY-MM-DD), which sorts.
-- Flags are BIGINT 0/1: sqlx's Any driver cannot decode SQLite booleans.

CREATE TABLE municipalities (
    code TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    time_zone TEXT NOT NULL
);

CREATE TABLE services (
    code TEXT PRIMARY KEY NOT NULL,
    name_key TEXT NOT NULL,
    anonymous_chat BIGINT NOT NULL CHECK (anonymous_chat IN (0, 1)),
    slot_minutes BIGINT NOT NULL CHECK (slot_minutes > 0),
    buffer_minutes BIGINT NOT NULL CHECK (buffer_minutes >= 0)
);

CREATE TABLE policy_rules (
    service_code TEXT NOT NULL REFERENCES services(code),
    step TEXT NOT NULL CHECK (step IN ('information','pre_assessment','meeting','investigation','decision','follow_up')),
    rule TEXT NOT NULL CHECK (rule IN ('open','agreement','home_only')),
    legal_basis TEXT NOT NULL,
    PRIMARY KEY (service_code, step)
);

CREATE TABLE agreements (
    id TEXT PRIMARY KEY NOT NULL,
    host_code TEXT NOT NULL REFERENCES municipalities(code),
    home_code TEXT NOT NULL REFERENCES municipalities(code),
    valid_from TEXT NOT NULL,
    valid_to TEXT NOT NULL,
    reference TEXT NOT NULL,
    CHECK (host_code <> home_code),
    CHECK (valid_from <= valid_to)
);

CREATE TABLE agreement_scopes (
    agreement_id TEXT NOT NULL REFERENCES agreements(id) ON DELETE CASCADE,
    service_code TEXT NOT NULL REFERENCES services(code),
    step TEXT NOT NULL,
    PRIMARY KEY (agreement_id, service_code, step)
);

CREATE TABLE staff (
    id TEXT PRIMARY KEY NOT NULL,
    municipality_code TEXT NOT NULL REFERENCES municipalities(code),
    email TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('staff','scheduler','admin')),
    password_hash TEXT NOT NULL,
    max_chats BIGINT NOT NULL DEFAULT 3,
    created_at BIGINT NOT NULL
);

CREATE TABLE staff_services (
    staff_id TEXT NOT NULL REFERENCES staff(id) ON DELETE CASCADE,
    service_code TEXT NOT NULL REFERENCES services(code),
    PRIMARY KEY (staff_id, service_code)
);

CREATE TABLE staff_languages (
    staff_id TEXT NOT NULL REFERENCES staff(id) ON DELETE CASCADE,
    language TEXT NOT NULL,
    PRIMARY KEY (staff_id, language)
);

CREATE TABLE residents (
    id TEXT PRIMARY KEY NOT NULL,
    email TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    home_code TEXT NOT NULL REFERENCES municipalities(code),
    language TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- A weekly window in which a staff member takes meetings. Slots are cut from
-- it with the length and buffer of the service booked.
CREATE TABLE availability_templates (
    id TEXT PRIMARY KEY NOT NULL,
    staff_id TEXT NOT NULL REFERENCES staff(id) ON DELETE CASCADE,
    weekday BIGINT NOT NULL CHECK (weekday BETWEEN 1 AND 7),
    start_minute BIGINT NOT NULL CHECK (start_minute BETWEEN 0 AND 1439),
    end_minute BIGINT NOT NULL CHECK (end_minute BETWEEN 1 AND 1440),
    valid_from TEXT NOT NULL,
    valid_to TEXT NOT NULL,
    CHECK (start_minute < end_minute)
);
CREATE INDEX availability_templates_staff ON availability_templates(staff_id);

CREATE TABLE bookings (
    id TEXT PRIMARY KEY NOT NULL,
    resident_id TEXT NOT NULL REFERENCES residents(id),
    staff_id TEXT NOT NULL REFERENCES staff(id),
    service_code TEXT NOT NULL REFERENCES services(code),
    step TEXT NOT NULL,
    starts_at BIGINT NOT NULL,
    ends_at BIGINT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('booked','cancelled','completed','no_show')),
    performed_by TEXT NOT NULL REFERENCES municipalities(code),
    performed_for TEXT NOT NULL REFERENCES municipalities(code),
    agreement_id TEXT REFERENCES agreements(id),
    rule TEXT NOT NULL,
    manage_token_hash TEXT NOT NULL UNIQUE,
    manage_token_spent BIGINT NOT NULL DEFAULT 0 CHECK (manage_token_spent IN (0, 1)),
    sequence BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    CHECK (starts_at < ends_at),
    CONSTRAINT bookings_no_overlap EXCLUDE USING gist (staff_id WITH =, int8range(starts_at, ends_at) WITH &&) WHERE (status = 'booked')
);
-- No double booking: a staff member holds at most one active booking per
-- start, and the exclusion constraint refuses any overlap, whatever the
-- isolation level of the transactions that race.
CREATE UNIQUE INDEX bookings_active_staff_start ON bookings(staff_id, starts_at) WHERE status = 'booked';
CREATE INDEX bookings_resident ON bookings(resident_id);
CREATE INDEX bookings_staff_time ON bookings(staff_id, starts_at);
CREATE INDEX bookings_performed_by_time ON bookings(performed_by, starts_at);

-- One-time sign-in links for residents. Only the hash of the token is kept.
CREATE TABLE sign_in_links (
    token_hash TEXT PRIMARY KEY NOT NULL,
    resident_id TEXT NOT NULL REFERENCES residents(id) ON DELETE CASCADE,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);

-- The transactional outbox: a row is written in the same transaction as the
-- change that causes it. `notify` delivers it.
CREATE TABLE outbox (
    id TEXT PRIMARY KEY NOT NULL,
    kind TEXT NOT NULL,
    recipient TEXT NOT NULL,
    language TEXT NOT NULL,
    payload TEXT NOT NULL,
    booking_id TEXT,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending','sent','failed','superseded')),
    attempts BIGINT NOT NULL DEFAULT 0,
    due_at BIGINT NOT NULL,
    lease_until BIGINT,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    sent_at BIGINT
);
CREATE INDEX outbox_due ON outbox(status, due_at);
CREATE INDEX outbox_booking ON outbox(booking_id);

CREATE TABLE audit_log (
    id TEXT PRIMARY KEY NOT NULL,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    resident_id TEXT,
    on_behalf_of TEXT,
    rule TEXT,
    agreement_id TEXT,
    outcome TEXT NOT NULL
);
CREATE INDEX audit_log_at ON audit_log(at);
CREATE INDEX audit_log_resident ON audit_log(resident_id);

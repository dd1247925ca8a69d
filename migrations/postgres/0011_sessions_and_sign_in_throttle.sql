-- Server-side sessions. A session token (JWT) carries the id of one row
-- here; signing out, "sign out everywhere" and deactivating a staff account
-- set `revoked_at`, and a token whose row is revoked, expired or missing is
-- refused.
CREATE TABLE sessions (
    id TEXT PRIMARY KEY NOT NULL,
    subject_kind TEXT NOT NULL CHECK (subject_kind IN ('resident','staff')),
    subject_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX sessions_subject ON sessions(subject_kind, subject_id);

-- A deactivated staff account can no longer sign in; its sessions are
-- revoked in the same transaction that sets this.
ALTER TABLE staff ADD COLUMN deactivated_at BIGINT;

-- Failed sign-ins per account (a staff email), shared by every node: after
-- a few failures the account waits, twice as long after each further one,
-- whichever address the attempts come from.
CREATE TABLE sign_in_failures (
    account TEXT PRIMARY KEY NOT NULL,
    failures BIGINT NOT NULL,
    locked_until BIGINT NOT NULL,
    last_failure_at BIGINT NOT NULL
);

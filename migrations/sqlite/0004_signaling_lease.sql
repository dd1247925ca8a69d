-- Which node of a cluster owns the signaling hub's rooms and queue. A node
-- takes the row when it is absent or expired, renews it while it holds it,
-- and deletes it when it stops. Expiry is in unix milliseconds, UTC, so
-- that a lease of a few seconds can be expressed.
CREATE TABLE signaling_leases (
    name TEXT PRIMARY KEY NOT NULL,
    holder TEXT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);

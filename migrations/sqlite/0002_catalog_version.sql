-- One row whose version every change to municipalities, services, rules,
-- agreements, staff or templates bumps in the same transaction, so that the
-- in-memory catalog of each node knows when to reload.
CREATE TABLE catalog_version (
    id BIGINT PRIMARY KEY NOT NULL CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO catalog_version (id, version) VALUES (1, 0);

-- Booking asks which bookings lie near one time, whoever the staff member.
CREATE INDEX bookings_active_time ON bookings(starts_at, ends_at) WHERE status = 'booked';

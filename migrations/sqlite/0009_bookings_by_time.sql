-- The load figures for schedulers count a range of days' bookings of every
-- status, per municipality. No index led with the start, so each count read
-- the whole table; the index on (performed_by, starts_at) served no query,
-- since the count asks for every municipality at once. The index on the
-- start replaces it, so that a week's figures read that week's bookings.
DROP INDEX bookings_performed_by_time;
CREATE INDEX bookings_time ON bookings(starts_at);

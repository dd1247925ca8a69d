-- The notify worker claims due mail in (due_at, id) order, a batch at a
-- time. With the index on (status, due_at) alone, rows due at the same
-- second (a burst of bookings) had to be sorted by id on every claim; with
-- id in the index the claim reads the first rows in order and stops.
DROP INDEX outbox_due;
CREATE INDEX outbox_due ON outbox(status, due_at, id);

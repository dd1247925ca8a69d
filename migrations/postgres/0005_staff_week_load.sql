-- Booked seconds per staff member and week (the Monday, in the display
-- zone, that starts the week of the booking's start), counting every booking
-- that is not cancelled. Booking picks the least-loaded staff member from
-- this table instead of summing the week's bookings on every request. The
-- code that books, moves and cancels keeps it in the same transaction;
-- `Db::migrate` rebuilds it from the bookings when it is empty.
CREATE TABLE staff_week_load (
    staff_id TEXT NOT NULL REFERENCES staff(id),
    week TEXT NOT NULL,
    booked_seconds BIGINT NOT NULL,
    PRIMARY KEY (staff_id, week)
);
CREATE INDEX staff_week_load_week ON staff_week_load(week);

-- A booking is one slot, never longer than a day; busy-time queries rely on
-- it to bound their range scans.
ALTER TABLE bookings ADD CONSTRAINT bookings_at_most_a_day CHECK (ends_at - starts_at <= 86400);

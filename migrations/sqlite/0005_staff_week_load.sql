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

-- A booking is one slot, never longer than a day. Knowing that bounds the
-- overlap check to the bookings that start at most a day earlier, which the
-- index on (staff_id, starts_at) finds directly, instead of every earlier
-- booking of the staff member.
CREATE TRIGGER bookings_at_most_a_day_insert BEFORE INSERT ON bookings
WHEN NEW.ends_at - NEW.starts_at > 86400
BEGIN
    SELECT RAISE(ABORT, 'a booking is at most a day long');
END;

CREATE TRIGGER bookings_at_most_a_day_update BEFORE UPDATE OF starts_at, ends_at ON bookings
WHEN NEW.ends_at - NEW.starts_at > 86400
BEGIN
    SELECT RAISE(ABORT, 'a booking is at most a day long');
END;

DROP TRIGGER bookings_no_overlap_insert;
CREATE TRIGGER bookings_no_overlap_insert BEFORE INSERT ON bookings
WHEN NEW.status = 'booked' AND EXISTS (
    SELECT 1 FROM bookings b
    WHERE b.staff_id = NEW.staff_id AND b.status = 'booked'
      AND b.starts_at > NEW.starts_at - 86400
      AND b.starts_at < NEW.ends_at AND b.ends_at > NEW.starts_at)
BEGIN
    SELECT RAISE(ABORT, 'booking_overlap');
END;

DROP TRIGGER bookings_no_overlap_update;
CREATE TRIGGER bookings_no_overlap_update BEFORE UPDATE OF staff_id, starts_at, ends_at, status ON bookings
WHEN NEW.status = 'booked' AND EXISTS (
    SELECT 1 FROM bookings b
    WHERE b.id <> NEW.id AND b.staff_id = NEW.staff_id AND b.status = 'booked'
      AND b.starts_at > NEW.starts_at - 86400
      AND b.starts_at < NEW.ends_at AND b.ends_at > NEW.starts_at)
BEGIN
    SELECT RAISE(ABORT, 'booking_overlap');
END;

-- A search reads every active booking of a month, for its staff member and
-- times only. With those in the index, it reads the index alone instead of
-- each booking's row as well. SQLite counts a partial index as covering
-- only when the columns its WHERE names are in it too, hence `status`.
DROP INDEX bookings_active_time;
CREATE INDEX bookings_active_time ON bookings(starts_at, ends_at, staff_id, status)
    WHERE status = 'booked';

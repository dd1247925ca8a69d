-- No two active bookings of one staff member overlap: the exclusion
-- constraint bookings_no_overlap refuses it, and with it two that start at
-- the same time. The unique index on (staff_id, starts_at) of active
-- bookings said nothing more, and every booking paid for keeping it, and
-- every plan of a read of bookings for weighing it.
DROP INDEX bookings_active_staff_start;

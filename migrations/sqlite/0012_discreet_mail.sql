-- Discreet mail (issue 28). A mail about a booking shows on a lock screen and
-- lands in shared calendars, so for some services, or for any resident who
-- asks, it must not say "social services" at all.
--
-- `services.discreet`: the service's mail uses a neutral subject and title.
-- `residents.discreet_mail`: the resident wants that for every booking.
-- `bookings.neutral_title`: the neutral title the resident chose at booking
--   (`meeting`, `appointment` or `call`); NULL means the default, `meeting`.
-- `outbox.discreet`: the neutral title a queued mail is rendered with, or
--   NULL for an ordinary mail. It is a column, not part of the payload, so
--   that turning the preference on can make queued reminders discreet with
--   one UPDATE.
ALTER TABLE services ADD COLUMN discreet BIGINT NOT NULL DEFAULT 0 CHECK (discreet IN (0, 1));
ALTER TABLE residents ADD COLUMN discreet_mail BIGINT NOT NULL DEFAULT 0 CHECK (discreet_mail IN (0, 1));
ALTER TABLE bookings ADD COLUMN neutral_title TEXT CHECK (neutral_title IN ('meeting', 'appointment', 'call'));
ALTER TABLE outbox ADD COLUMN discreet TEXT CHECK (discreet IN ('meeting', 'appointment', 'call'));
-- The demo's services for violence in close relationships and for substance
-- abuse are discreet in databases seeded before this migration too.
UPDATE services SET discreet = 1 WHERE code IN ('vald-i-nara-relationer', 'missbruk-beroende');

//! Municipalities, services, the legal policy, agreements, staff, residents, availability, slots, bookings, eligibility and load balancing, and the audit log, persisted with sqlx.

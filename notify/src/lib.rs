//! Email for every step: the delivery worker for `booking`'s outbox, lettre
//! transports (SMTP and `.eml` files), localised templates, calendar (ICS)
//! attachments and reminders. It knows nothing about HTTP.

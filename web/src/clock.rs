//! The clock handlers read.

use jiff::Timestamp;

/// The current time. Handlers read the clock once, here, and pass it down.
pub fn now() -> Timestamp {
    Timestamp::now()
}

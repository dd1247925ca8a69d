//! Reading and minting the ids of staff members, residents, bookings and
//! rooms. The types are `signaling`'s newtypes ([`signaling::ids`],
//! re-exported at the crate root), so that one set of id types crosses the
//! crates and an id checked once is never checked again.
//!
//! An id comes into this crate already parsed: from a request, where `web`
//! parses it, or from a row, where the functions here parse it. A stored id
//! that does not parse is corrupt data, not a caller's mistake.

use std::str::FromStr;

use signaling::ids::InvalidId;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::Error;

/// The id in `column` of `row`.
pub(crate) fn stored<T: FromStr<Err = InvalidId>>(row: &AnyRow, column: &str) -> Result<T, Error> {
    parse_stored(column, &row.try_get::<String, _>(column)?)
}

/// The id in `column` of `row`, which may be NULL.
pub(crate) fn stored_opt<T: FromStr<Err = InvalidId>>(
    row: &AnyRow,
    column: &str,
) -> Result<Option<T>, Error> {
    row.try_get::<Option<String>, _>(column)?
        .map(|raw| parse_stored(column, &raw))
        .transpose()
}

/// `raw`, read from the database as `what`, as an id.
pub(crate) fn parse_stored<T: FromStr<Err = InvalidId>>(what: &str, raw: &str) -> Result<T, Error> {
    raw.parse()
        .map_err(|e| Error::Corrupt(format!("{what} {raw:?}: {e}")))
}

/// A new id drawn from `uuid`: a UUID's text always is a valid id.
pub(crate) fn from_uuid<T: FromStr<Err = InvalidId>>(uuid: uuid::Uuid) -> T {
    match uuid.to_string().parse() {
        Ok(id) => id,
        Err(_) => unreachable!("a UUID is hex digits and hyphens, 36 characters"),
    }
}

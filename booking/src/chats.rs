//! Chat pre-assessment: which services a resident may chat about, and who
//! may answer. The queue itself lives in `signaling`; this module gives it
//! the policy's answers.

use jiff::Timestamp;

use crate::bookings::decide_in;
use crate::catalog::{self, Service};
use crate::db::Db;
use crate::domain::{MunicipalityCode, ServiceCode, Step};
use crate::snapshot;
use crate::Error;

/// The municipalities whose staff may perform the pre-assessment of
/// `service` for a resident of `home` at `at`, under the policy, in code
/// order; `None` when there is no such service or municipality. The queue
/// shows a chat to the staff of these municipalities only, and the offline
/// form routes a message the same way.
pub async fn pre_assessors(
    db: &Db,
    service: &ServiceCode,
    home: &MunicipalityCode,
    at: Timestamp,
) -> Result<Option<Vec<MunicipalityCode>>, Error> {
    let catalog = snapshot::current(db).await?;
    if !catalog.services.contains_key(service) || catalog.municipality(home).is_none() {
        return Ok(None);
    }
    let mut eligible = Vec::new();
    for municipality in &catalog.municipalities {
        let decision = decide_in(
            &catalog,
            &municipality.code,
            home,
            service,
            Step::PreAssessment,
            at,
        )?;
        if decision.allowed() {
            eligible.push(municipality.code.clone());
        }
    }
    eligible.sort();
    Ok(Some(eligible))
}

/// The services that offer "Chat with us now" to a resident of `home`:
/// those whose pre-assessment may be done by chat and that the policy lets
/// some municipality pre-assess for `home`, bookable services first in
/// code order and [`catalog::GENERAL`] last. Empty for an unknown `home`.
pub async fn offered(
    db: &Db,
    home: &MunicipalityCode,
    at: Timestamp,
) -> Result<Vec<Service>, Error> {
    let mut offered = Vec::new();
    for service in catalog::all_services(db).await? {
        if !service.chat {
            continue;
        }
        let eligible = pre_assessors(db, &service.code, home, at).await?;
        if eligible.is_some_and(|e| !e.is_empty()) {
            offered.push(service);
        }
    }
    offered.sort_by_key(|s| (s.is_general(), s.code.clone()));
    Ok(offered)
}

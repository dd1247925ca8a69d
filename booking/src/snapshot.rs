//! An in-memory copy of the slowly changing data every booking request reads:
//! municipalities, services, rules, agreements, staff and their templates.
//!
//! Each read checks one version row, which every change to that data bumps in
//! the same transaction, so a snapshot is never stale, even when several
//! nodes share the database, and reloading happens only after a change.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sqlx::Row;

use crate::accounts;
use crate::catalog;
use crate::db::Db;
use crate::records::Template;
use crate::slots;
use crate::{Error, StaffId};

pub use crate::records::Snapshot;

/// The current snapshot, reloaded when the catalog has changed.
pub async fn current(db: &Db) -> Result<Arc<Snapshot>, Error> {
    let version: i64 = sqlx::query("SELECT version FROM catalog_version WHERE id = 1")
        .fetch_one(db.pool())
        .await?
        .try_get("version")?;
    at_version(db, version).await
}

/// The snapshot for `version`, which the caller has just read from
/// `catalog_version`: the cached one when it is that version, else loaded
/// afresh (and then at least that new).
pub async fn at_version(db: &Db, version: i64) -> Result<Arc<Snapshot>, Error> {
    if let Some(cached) = db.cache().latest() {
        if cached.version == version {
            return Ok(cached);
        }
    }
    let fresh = Arc::new(load(db, version).await?);
    db.cache().keep(fresh.clone());
    Ok(fresh)
}

async fn load(db: &Db, version: i64) -> Result<Snapshot, Error> {
    let mut templates: HashMap<StaffId, Vec<Template>> = HashMap::new();
    for t in slots::all_templates(db).await? {
        templates.entry(t.staff_id.clone()).or_default().push(t);
    }
    let mut rules = HashMap::new();
    for r in catalog::policy(db).await? {
        rules.insert((r.service, r.step), r.rule);
    }
    Ok(Snapshot {
        version,
        municipalities: catalog::municipalities(db).await?,
        services: catalog::all_services(db)
            .await?
            .into_iter()
            .map(|s| (s.code.clone(), s))
            .collect(),
        rules,
        agreements: catalog::agreements(db, None).await?,
        staff: accounts::all_staff(db).await?,
        templates,
        published: Mutex::default(),
    })
}

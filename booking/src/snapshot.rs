//! An in-memory copy of the slowly changing data every booking request reads:
//! municipalities, services, rules, agreements, staff and their templates.
//!
//! Each read checks one version row, which every change to that data bumps in
//! the same transaction, so a snapshot is never stale, even when several
//! nodes share the database, and reloading happens only after a change.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use sqlx::{AnyConnection, Row};

use crate::accounts::{self, Staff};
use crate::bookings;
use crate::catalog::{self, Municipality, Service};
use crate::db::Db;
use crate::domain::{MunicipalityCode, Rule, ServiceCode, Step};
use crate::policy::Agreement;
use crate::slots::Template;
use crate::Error;

/// The catalog as of one version.
#[derive(Debug)]
pub struct Snapshot {
    version: i64,
    pub municipalities: Vec<Municipality>,
    pub services: HashMap<ServiceCode, Service>,
    pub rules: HashMap<(ServiceCode, Step), Rule>,
    pub agreements: Vec<Agreement>,
    pub staff: Vec<Staff>,
    pub templates: HashMap<String, Vec<Template>>,
}

impl Snapshot {
    /// The `catalog_version` this snapshot was loaded at.
    pub fn version(&self) -> i64 {
        self.version
    }

    /// The rule of a step; a missing rule is `home_only`, the safe default.
    pub fn rule(&self, service: &ServiceCode, step: Step) -> Rule {
        self.rules
            .get(&(service.clone(), step))
            .copied()
            .unwrap_or(Rule::HomeOnly)
    }

    pub fn municipality(&self, code: &MunicipalityCode) -> Option<&Municipality> {
        self.municipalities.iter().find(|m| &m.code == code)
    }

    /// The agreements in which `home` is the home municipality.
    pub fn agreements_for(&self, home: &MunicipalityCode) -> Vec<Agreement> {
        self.agreements
            .iter()
            .filter(|a| &a.home == home)
            .cloned()
            .collect()
    }

    pub fn templates_of(&self, staff_id: &str) -> &[Template] {
        self.templates
            .get(staff_id)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }
}

/// The cache a [`Db`] carries.
#[derive(Debug, Default, Clone)]
pub(crate) struct Cache(Arc<RwLock<Option<Arc<Snapshot>>>>);

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
    if let Some(cached) = db
        .cache()
        .0
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
    {
        if cached.version == version {
            return Ok(cached.clone());
        }
    }
    let fresh = Arc::new(load(db, version).await?);
    *db.cache().0.write().unwrap_or_else(|p| p.into_inner()) = Some(fresh.clone());
    Ok(fresh)
}

/// The snapshot this process loaded last, without asking whether it is
/// still current: for what may lag a change by a request, such as a
/// municipality's name in an answer. `None` before the first load.
pub fn last_loaded(db: &Db) -> Option<Arc<Snapshot>> {
    db.cache()
        .0
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

/// Records that the catalog changed; call it in the changing transaction.
pub(crate) async fn bump(conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE catalog_version SET version = version + 1 WHERE id = 1")
        .execute(conn)
        .await
        .map(|_| ())
}

async fn load(db: &Db, version: i64) -> Result<Snapshot, Error> {
    let mut templates: HashMap<String, Vec<Template>> = HashMap::new();
    for t in bookings::all_templates(db).await? {
        templates.entry(t.staff_id.clone()).or_default().push(t);
    }
    let mut rules = HashMap::new();
    for r in catalog::policy(db).await? {
        rules.insert((r.service, r.step), r.rule);
    }
    Ok(Snapshot {
        version,
        municipalities: catalog::municipalities(db).await?,
        services: catalog::services(db)
            .await?
            .into_iter()
            .map(|s| (s.code.clone(), s))
            .collect(),
        rules,
        agreements: catalog::agreements(db, None).await?,
        staff: accounts::all_staff(db).await?,
        templates,
    })
}

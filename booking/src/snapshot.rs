//! An in-memory copy of the slowly changing data every booking request reads:
//! municipalities, services, rules, agreements, staff and their templates.
//!
//! Each read checks one version row, which every change to that data bumps in
//! the same transaction, so a snapshot is never stale, even when several
//! nodes share the database, and reloading happens only after a change.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use jiff::civil::Date;

use sqlx::{AnyConnection, Row};

use crate::accounts::{self, Staff};
use crate::bookings::{self, DISPLAY_ZONE};
use crate::catalog::{self, Municipality, Service};
use crate::db::Db;
use crate::domain::{MunicipalityCode, Rule, ServiceCode, Step};
use crate::load;
use crate::policy::Agreement;
use crate::slots::{self, Template};
use crate::{Error, StaffId};

/// The catalog as of one version.
#[derive(Debug)]
pub struct Snapshot {
    version: i64,
    pub municipalities: Vec<Municipality>,
    pub services: HashMap<ServiceCode, Service>,
    pub rules: HashMap<(ServiceCode, Step), Rule>,
    pub agreements: Vec<Agreement>,
    pub staff: Vec<Staff>,
    pub templates: HashMap<StaffId, Vec<Template>>,
    /// [`Snapshot::published_in_week`]'s answers so far, by the week's Monday.
    published: Mutex<HashMap<Date, Arc<HashMap<StaffId, i64>>>>,
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

    pub fn templates_of(&self, staff_id: &StaffId) -> &[Template] {
        self.templates
            .get(staff_id)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// The minutes each staff member's templates publish in the week that
    /// starts on `monday` in the display zone ([`load::published_minutes`];
    /// staff without templates are left out), worked out once per week and
    /// snapshot. Ranking the candidates for a time asks it of every one of
    /// them on each booking, and each answer takes two time-zone conversions
    /// per window of the week. A snapshot holds one map per week asked
    /// about, until a catalog change replaces it.
    pub fn published_in_week(&self, monday: Date) -> Result<Arc<HashMap<StaffId, i64>>, Error> {
        let mut weeks = self.published.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(week) = weeks.get(&monday) {
            return Ok(week.clone());
        }
        let tz = bookings::zone(DISPLAY_ZONE)?;
        let week: Arc<HashMap<StaffId, i64>> = Arc::new(
            self.templates
                .iter()
                .map(|(staff, own)| (staff.clone(), load::published_minutes(own, monday, &tz)))
                .collect(),
        );
        weeks.insert(monday, week.clone());
        Ok(week)
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

#[cfg(test)]
mod tests {
    use jiff::civil::date;

    use super::*;

    fn template(staff_id: &str, weekday: i8, start_minute: i16, end_minute: i16) -> Template {
        Template {
            id: format!("{staff_id}-{weekday}"),
            staff_id: StaffId::parse(staff_id).unwrap(),
            weekday,
            start_minute,
            end_minute,
            valid_from: date(2026, 1, 1),
            valid_to: date(2027, 12, 31),
        }
    }

    /// A week's published minutes are each staff member's, worked out once:
    /// the week of the autumn change (25 hours on its Sunday) and an
    /// ordinary one.
    #[test]
    fn a_week_s_published_minutes_are_worked_out_once_per_week() {
        let mut templates = HashMap::new();
        let (a, b) = (StaffId::parse("a").unwrap(), StaffId::parse("b").unwrap());
        templates.insert(
            a.clone(),
            vec![template("a", 1, 480, 960), template("a", 7, 0, 1440)],
        );
        templates.insert(b, vec![template("b", 3, 540, 720)]);
        let snapshot = Snapshot {
            version: 1,
            municipalities: Vec::new(),
            services: HashMap::new(),
            rules: HashMap::new(),
            agreements: Vec::new(),
            staff: Vec::new(),
            templates,
            published: Mutex::default(),
        };
        let tz = bookings::zone(DISPLAY_ZONE).unwrap();
        for monday in [date(2026, 10, 19), date(2026, 11, 2)] {
            let week = snapshot.published_in_week(monday).unwrap();
            assert_eq!(week.len(), 2);
            for (staff, own) in &snapshot.templates {
                assert_eq!(week[staff], load::published_minutes(own, monday, &tz));
            }
            assert!(Arc::ptr_eq(
                &week,
                &snapshot.published_in_week(monday).unwrap()
            ));
        }
        assert_eq!(
            snapshot.published_in_week(date(2026, 10, 19)).unwrap()[&a],
            480 + 1500
        );
        assert_eq!(
            snapshot.published_in_week(date(2026, 11, 2)).unwrap()[&a],
            480 + 1440
        );
    }
}

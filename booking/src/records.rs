//! The catalog's records as values: municipalities, services, staff and
//! their availability templates, and the [`Snapshot`] of them that every
//! booking request reads.
//!
//! They sit below the database handle, which caches the snapshot, and call
//! nothing that reads or writes the database: the queries that load and
//! change them live in `catalog`, `accounts`, `slots` and `snapshot`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Span, Timestamp};
use serde::Serialize;

use crate::domain::{
    EmailAddress, InvalidValue, Language, MunicipalityCode, Role, Rule, ServiceCode, Step,
};
use crate::policy::Agreement;
use crate::time::{local_instant, zone, DISPLAY_ZONE};
use crate::{Error, StaffId};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Municipality {
    pub code: MunicipalityCode,
    pub name: String,
    pub time_zone: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    pub code: ServiceCode,
    /// The rust-i18n key of the service's name, e.g. `service.ekonomiskt-bistand`.
    pub name_key: String,
    pub anonymous_chat: bool,
    pub slot_minutes: i64,
    pub buffer_minutes: i64,
    /// Whether its mail and calendar entries must not name the social
    /// services (violence in close relationships, substance abuse): they go
    /// out under a neutral title the resident picks at booking.
    pub discreet: bool,
    /// Whether its pre-assessment may be done by chat ("Chat with us now").
    pub chat: bool,
    /// Whether it has times to book. [`GENERAL`] has none.
    pub bookable: bool,
}

/// The code of "I don't know": the chat a resident opens who cannot tell
/// which service fits. It is a service without times to book, whose
/// pre-assessment only the home municipality performs, and which every
/// social worker there may take, whatever services they handle
/// ([`Staff::chat_services`]).
pub const GENERAL: &str = "general";

impl Service {
    /// Whether this is [`GENERAL`].
    pub fn is_general(&self) -> bool {
        self.code.as_str() == GENERAL
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Staff {
    pub id: StaffId,
    pub municipality: MunicipalityCode,
    pub email: EmailAddress,
    pub name: String,
    pub role: Role,
    pub services: Vec<ServiceCode>,
    pub languages: Vec<Language>,
    pub max_chats: i64,
}

impl Staff {
    pub fn handles(&self, service: &ServiceCode) -> bool {
        self.services.contains(service)
    }

    /// The services whose chats this staff member may take: those they
    /// handle and, for a social worker (role `staff`), the "I don't know"
    /// chat [`GENERAL`], which any of them may answer.
    pub fn chat_services(&self) -> Vec<ServiceCode> {
        let mut services = self.services.clone();
        if self.role == Role::Staff {
            if let Ok(general) = ServiceCode::parse(GENERAL) {
                if !services.contains(&general) {
                    services.push(general);
                }
            }
        }
        services
    }

    /// Whether this staff member may take chats of `service`.
    pub fn takes_chats_of(&self, service: &ServiceCode) -> bool {
        self.handles(service) || (self.role == Role::Staff && service.as_str() == GENERAL)
    }

    // What a role allows. The JSON API, the pages (their handlers and the
    // navigation that links to them) and the socket ask these, so that they
    // cannot disagree about who may do what.

    /// Load figures of every municipality: schedulers and admins.
    pub fn may_see_load(&self) -> bool {
        matches!(self.role, Role::Scheduler | Role::Admin)
    }

    /// The audit log, of every resident: admins only.
    pub fn may_read_audit_log(&self) -> bool {
        self.role == Role::Admin
    }

    /// Deactivating staff accounts: admins only.
    pub fn may_deactivate_staff(&self) -> bool {
        self.role == Role::Admin
    }

    /// Reading `target`'s availability templates: their own, a scheduler
    /// those of their municipality, an admin everyone's.
    pub fn may_read_templates_of(&self, target: &Staff) -> bool {
        self.may_change_templates_of(target) || target.id == self.id
    }

    /// Changing `target`'s availability templates: a scheduler those of
    /// their municipality, an admin everyone's; a social worker not even
    /// their own.
    pub fn may_change_templates_of(&self, target: &Staff) -> bool {
        match self.role {
            Role::Admin => true,
            Role::Scheduler => target.municipality == self.municipality,
            Role::Staff => false,
        }
    }
}

/// A weekly window in which a staff member takes meetings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Template {
    pub id: String,
    pub staff_id: StaffId,
    /// ISO weekday: 1 is Monday, 7 is Sunday.
    pub weekday: i8,
    /// Minutes after local midnight, `0..1440`.
    pub start_minute: i16,
    /// Minutes after local midnight, `1..=1440`, after `start_minute`.
    pub end_minute: i16,
    pub valid_from: Date,
    pub valid_to: Date,
}

impl Template {
    /// Checks the fields that the database checks too, so that an API caller
    /// gets a clear message instead of a constraint error.
    pub fn validate(&self) -> Result<(), InvalidValue> {
        let bad = |reason: &str| InvalidValue {
            field: "template",
            reason: reason.to_owned(),
        };
        if !(1..=7).contains(&self.weekday) {
            return Err(bad("weekday is 1 (Monday) to 7 (Sunday)"));
        }
        if !(0..1440).contains(&self.start_minute) || !(1..=1440).contains(&self.end_minute) {
            return Err(bad("times are minutes after midnight"));
        }
        if self.start_minute >= self.end_minute {
            return Err(bad("the window must start before it ends"));
        }
        if self.valid_from > self.valid_to {
            return Err(bad("valid_from must not be after valid_to"));
        }
        Ok(())
    }

    /// The published minutes of this window on `date`, in real time: 23- and
    /// 25-hour days count what the clock really covers.
    pub fn minutes_on(&self, date: Date, tz: &TimeZone) -> i64 {
        match self.window_on(date, tz) {
            Some((start, end)) => (end.as_second() - start.as_second()) / 60,
            None => 0,
        }
    }

    /// The window's absolute start and end on `date`, if it applies that day.
    pub(crate) fn window_on(&self, date: Date, tz: &TimeZone) -> Option<(Timestamp, Timestamp)> {
        let weekday = date.weekday().to_monday_one_offset();
        if weekday != self.weekday || date < self.valid_from || date > self.valid_to {
            return None;
        }
        let start = local_instant(date, self.start_minute, tz)?;
        let end = local_instant(date, self.end_minute, tz)?;
        (start < end).then_some((start, end))
    }
}

/// Minutes a staff member's templates publish in the week starting on
/// `monday`.
pub fn published_minutes(templates: &[Template], monday: Date, tz: &TimeZone) -> i64 {
    (0..7)
        .filter_map(|d| monday.checked_add(Span::new().days(d)).ok())
        .map(|day| templates.iter().map(|t| t.minutes_on(day, tz)).sum::<i64>())
        .sum()
}

/// The catalog as of one version.
#[derive(Debug)]
pub struct Snapshot {
    pub(crate) version: i64,
    pub municipalities: Vec<Municipality>,
    pub services: HashMap<ServiceCode, Service>,
    pub rules: HashMap<(ServiceCode, Step), Rule>,
    pub agreements: Vec<Agreement>,
    pub staff: Vec<Staff>,
    pub templates: HashMap<StaffId, Vec<Template>>,
    /// [`Snapshot::published_in_week`]'s answers so far, by the week's Monday.
    pub(crate) published: Mutex<HashMap<Date, Arc<HashMap<StaffId, i64>>>>,
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
    /// starts on `monday` in the display zone ([`published_minutes`];
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
        let tz = zone(DISPLAY_ZONE)?;
        let week: Arc<HashMap<StaffId, i64>> = Arc::new(
            self.templates
                .iter()
                .map(|(staff, own)| (staff.clone(), published_minutes(own, monday, &tz)))
                .collect(),
        );
        weeks.insert(monday, week.clone());
        Ok(week)
    }
}

/// The cache a [`crate::Db`] carries: the snapshot loaded last.
#[derive(Debug, Default, Clone)]
pub(crate) struct Cache(Arc<RwLock<Option<Arc<Snapshot>>>>);

impl Cache {
    /// The snapshot loaded last, if any.
    pub(crate) fn latest(&self) -> Option<Arc<Snapshot>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Keeps `snapshot` as the one loaded last.
    pub(crate) fn keep(&self, snapshot: Arc<Snapshot>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(snapshot);
    }
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
        let tz = zone(DISPLAY_ZONE).unwrap();
        for monday in [date(2026, 10, 19), date(2026, 11, 2)] {
            let week = snapshot.published_in_week(monday).unwrap();
            assert_eq!(week.len(), 2);
            for (staff, own) in &snapshot.templates {
                assert_eq!(week[staff], published_minutes(own, monday, &tz));
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

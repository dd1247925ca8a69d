//! Municipalities, services, the cross-border policy and the agreements: the
//! slowly changing data that every routing decision reads.

use jiff::civil::Date;
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::db::built_sql;
use crate::db::Db;
use crate::domain::{MunicipalityCode, Rule, ServiceCode, Step};
use crate::policy::Agreement;
use crate::Error;

pub use crate::records::{Municipality, Service, GENERAL};

const SERVICE_COLUMNS: &str =
    "code, name_key, anonymous_chat, slot_minutes, buffer_minutes, discreet, chat, bookable";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyRule {
    pub service: ServiceCode,
    pub step: Step,
    pub rule: Rule,
    pub legal_basis: String,
}

pub async fn municipalities(db: &Db) -> Result<Vec<Municipality>, Error> {
    let rows = sqlx::query("SELECT code, name, time_zone FROM municipalities ORDER BY name")
        .fetch_all(db.pool())
        .await?;
    rows.iter().map(municipality_from_row).collect()
}

pub async fn municipality(db: &Db, code: &MunicipalityCode) -> Result<Option<Municipality>, Error> {
    let row = sqlx::query("SELECT code, name, time_zone FROM municipalities WHERE code = $1")
        .bind(code.as_str())
        .fetch_optional(db.pool())
        .await?;
    row.as_ref().map(municipality_from_row).transpose()
}

/// A municipality's name as of the last catalogue this process loaded,
/// which may lag a change by a request (fine for a name in an answer), else
/// from the database; empty for a code nobody knows.
pub async fn municipality_name(db: &Db, code: &MunicipalityCode) -> Result<String, Error> {
    let cached = db
        .last_snapshot()
        .and_then(|s| s.municipality(code).map(|m| m.name.clone()));
    match cached {
        Some(name) => Ok(name),
        None => Ok(municipality(db, code)
            .await?
            .map(|m| m.name)
            .unwrap_or_default()),
    }
}

fn municipality_from_row(r: &AnyRow) -> Result<Municipality, Error> {
    Ok(Municipality {
        code: MunicipalityCode::parse(&r.try_get::<String, _>("code")?)?,
        name: r.try_get("name")?,
        time_zone: r.try_get("time_zone")?,
    })
}

/// The services with times to book, as the booking pages and
/// `/api/services` list them.
pub async fn services(db: &Db) -> Result<Vec<Service>, Error> {
    let sql = format!("SELECT {SERVICE_COLUMNS} FROM services WHERE bookable = 1 ORDER BY code");
    let rows = sqlx::query(built_sql(sql)).fetch_all(db.pool()).await?;
    rows.iter().map(service_from_row).collect()
}

/// Every service, [`GENERAL`] included.
pub async fn all_services(db: &Db) -> Result<Vec<Service>, Error> {
    let sql = format!("SELECT {SERVICE_COLUMNS} FROM services ORDER BY code");
    let rows = sqlx::query(built_sql(sql)).fetch_all(db.pool()).await?;
    rows.iter().map(service_from_row).collect()
}

/// One service, bookable or not.
pub async fn service(db: &Db, code: &ServiceCode) -> Result<Option<Service>, Error> {
    let sql = format!("SELECT {SERVICE_COLUMNS} FROM services WHERE code = $1");
    let row = sqlx::query(built_sql(sql))
        .bind(code.as_str())
        .fetch_optional(db.pool())
        .await?;
    row.as_ref().map(service_from_row).transpose()
}

fn service_from_row(r: &AnyRow) -> Result<Service, Error> {
    Ok(Service {
        code: ServiceCode::parse(&r.try_get::<String, _>("code")?)?,
        name_key: r.try_get("name_key")?,
        anonymous_chat: r.try_get::<i64, _>("anonymous_chat")? != 0,
        slot_minutes: r.try_get("slot_minutes")?,
        buffer_minutes: r.try_get("buffer_minutes")?,
        discreet: r.try_get::<i64, _>("discreet")? != 0,
        chat: r.try_get::<i64, _>("chat")? != 0,
        bookable: r.try_get::<i64, _>("bookable")? != 0,
    })
}

/// Every rule of every service step: the public legal map.
pub async fn policy(db: &Db) -> Result<Vec<PolicyRule>, Error> {
    let rows = sqlx::query(
        "SELECT service_code, step, rule, legal_basis FROM policy_rules ORDER BY service_code, step",
    )
    .fetch_all(db.pool())
    .await?;
    rows.iter().map(rule_from_row).collect()
}

/// The rule for one step of one service. A step with no rule row is treated
/// as `home_only`: the safe default when the policy is incomplete.
pub async fn rule_for(db: &Db, service: &ServiceCode, step: Step) -> Result<Rule, Error> {
    let row = sqlx::query("SELECT rule FROM policy_rules WHERE service_code = $1 AND step = $2")
        .bind(service.as_str())
        .bind(step.as_str())
        .fetch_optional(db.pool())
        .await?;
    match row {
        Some(r) => Ok(Rule::parse(&r.try_get::<String, _>("rule")?)?),
        None => Ok(Rule::HomeOnly),
    }
}

fn rule_from_row(r: &AnyRow) -> Result<PolicyRule, Error> {
    Ok(PolicyRule {
        service: ServiceCode::parse(&r.try_get::<String, _>("service_code")?)?,
        step: Step::parse(&r.try_get::<String, _>("step")?)?,
        rule: Rule::parse(&r.try_get::<String, _>("rule")?)?,
        legal_basis: r.try_get("legal_basis")?,
    })
}

/// The agreements that involve `home` as the home municipality, or all of
/// them when `home` is `None`.
pub async fn agreements(db: &Db, home: Option<&MunicipalityCode>) -> Result<Vec<Agreement>, Error> {
    let rows = sqlx::query(
        "SELECT a.id, a.host_code, a.home_code, a.valid_from, a.valid_to, a.reference, s.service_code, s.step \
         FROM agreements a LEFT JOIN agreement_scopes s ON s.agreement_id = a.id \
         WHERE ($1 IS NULL OR a.home_code = $1) ORDER BY a.id, s.service_code, s.step",
    )
    .bind(home.map(|h| h.as_str()))
    .fetch_all(db.pool())
    .await?;
    let mut out: Vec<Agreement> = Vec::new();
    for r in &rows {
        let id: String = r.try_get("id")?;
        if out.last().is_none_or(|a| a.id != id) {
            out.push(Agreement {
                id: id.clone(),
                host: MunicipalityCode::parse(&r.try_get::<String, _>("host_code")?)?,
                home: MunicipalityCode::parse(&r.try_get::<String, _>("home_code")?)?,
                valid_from: parse_date(&r.try_get::<String, _>("valid_from")?)?,
                valid_to: parse_date(&r.try_get::<String, _>("valid_to")?)?,
                reference: r.try_get("reference")?,
                scopes: Vec::new(),
            });
        }
        let service: Option<String> = r.try_get("service_code")?;
        let step: Option<String> = r.try_get("step")?;
        if let (Some(service), Some(step), Some(agreement)) = (service, step, out.last_mut()) {
            agreement
                .scopes
                .push((ServiceCode::parse(&service)?, Step::parse(&step)?));
        }
    }
    Ok(out)
}

pub(crate) fn parse_date(raw: &str) -> Result<Date, Error> {
    raw.parse::<Date>()
        .map_err(|e| Error::Corrupt(format!("date {raw:?}: {e}")))
}

pub async fn insert_municipality(db: &Db, m: &Municipality) -> Result<(), Error> {
    let _turn = db.write_turn().await;
    let mut tx = db.pool().begin().await?;
    sqlx::query("INSERT INTO municipalities (code, name, time_zone) VALUES ($1, $2, $3)")
        .bind(m.code.as_str())
        .bind(&m.name)
        .bind(&m.time_zone)
        .execute(&mut *tx)
        .await?;
    crate::db::catalog_changed(&mut tx).await?;
    tx.commit().await?;
    Ok(())
}

/// Adds a service with its rule for every step.
pub async fn insert_service(
    db: &Db,
    s: &Service,
    rules: &[(Step, Rule, &str)],
) -> Result<(), Error> {
    let _turn = db.write_turn().await;
    let mut tx = db.pool().begin().await?;
    sqlx::query(
        "INSERT INTO services (code, name_key, anonymous_chat, slot_minutes, buffer_minutes, discreet, chat, bookable) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(s.code.as_str())
    .bind(&s.name_key)
    .bind(i64::from(s.anonymous_chat))
    .bind(s.slot_minutes)
    .bind(s.buffer_minutes)
    .bind(i64::from(s.discreet))
    .bind(i64::from(s.chat))
    .bind(i64::from(s.bookable))
    .execute(&mut *tx)
    .await?;
    for (step, rule, basis) in rules {
        sqlx::query(
            "INSERT INTO policy_rules (service_code, step, rule, legal_basis) VALUES ($1, $2, $3, $4)",
        )
        .bind(s.code.as_str())
        .bind(step.as_str())
        .bind(rule.as_str())
        .bind(*basis)
        .execute(&mut *tx)
        .await?;
    }
    crate::db::catalog_changed(&mut tx).await?;
    tx.commit().await?;
    Ok(())
}

pub async fn insert_agreement(db: &Db, a: &Agreement) -> Result<(), Error> {
    let _turn = db.write_turn().await;
    let mut tx = db.pool().begin().await?;
    sqlx::query(
        "INSERT INTO agreements (id, host_code, home_code, valid_from, valid_to, reference) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&a.id)
    .bind(a.host.as_str())
    .bind(a.home.as_str())
    .bind(a.valid_from.to_string())
    .bind(a.valid_to.to_string())
    .bind(&a.reference)
    .execute(&mut *tx)
    .await?;
    for (service, step) in &a.scopes {
        sqlx::query(
            "INSERT INTO agreement_scopes (agreement_id, service_code, step) VALUES ($1, $2, $3)",
        )
        .bind(&a.id)
        .bind(service.as_str())
        .bind(step.as_str())
        .execute(&mut *tx)
        .await?;
    }
    crate::db::catalog_changed(&mut tx).await?;
    tx.commit().await?;
    Ok(())
}

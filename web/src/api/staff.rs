//! Staff, schedulers and admins: the day view, reading and booking within
//! the policy, availability templates, load figures and the audit log.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use booking::accounts::{self, Staff};
use booking::bookings;
use booking::slots::{self, Template};
use booking::{audit, DateRange, Db, EmailAddress, LocalDate, ResidentId, ServiceCode};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::bookings::{booking_dto, BookedDto, BookingDto};
use super::{parse_time, ApiJson, ApiQuery};
use crate::auth::CurrentStaff;
use crate::clock::now;
use crate::error::{path_id, AppError, ErrorBody};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/staff/me", get(me))
        .route("/api/staff/day", get(day))
        .route("/api/staff/bookings/{id}", get(booking))
        .route(
            "/api/staff/bookings",
            axum::routing::post(book_for_resident),
        )
        .route(
            "/api/staff/{staff_id}/templates",
            get(templates).post(add_template),
        )
        .route(
            "/api/staff/{staff_id}/templates/{template_id}",
            delete(delete_template),
        )
        .route("/api/scheduler/load", get(load))
        .route("/api/admin/audit", get(audit))
        .route(
            "/api/admin/staff/{staff_id}/deactivate",
            axum::routing::post(deactivate_staff),
        )
}

#[derive(Serialize, ToSchema)]
pub struct StaffDto {
    pub id: String,
    pub name: String,
    pub email: String,
    pub municipality: String,
    /// staff, scheduler or admin.
    pub role: String,
    pub services: Vec<String>,
    pub languages: Vec<String>,
}

impl From<Staff> for StaffDto {
    fn from(s: Staff) -> Self {
        StaffDto {
            id: s.id.to_string(),
            name: s.name,
            email: s.email.to_string(),
            municipality: s.municipality.to_string(),
            role: s.role.as_str().to_owned(),
            services: s.services.iter().map(|c| c.to_string()).collect(),
            languages: s.languages.iter().map(|l| l.code().to_owned()).collect(),
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DayParams {
    /// Local date, `YYYY-MM-DD`; today when absent.
    pub date: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ResidentDto {
    pub id: String,
    pub name: String,
    pub email: String,
    pub home_municipality: String,
    pub language: String,
}

#[derive(Serialize, ToSchema)]
pub struct StaffBookingDto {
    pub booking: BookingDto,
    pub resident: ResidentDto,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StaffBookRequest {
    pub resident_email: String,
    pub service: String,
    pub starts_at: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateDto {
    /// Ignored on create.
    #[serde(default)]
    pub id: String,
    /// 1 is Monday, 7 is Sunday.
    pub weekday: i8,
    /// Local time `HH:MM`.
    pub start: String,
    /// Local time `HH:MM`; `24:00` is midnight at the end of the day.
    pub end: String,
    pub valid_from: String,
    pub valid_to: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RangeParams {
    /// First local date, `YYYY-MM-DD`, from 2000-01-01 to 2199-12-31.
    pub from: String,
    /// Last local date, `YYYY-MM-DD`, at most 366 days after `from`.
    pub to: String,
}

#[derive(Serialize, ToSchema)]
pub struct LoadDto {
    pub municipality: String,
    pub name: String,
    pub published_minutes: i64,
    pub booked_minutes: i64,
    pub bookings: i64,
    pub completed: i64,
    pub no_shows: i64,
    pub cancelled: i64,
    pub performed_for_others: i64,
    pub utilisation: f64,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    pub resident: Option<String>,
    pub limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct AuditDto {
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub resident_id: Option<String>,
    pub on_behalf_of: Option<String>,
    pub rule: Option<String>,
    pub agreement_id: Option<String>,
    pub outcome: String,
}

/// The signed-in staff member.
#[utoipa::path(get, path = "/api/staff/me", security(("bearer" = [])), responses((status = 200, body = StaffDto), (status = 401, body = ErrorBody)))]
pub async fn me(staff: CurrentStaff) -> Json<StaffDto> {
    Json(staff.0.into())
}

/// The signed-in staff member's meetings on one day. Every booking shown is
/// an audited read of a resident's data.
#[utoipa::path(get, path = "/api/staff/day", params(DayParams), security(("bearer" = [])), responses((status = 200, body = [StaffBookingDto]), (status = 401, body = ErrorBody)))]
#[tracing::instrument(skip(db, staff), fields(staff = %staff.0.id))]
pub async fn day(
    State(db): State<Db>,
    staff: CurrentStaff,
    ApiQuery(params): ApiQuery<DayParams>,
) -> Result<Json<Vec<StaffBookingDto>>, AppError> {
    let tz = bookings::zone(bookings::DISPLAY_ZONE)?;
    let date = match params.date {
        Some(d) => LocalDate::parse("date", &d)?,
        None => LocalDate::new("date", now().to_zoned(tz).date())?,
    };
    let mut out = Vec::new();
    for (b, r) in bookings::staff_day(&db, &staff.0, date, now()).await? {
        out.push(StaffBookingDto {
            booking: booking_dto(&db, b).await?,
            resident: resident_dto(r),
        });
    }
    Ok(Json(out))
}

fn resident_dto(r: accounts::Resident) -> ResidentDto {
    ResidentDto {
        id: r.id.to_string(),
        name: r.name,
        email: r.email.to_string(),
        home_municipality: r.home.to_string(),
        language: r.language.code().to_owned(),
    }
}

/// A booking with its resident, if the policy lets this staff member handle
/// it; otherwise 404. Both outcomes are audit-logged.
#[utoipa::path(get, path = "/api/staff/bookings/{id}", security(("bearer" = [])), responses((status = 200, body = StaffBookingDto), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip(db, staff), fields(staff = %staff.0.id))]
pub async fn booking(
    State(db): State<Db>,
    staff: CurrentStaff,
    Path(id): Path<String>,
) -> Result<Json<StaffBookingDto>, AppError> {
    let (b, r) = bookings::for_staff(&db, &staff.0, &path_id(&id)?, now()).await?;
    Ok(Json(StaffBookingDto {
        booking: booking_dto(&db, b).await?,
        resident: resident_dto(r),
    }))
}

/// Books one of the staff member's own free times for a resident, if the
/// policy lets their municipality perform the meeting for that resident. A
/// resident the policy keeps from this staff member answers exactly as an
/// unknown address, so the answer does not reveal who is registered.
#[utoipa::path(post, path = "/api/staff/bookings", request_body = StaffBookRequest, security(("bearer" = [])), responses(
    (status = 201, body = BookedDto),
    (status = 404, description = "No such resident, or the policy does not allow it", body = ErrorBody),
    (status = 409, body = ErrorBody),
))]
#[tracing::instrument(skip(db, staff, body), fields(staff = %staff.0.id))]
pub async fn book_for_resident(
    State(db): State<Db>,
    staff: CurrentStaff,
    ApiJson(body): ApiJson<StaffBookRequest>,
) -> Result<(StatusCode, Json<BookedDto>), AppError> {
    let email = EmailAddress::parse(&body.resident_email)?;
    let service = ServiceCode::parse(&body.service)?;
    let starts_at = parse_time("starts_at", &body.starts_at)?;
    let ticket = bookings::book_as_staff(&db, &staff.0, &email, &service, starts_at, now()).await?;
    Ok((
        StatusCode::CREATED,
        Json(BookedDto {
            booking: booking_dto(&db, ticket.booking).await?,
            manage_token: ticket.manage_token,
        }),
    ))
}

/// Deactivates a staff account (admins only): it can no longer sign in, and
/// every session it has ends at once on every node. Audit-logged.
#[utoipa::path(post, path = "/api/admin/staff/{staff_id}/deactivate", security(("bearer" = [])), responses(
    (status = 204),
    (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody),
    (status = 404, description = "No such active account", body = ErrorBody),
))]
#[tracing::instrument(skip(state, admin), fields(admin = %admin.0.id))]
pub async fn deactivate_staff(
    State(state): State<AppState>,
    admin: CurrentStaff,
    Path(staff_id): Path<String>,
) -> Result<StatusCode, AppError> {
    let admin = &admin.0;
    AppError::unless(admin.may_deactivate_staff(), "this needs the role admin")?;
    let actor = audit::Actor::Staff(admin.id.clone());
    let staff_id = path_id(&staff_id)?;
    let ended = accounts::deactivate_staff(&state.db, &actor, &staff_id, now().as_second()).await?;
    state.sessions.announce(&ended).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Whether `actor` may manage the templates of `staff_id`: their own (read
/// only for plain staff), a scheduler's own municipality, or an admin.
async fn template_target(
    db: &Db,
    actor: &Staff,
    staff_id: &str,
    write: bool,
) -> Result<Staff, AppError> {
    let target = accounts::staff_by_id(db, &path_id(staff_id)?)
        .await?
        .ok_or(AppError::NotFound)?;
    let allowed = if write {
        actor.may_change_templates_of(&target)
    } else {
        actor.may_read_templates_of(&target)
    };
    AppError::unless(
        allowed,
        "you may not manage this staff member's availability",
    )?;
    Ok(target)
}

fn minutes(field: &'static str, raw: &str) -> Result<i16, AppError> {
    let bad = || AppError::Invalid(format!("{field}: expected HH:MM"));
    let (h, m) = raw.split_once(':').ok_or_else(bad)?;
    let (h, m): (i16, i16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if !(0..=24).contains(&h) || !(0..60).contains(&m) || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

fn template_dto(t: Template) -> TemplateDto {
    let hhmm = |m: i16| format!("{:02}:{:02}", m / 60, m % 60);
    TemplateDto {
        id: t.id,
        weekday: t.weekday,
        start: hhmm(t.start_minute),
        end: hhmm(t.end_minute),
        valid_from: t.valid_from.to_string(),
        valid_to: t.valid_to.to_string(),
    }
}

/// A staff member's weekly availability templates.
#[utoipa::path(get, path = "/api/staff/{staff_id}/templates", security(("bearer" = [])), responses((status = 200, body = [TemplateDto]), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn templates(
    State(db): State<Db>,
    staff: CurrentStaff,
    Path(staff_id): Path<String>,
) -> Result<Json<Vec<TemplateDto>>, AppError> {
    let target = template_target(&db, &staff.0, &staff_id, false).await?;
    let list = slots::templates_for(&db, &target.id).await?;
    Ok(Json(list.into_iter().map(template_dto).collect()))
}

/// Publishes a weekly window. Windows of one staff member must not overlap.
#[utoipa::path(post, path = "/api/staff/{staff_id}/templates", request_body = TemplateDto, security(("bearer" = [])), responses((status = 201, body = TemplateDto), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn add_template(
    State(db): State<Db>,
    staff: CurrentStaff,
    Path(staff_id): Path<String>,
    ApiJson(body): ApiJson<TemplateDto>,
) -> Result<(StatusCode, Json<TemplateDto>), AppError> {
    let target = template_target(&db, &staff.0, &staff_id, true).await?;
    let template = Template {
        id: String::new(),
        staff_id: target.id,
        weekday: body.weekday,
        start_minute: minutes("start", &body.start)?,
        end_minute: minutes("end", &body.end)?,
        valid_from: LocalDate::parse("valid_from", &body.valid_from)?.date(),
        valid_to: LocalDate::parse("valid_to", &body.valid_to)?.date(),
    };
    let stored = slots::add_template(&db, &template).await?;
    Ok((StatusCode::CREATED, Json(template_dto(stored))))
}

/// Removes a weekly window. Existing bookings stay.
#[utoipa::path(delete, path = "/api/staff/{staff_id}/templates/{template_id}", security(("bearer" = [])), responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_template(
    State(db): State<Db>,
    staff: CurrentStaff,
    Path((staff_id, template_id)): Path<(String, String)>,
) -> Result<StatusCode, AppError> {
    let target = template_target(&db, &staff.0, &staff_id, true).await?;
    slots::delete_template(&db, &target.id, &template_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Load per municipality: published and booked minutes, utilisation,
/// completed meetings, no-shows and cancellations. Schedulers and admins.
#[utoipa::path(get, path = "/api/scheduler/load", params(RangeParams), security(("bearer" = [])), responses((status = 200, body = [LoadDto]), (status = 403, body = ErrorBody)))]
#[tracing::instrument(skip(db, staff), fields(staff = %staff.0.id))]
pub async fn load(
    State(db): State<Db>,
    staff: CurrentStaff,
    ApiQuery(params): ApiQuery<RangeParams>,
) -> Result<Json<Vec<LoadDto>>, AppError> {
    AppError::unless(
        staff.0.may_see_load(),
        "this needs the role scheduler or admin",
    )?;
    let dates = DateRange::new(
        LocalDate::parse("from", &params.from)?,
        LocalDate::parse("to", &params.to)?,
    )?;
    let figures = bookings::load(&db, dates).await?;
    Ok(Json(
        figures
            .into_iter()
            .map(|l| LoadDto {
                municipality: l.municipality.to_string(),
                name: l.name,
                published_minutes: l.published_minutes,
                booked_minutes: l.booked_minutes,
                bookings: l.bookings,
                completed: l.completed,
                no_shows: l.no_shows,
                cancelled: l.cancelled,
                performed_for_others: l.performed_for_others,
                utilisation: l.utilisation,
            })
            .collect(),
    ))
}

/// The newest audit entries, optionally for one resident. Admins only.
#[utoipa::path(get, path = "/api/admin/audit", params(AuditParams), security(("bearer" = [])), responses((status = 200, body = [AuditDto]), (status = 403, body = ErrorBody)))]
pub async fn audit(
    State(db): State<Db>,
    staff: CurrentStaff,
    ApiQuery(params): ApiQuery<AuditParams>,
) -> Result<Json<Vec<AuditDto>>, AppError> {
    AppError::unless(staff.0.may_read_audit_log(), "this needs the role admin")?;
    let limit = params.limit.unwrap_or(200).clamp(1, 1000);
    let resident = match params
        .resident
        .as_deref()
        .map(ResidentId::parse)
        .transpose()
    {
        Ok(resident) => resident,
        // Text that is no resident id names no resident, and no entry.
        Err(_) => return Ok(Json(Vec::new())),
    };
    let records = audit::recent(&db, resident.as_ref(), limit).await?;
    Ok(Json(
        records
            .into_iter()
            .map(|r| AuditDto {
                at: r.at,
                actor: r.actor,
                action: r.action,
                subject: r.subject,
                resident_id: r.resident_id.as_ref().map(ToString::to_string),
                on_behalf_of: r.on_behalf_of,
                rule: r.rule.map(|b| b.as_str().to_owned()),
                agreement_id: r.agreement_id,
                outcome: r.outcome,
            })
            .collect(),
    ))
}

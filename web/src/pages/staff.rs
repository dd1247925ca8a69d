//! Staff pages: sign-in with a password, the day's meetings, load per
//! municipality for schedulers, and the audit log for admins. Every resident
//! shown here is read through `booking`, which writes the audit entry.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect};
use axum::routing::get;
use axum::Router;
use axum_extra::extract::CookieJar;
use booking::sessions::Subject;
use booking::{audit, bookings, catalog, DateRange, LocalDate};
use jiff::Span;
use serde::Deserialize;

use maud::{html, Markup};

use super::{
    bdi, clock, clock_range, data_table, local, long_date, non_empty, page, rule_text,
    service_name, sign_out_everywhere_form, status_text, today, tr, tr_markup, tr_with, zone_note,
    Ctx, PageError, PageForm, PageQuery, PageResult,
};
use crate::api::auth::check_staff_password;
use crate::auth::{same_origin, session_cookies, sign_in};
use crate::clock::now;
use crate::error::AppError;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/staff/login", get(login_form).post(login))
        .route("/staff", get(day))
        .route("/scheduler", get(scheduler))
        .route("/admin/audit", get(audit_log))
}

/// The staff sign-in form.
#[tracing::instrument(skip_all)]
async fn login_form(ctx: Ctx) -> PageResult {
    Ok(page(&ctx, &tr("page.staff_login.title"), login_body(None, "")).into_response())
}

fn login_body(problem: Option<&str>, email: &str) -> Markup {
    html! {
        h1 id="page-title" { (tr("page.staff_login.title")) }
        @if let Some(problem) = problem {
            div class="problem" role="alert" tabindex="-1" data-focus { p { (problem) } }
        }
        form method="post" action="/staff/login" {
            div class="field" {
                label for="email" { (tr("page.sign_in.email")) }
                input type="email" id="email" name="email" autocomplete="username" value=(email) required;
            }
            div class="field" {
                label for="password" { (tr("page.staff_login.password")) }
                input type="password" id="password" name="password" autocomplete="current-password" required;
            }
            button type="submit" { (tr("page.staff_login.button")) }
        }
    }
}

#[derive(Deserialize)]
struct LoginForm {
    email: String,
    password: String,
}

/// Checks the password under the same limits as the API, and sets the
/// session cookies. The form must come from this site (login CSRF).
#[tracing::instrument(skip(state, ctx, jar, headers, form), fields(client = %client))]
async fn login(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    ctx: Ctx,
    jar: CookieJar,
    headers: HeaderMap,
    PageForm(form): PageForm<LoginForm>,
) -> PageResult {
    same_origin(&headers, &state.settings.public_url)?;
    let refused = |key: &str, status: axum::http::StatusCode| {
        let body = login_body(Some(&tr(key)), &form.email);
        let mut response = page(&ctx, &tr("page.staff_login.title"), body).into_response();
        *response.status_mut() = status;
        response
    };
    let staff =
        match check_staff_password(&state, client.ip(), form.email.trim(), &form.password).await {
            Ok(staff) => staff,
            Err(AppError::RateLimited { .. }) => {
                return Ok(refused(
                    "error.rate_limited",
                    axum::http::StatusCode::TOO_MANY_REQUESTS,
                ))
            }
            Err(e) => return Err(e.into()),
        };
    let Some(staff) = staff else {
        return Ok(refused(
            "page.staff_login.failed",
            axum::http::StatusCode::UNAUTHORIZED,
        ));
    };
    let (token, claims) = sign_in(
        &state.keys,
        &state.sessions,
        &Subject::Staff(staff.id.clone()),
        state.settings.staff_session_minutes,
        now().as_second(),
    )
    .await?;
    let [a, b] = session_cookies(token, &claims, state.settings.secure_cookies);
    Ok((jar.add(a).add(b), Redirect::to("/staff")).into_response())
}

#[derive(Debug, Deserialize)]
struct DayQuery {
    date: Option<String>,
}

/// The signed-in staff member's meetings on one day, today by default.
#[tracing::instrument(skip(state, ctx))]
async fn day(
    State(state): State<AppState>,
    ctx: Ctx,
    PageQuery(q): PageQuery<DayQuery>,
) -> PageResult {
    let staff = ctx.staff()?;
    let now = now();
    let day = match non_empty(&q.date) {
        Some(d) => LocalDate::parse("date", d)?,
        None => LocalDate::new("date", today(now))?,
    };
    let date = day.date();
    let names = municipality_names(&state).await?;
    let meetings = bookings::staff_day(&state.db, staff, day, now).await?;
    let step = |days: i64| {
        date.checked_add(Span::new().days(days))
            .map(|d| d.to_string())
            .unwrap_or_default()
    };
    let home = names
        .get(staff.municipality.as_str())
        .map(String::as_str)
        .unwrap_or(staff.municipality.as_str());
    let body = html! {
        h1 id="page-title" { (tr("page.staff.title")) }
        p { (tr_markup("page.staff.who", &[("name", bdi(&staff.name)), ("municipality", bdi(home))])) }
        form method="get" action="/staff" class="inline-form" {
            div class="field" {
                label for="date" { (tr("page.staff.date")) }
                input type="date" id="date" name="date" value=(date);
            }
            button type="submit" { (tr("page.staff.show")) }
        }
        p class="pager" {
            a href={ "/staff?date=" (step(-1)) } { (tr("page.staff.previous")) }
            " "
            a href="/staff" { (tr("page.staff.today")) }
            " "
            a href={ "/staff?date=" (step(1)) } { (tr("page.staff.next")) }
        }
        h2 { (long_date(date)) }
        p class="zone" { (zone_note()) }
        @if meetings.is_empty() {
            p { (tr("page.staff.none")) }
        } @else {
            (data_table(
                Some("meetings"),
                "meetings-caption",
                html! { (tr_with("page.staff.caption", &[("count", &meetings.len().to_string())])) },
                &[
                    "page.staff.time",
                    "page.staff.resident",
                    "page.confirm.service",
                    "page.my.performed_for",
                    "page.my.rule",
                    "page.my.status",
                    "page.meeting.title",
                ],
                html! {
                    @for (b, r) in &meetings {
                        @let for_name = names
                            .get(b.performed_for.as_str())
                            .cloned()
                            .unwrap_or_else(|| b.performed_for.to_string());
                        tr {
                            td { time datetime=(super::rfc3339(b.range.start())) { (clock_range(&b.range)) } }
                            th scope="row" { (bdi(&r.name)) }
                            td { (service_name(&b.service)) }
                            td { (bdi(&for_name)) }
                            td { (rule_text(b.rule, b.agreement_id.as_deref())) }
                            td { (status_text(b.status)) }
                            td {
                                @if b.is_joinable(now) {
                                    a href={ "/join/" (super::enc(b.id.as_str())) } {
                                        (tr("page.meeting.join"))
                                        span class="visually-hidden" { " " (bdi(&r.name)) " " (clock(b.range.start())) }
                                    }
                                }
                            }
                        }
                    }
                },
            ))
        }
        p class="note" { (tr("page.staff.audited")) }
        (sign_out_everywhere_form(ctx.csrf()))
    };
    Ok(page(&ctx, &tr("page.staff.title"), body).into_response())
}

async fn municipality_names(state: &AppState) -> Result<HashMap<String, String>, PageError> {
    Ok(catalog::municipalities(&state.db)
        .await?
        .into_iter()
        .map(|m| (m.code.to_string(), m.name))
        .collect())
}

#[derive(Debug, Deserialize)]
struct RangeQuery {
    from: Option<String>,
    to: Option<String>,
}

/// Load per municipality as a bar chart with its figures written out, and
/// the same figures as a table. Schedulers and admins.
#[tracing::instrument(skip(state, ctx))]
async fn scheduler(
    State(state): State<AppState>,
    ctx: Ctx,
    PageQuery(q): PageQuery<RangeQuery>,
) -> PageResult {
    let staff = ctx.staff()?;
    AppError::unless(
        staff.may_see_load(),
        "this needs the role scheduler or admin",
    )?;
    let from = match non_empty(&q.from) {
        Some(d) => LocalDate::parse("from", d)?,
        None => LocalDate::new("from", today(now()))?,
    };
    let dates = match non_empty(&q.to) {
        Some(d) => DateRange::new(from, LocalDate::parse("to", d)?)?,
        None => DateRange::starting(from.date(), super::SEARCH_DAYS)?,
    };
    let figures = bookings::load(&state.db, dates).await?;
    let (from, to) = (dates.from(), dates.to());
    let body = html! {
        h1 id="page-title" { (tr("page.scheduler.title")) }
        form method="get" action="/scheduler" class="inline-form" {
            div class="field" {
                label for="from" { (tr("page.scheduler.from")) }
                input type="date" id="from" name="from" value=(from);
            }
            div class="field" {
                label for="to" { (tr("page.scheduler.to")) }
                input type="date" id="to" name="to" value=(to);
            }
            button type="submit" { (tr("page.staff.show")) }
        }
        figure class="chart" aria-labelledby="chart-title" {
            figcaption id="chart-title" {
                (tr_with("page.scheduler.chart", &[("from", &long_date(from)), ("to", &long_date(to))]))
            }
            ul class="bars" role="list" {
                @for l in &figures {
                    @let percent = (l.utilisation * 100.0).clamp(0.0, 100.0);
                    li {
                        span class="bar-label" { (bdi(&l.name)) }
                        span class="bar-track" {
                            span class="bar-fill" style=(format!("width: {percent:.1}%")) {}
                        }
                        span class="bar-value" {
                            (tr_with("page.scheduler.bar_value", &[
                                ("percent", &format!("{percent:.0}")),
                                ("booked", &l.booked_minutes.to_string()),
                                ("published", &l.published_minutes.to_string()),
                            ]))
                        }
                    }
                }
            }
        }
        (data_table(
            None,
            "load-caption",
            html! { (tr("page.scheduler.table")) },
            &[
                "page.scheduler.municipality",
                "page.scheduler.published",
                "page.scheduler.booked",
                "page.scheduler.utilisation",
                "page.scheduler.bookings",
                "page.scheduler.completed",
                "page.scheduler.no_shows",
                "page.scheduler.cancelled",
                "page.scheduler.for_others",
            ],
            html! {
                @for l in &figures {
                    tr {
                        th scope="row" { (bdi(&l.name)) }
                        td { (l.published_minutes) }
                        td { (l.booked_minutes) }
                        td { (format!("{:.0} %", l.utilisation * 100.0)) }
                        td { (l.bookings) }
                        td { (l.completed) }
                        td { (l.no_shows) }
                        td { (l.cancelled) }
                        td { (l.performed_for_others) }
                    }
                }
            },
        ))
    };
    Ok(page(&ctx, &tr("page.scheduler.title"), body).into_response())
}

/// The newest audit entries. Admins only.
#[tracing::instrument(skip(state, ctx))]
async fn audit_log(State(state): State<AppState>, ctx: Ctx) -> PageResult {
    let staff = ctx.staff()?;
    AppError::unless(staff.may_read_audit_log(), "this needs the role admin")?;
    let records = audit::recent(&state.db, None, 200).await?;
    let body = html! {
        h1 id="page-title" { (tr("page.audit.title")) }
        p class="zone" { (zone_note()) }
        (data_table(
            Some("audit"),
            "audit-caption",
            html! { (tr_with("page.audit.caption", &[("count", &records.len().to_string())])) },
            &[
                "page.audit.at",
                "page.audit.actor",
                "page.audit.action",
                "page.audit.subject",
                "page.staff.resident",
                "page.audit.on_behalf_of",
                "page.my.rule",
                "page.audit.outcome",
            ],
            html! {
                @for r in &records {
                    @let at = local(jiff::Timestamp::from_second(r.at).unwrap_or_default());
                    tr {
                        td { time datetime=(super::rfc3339(at.timestamp())) { (at.date()) " " (at.strftime("%H:%M:%S")) } }
                        td { (r.actor) }
                        td { (r.action) }
                        td { code { (r.subject) } }
                        td { (r.resident_id.as_ref().map_or("", |id| id.as_str())) }
                        td { (r.on_behalf_of.as_deref().unwrap_or("")) }
                        td {
                            @if let Some(rule) = &r.rule {
                                (rule_text(*rule, r.agreement_id.as_deref()))
                            }
                        }
                        td { (r.outcome) }
                    }
                }
            },
        ))
    };
    Ok(page(&ctx, &tr("page.audit.title"), body).into_response())
}

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
use booking::{audit, bookings, catalog, DateRange, LocalDate, Role};
use jiff::Span;
use serde::Deserialize;

use super::{
    bdi, clock, clock_range, esc, local, long_date, non_empty, page, rule_text, service_name,
    sign_out_everywhere_form, status_text, t, today, tr, tv, tv_html, zone_note, Ctx, PageError,
    PageForm, PageQuery, PageResult,
};
use crate::api::auth::check_staff_password;
use crate::api::now;
use crate::auth::{same_origin, session_cookies, sign_in, SubjectKind};
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
    Ok(page(&ctx, &tr("page.staff_login.title"), &login_body(None, "")).into_response())
}

fn login_body(problem: Option<&str>, email: &str) -> String {
    let problem = problem
        .map(|p| {
            format!(
                "<div class=\"problem\" role=\"alert\" tabindex=\"-1\" data-focus><p>{p}</p></div>"
            )
        })
        .unwrap_or_default();
    format!(
        r#"<h1 id="page-title">{title}</h1>
{problem}
<form method="post" action="/staff/login">
<div class="field"><label for="email">{email_label}</label>
<input type="email" id="email" name="email" autocomplete="username" value="{email}" required></div>
<div class="field"><label for="password">{password_label}</label>
<input type="password" id="password" name="password" autocomplete="current-password" required></div>
<button type="submit">{button}</button>
</form>"#,
        title = t("page.staff_login.title"),
        email_label = t("page.sign_in.email"),
        email = esc(email),
        password_label = t("page.staff_login.password"),
        button = t("page.staff_login.button"),
    )
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
        let body = login_body(Some(&t(key)), &form.email);
        let mut response = page(&ctx, &tr("page.staff_login.title"), &body).into_response();
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
        &staff.id,
        SubjectKind::Staff,
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
    let mut body = format!(
        r#"<h1 id="page-title">{title}</h1>
<p>{who}</p>
<form method="get" action="/staff" class="inline-form">
<div class="field"><label for="date">{date_label}</label>
<input type="date" id="date" name="date" value="{date}"></div>
<button type="submit">{show}</button>
</form>
<p class="pager"><a href="/staff?date={prev}">{prev_label}</a> <a href="/staff">{today_label}</a> <a href="/staff?date={next}">{next_label}</a></p>
<h2>{day}</h2>
<p class="zone">{zone}</p>"#,
        title = t("page.staff.title"),
        who = tv_html(
            "page.staff.who",
            &[
                ("name", &bdi(&staff.name)),
                (
                    "municipality",
                    &bdi(names
                        .get(staff.municipality.as_str())
                        .map(String::as_str)
                        .unwrap_or(staff.municipality.as_str()))
                ),
            ]
        ),
        date_label = t("page.staff.date"),
        date = date,
        show = t("page.staff.show"),
        prev = step(-1),
        prev_label = t("page.staff.previous"),
        today_label = t("page.staff.today"),
        next = step(1),
        next_label = t("page.staff.next"),
        day = long_date(date),
        zone = zone_note(),
    );
    if meetings.is_empty() {
        body.push_str(&format!("<p>{}</p>", t("page.staff.none")));
    } else {
        body.push_str(&format!(
            r#"<div class="table-wrap" role="region" tabindex="0" aria-labelledby="meetings-caption"><table class="meetings">
<caption id="meetings-caption">{caption}</caption>
<thead><tr><th scope="col">{time}</th><th scope="col">{resident}</th><th scope="col">{service}</th><th scope="col">{for_}</th><th scope="col">{rule}</th><th scope="col">{status}</th><th scope="col">{meeting}</th></tr></thead><tbody>"#,
            caption = tv("page.staff.caption", &[("count", &meetings.len().to_string())]),
            time = t("page.staff.time"),
            resident = t("page.staff.resident"),
            service = t("page.confirm.service"),
            for_ = t("page.my.performed_for"),
            rule = t("page.my.rule"),
            status = t("page.my.status"),
            meeting = t("page.meeting.title"),
        ));
        for (b, r) in &meetings {
            let join = if super::joinable(b, now) {
                format!(
                    "<a href=\"/join/{id}\">{label}<span class=\"visually-hidden\"> {name} {from}</span></a>",
                    id = super::enc(&b.id),
                    label = t("page.meeting.join"),
                    name = bdi(&r.name),
                    from = clock(b.range.start()),
                )
            } else {
                String::new()
            };
            let for_name = names
                .get(b.performed_for.as_str())
                .cloned()
                .unwrap_or_else(|| b.performed_for.to_string());
            body.push_str(&format!(
                "<tr><td><time datetime=\"{iso}\">{range}</time></td><th scope=\"row\">{name}</th><td>{service}</td><td>{for_name}</td><td>{rule}</td><td>{status}</td><td>{join}</td></tr>",
                iso = super::rfc3339(b.range.start()),
                range = clock_range(&b.range),
                name = bdi(&r.name),
                service = service_name(&b.service),
                for_name = bdi(&for_name),
                rule = rule_text(&b.rule, b.agreement_id.as_deref()),
                status = status_text(b.status),
            ));
        }
        body.push_str("</tbody></table></div>");
    }
    body.push_str(&format!(
        "<p class=\"note\">{}</p>",
        t("page.staff.audited")
    ));
    body.push_str(&sign_out_everywhere_form(ctx.csrf()));
    Ok(page(&ctx, &tr("page.staff.title"), &body).into_response())
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
    if !matches!(staff.role, Role::Scheduler | Role::Admin) {
        return Err(AppError::Forbidden("this needs the role scheduler or admin".into()).into());
    }
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
    let mut body = format!(
        r#"<h1 id="page-title">{title}</h1>
<form method="get" action="/scheduler" class="inline-form">
<div class="field"><label for="from">{from_label}</label><input type="date" id="from" name="from" value="{from}"></div>
<div class="field"><label for="to">{to_label}</label><input type="date" id="to" name="to" value="{to}"></div>
<button type="submit">{show}</button>
</form>
<figure class="chart" aria-labelledby="chart-title">
<figcaption id="chart-title">{chart_title}</figcaption>
<ul class="bars" role="list">"#,
        title = t("page.scheduler.title"),
        from_label = t("page.scheduler.from"),
        to_label = t("page.scheduler.to"),
        from = from,
        to = to,
        show = t("page.staff.show"),
        chart_title = tv(
            "page.scheduler.chart",
            &[("from", &tr_date(from)), ("to", &tr_date(to))]
        ),
    );
    for l in &figures {
        let percent = (l.utilisation * 100.0).clamp(0.0, 100.0);
        body.push_str(&format!(
            r#"<li><span class="bar-label">{name}</span><span class="bar-track"><span class="bar-fill" style="width: {width:.1}%"></span></span><span class="bar-value">{value}</span></li>"#,
            name = bdi(&l.name),
            width = percent,
            value = tv(
                "page.scheduler.bar_value",
                &[
                    ("percent", &format!("{percent:.0}")),
                    ("booked", &l.booked_minutes.to_string()),
                    ("published", &l.published_minutes.to_string()),
                ]
            ),
        ));
    }
    body.push_str(&format!(
        r#"</ul></figure>
<div class="table-wrap" role="region" tabindex="0" aria-labelledby="load-caption"><table>
<caption id="load-caption">{caption}</caption>
<thead><tr><th scope="col">{m}</th><th scope="col">{published}</th><th scope="col">{booked}</th><th scope="col">{util}</th><th scope="col">{bookings}</th><th scope="col">{completed}</th><th scope="col">{no_shows}</th><th scope="col">{cancelled}</th><th scope="col">{others}</th></tr></thead><tbody>"#,
        caption = t("page.scheduler.table"),
        m = t("page.scheduler.municipality"),
        published = t("page.scheduler.published"),
        booked = t("page.scheduler.booked"),
        util = t("page.scheduler.utilisation"),
        bookings = t("page.scheduler.bookings"),
        completed = t("page.scheduler.completed"),
        no_shows = t("page.scheduler.no_shows"),
        cancelled = t("page.scheduler.cancelled"),
        others = t("page.scheduler.for_others"),
    ));
    for l in &figures {
        body.push_str(&format!(
            "<tr><th scope=\"row\">{}</th><td>{}</td><td>{}</td><td>{:.0} %</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            bdi(&l.name),
            l.published_minutes,
            l.booked_minutes,
            l.utilisation * 100.0,
            l.bookings,
            l.completed,
            l.no_shows,
            l.cancelled,
            l.performed_for_others,
        ));
    }
    body.push_str("</tbody></table></div>");
    Ok(page(&ctx, &tr("page.scheduler.title"), &body).into_response())
}

fn tr_date(date: jiff::civil::Date) -> String {
    // `long_date` escapes; the caller escapes again through `tv`, so undo the
    // first escaping by building the plain text here instead.
    let weekday = tr(&format!(
        "page.weekday.{}",
        date.weekday().to_monday_one_offset()
    ));
    let month = tr(&format!("page.month.{}", date.month()));
    tr("page.date.long")
        .replace("%{weekday}", &weekday)
        .replace("%{day}", &date.day().to_string())
        .replace("%{month}", &month)
        .replace("%{year}", &date.year().to_string())
}

/// The newest audit entries. Admins only.
#[tracing::instrument(skip(state, ctx))]
async fn audit_log(State(state): State<AppState>, ctx: Ctx) -> PageResult {
    let staff = ctx.staff()?;
    if staff.role != Role::Admin {
        return Err(AppError::Forbidden("this needs the role admin".into()).into());
    }
    let records = audit::recent(&state.db, None, 200).await?;
    let mut body = format!(
        r#"<h1 id="page-title">{title}</h1>
<p class="zone">{zone}</p>
<div class="table-wrap" role="region" tabindex="0" aria-labelledby="audit-caption"><table class="audit">
<caption id="audit-caption">{caption}</caption>
<thead><tr><th scope="col">{at}</th><th scope="col">{actor}</th><th scope="col">{action}</th><th scope="col">{subject}</th><th scope="col">{resident}</th><th scope="col">{behalf}</th><th scope="col">{rule}</th><th scope="col">{outcome}</th></tr></thead><tbody>"#,
        title = t("page.audit.title"),
        zone = zone_note(),
        caption = tv(
            "page.audit.caption",
            &[("count", &records.len().to_string())]
        ),
        at = t("page.audit.at"),
        actor = t("page.audit.actor"),
        action = t("page.audit.action"),
        subject = t("page.audit.subject"),
        resident = t("page.staff.resident"),
        behalf = t("page.audit.on_behalf_of"),
        rule = t("page.my.rule"),
        outcome = t("page.audit.outcome"),
    );
    for r in &records {
        let at = jiff::Timestamp::from_second(r.at).unwrap_or_default();
        let rule = match (&r.rule, &r.agreement_id) {
            (Some(rule), agreement) => rule_text(rule, agreement.as_deref()),
            (None, _) => String::new(),
        };
        body.push_str(&format!(
            "<tr><td><time datetime=\"{iso}\">{date} {time}</time></td><td>{actor}</td><td>{action}</td><td><code>{subject}</code></td><td>{resident}</td><td>{behalf}</td><td>{rule}</td><td>{outcome}</td></tr>",
            iso = super::rfc3339(at),
            date = local(at).date(),
            time = local(at).strftime("%H:%M:%S"),
            actor = esc(&r.actor),
            action = esc(&r.action),
            subject = esc(&r.subject),
            resident = esc(r.resident_id.as_deref().unwrap_or("")),
            behalf = esc(r.on_behalf_of.as_deref().unwrap_or("")),
            outcome = esc(&r.outcome),
        ));
    }
    body.push_str("</tbody></table></div>");
    Ok(page(&ctx, &tr("page.audit.title"), &body).into_response())
}

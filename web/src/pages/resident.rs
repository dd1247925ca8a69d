//! The resident's pages: choosing a service and a free time, signing in by
//! email link, confirming the booking, and "My pages" with cancel and
//! reschedule.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Redirect};
use axum::routing::{get, post};
use axum::Router;
use axum_extra::extract::cookie::{Cookie, SameSite};
use axum_extra::extract::CookieJar;
use booking::bookings::{self, Authority};
use booking::outbox::NeutralTitle;
use booking::sessions::Subject;
use booking::{catalog, Language, MunicipalityCode, ServiceCode};
use serde::Deserialize;

use maud::{html, Markup};

use super::{
    bdi, chats, csrf_field, enc, free_times_by_day, is_local_path, long_date, municipality_name,
    non_empty, page, rule_text, service_name, sign_out_everywhere_form, status_text, time_picker,
    tr, tr_markup, tr_with, when, zone_note, Ctx, PageError, PageForm, PageQuery, PageResult,
    NEXT_COOKIE,
};
use crate::api::auth::{redeem_link, send_sign_in_link, ResidentLinkRequest};
use crate::api::parse_time;
use crate::auth::{self, cleared_cookies, same_origin, session_cookies, Claims};
use crate::clock::now;
use crate::error::{path_id, AppError};
use crate::state::AppState;

pub fn router() -> axum::Router<AppState> {
    Router::new()
        .route("/", get(start))
        .route("/book", get(confirm).post(book))
        .route("/sign-in", get(sign_in).post(send_link))
        .route("/auth/resident/callback", get(callback))
        .route("/sign-out", post(sign_out))
        .route("/sign-out-everywhere", post(sign_out_everywhere))
        .route("/my", get(my_pages))
        .route("/my/discreet-mail", post(discreet_mail))
        .route("/my/bookings/{id}/cancel", post(cancel))
        .route(
            "/my/bookings/{id}/reschedule",
            get(reschedule_form).post(reschedule),
        )
}

#[derive(Debug, Default, Deserialize)]
pub struct Choice {
    pub service: Option<String>,
    pub home: Option<String>,
    pub language: Option<String>,
    pub starts_at: Option<String>,
}

/// The start page: a service, a home municipality and a meeting language,
/// then the free times grouped by day.
#[tracing::instrument(skip(state, ctx))]
async fn start(
    State(state): State<AppState>,
    ctx: Ctx,
    PageQuery(choice): PageQuery<Choice>,
) -> PageResult {
    let services = catalog::services(&state.db).await?;
    let municipalities = catalog::municipalities(&state.db).await?;
    let home_default = match &ctx.who {
        super::Who::Resident { resident, .. } => Some(resident.home.to_string()),
        _ => None,
    };
    let chosen_service = non_empty(&choice.service).map(str::to_owned);
    let chosen_home = non_empty(&choice.home).map(str::to_owned).or(home_default);
    let chosen_language = non_empty(&choice.language).map(str::to_owned);

    let times = match (&chosen_service, &chosen_home) {
        (Some(service), Some(home)) => {
            let parsed = (
                ServiceCode::parse(service),
                MunicipalityCode::parse(home),
                chosen_language.as_deref().map(Language::parse).transpose(),
            );
            let (Ok(service), Ok(home), Ok(language)) = parsed else {
                return Err(AppError::Invalid("service, home or language".into()).into());
            };
            let days = free_times_by_day(&state.db, &service, &home, language, now()).await?;
            Some(html! {
                section aria-labelledby="times-title" class="times" {
                    h2 id="times-title" tabindex="-1" data-focus {
                        (tr_with("page.start.times_for", &[("service", &service_name(&service))]))
                    }
                    p class="zone" { (zone_note()) }
                    @if days.is_empty() {
                        p { (tr("page.times.none")) }
                    }
                    @for (date, times) in &days {
                        @let day = long_date(*date);
                        h3 { (day) }
                        ul class="slots" role="list" {
                            @for free in times {
                                @let href = format!(
                                    "/book?service={}&home={}&starts_at={}{}",
                                    enc(service.as_str()),
                                    enc(home.as_str()),
                                    enc(&super::rfc3339(free.range.start())),
                                    language
                                        .map(|l| format!("&language={}", l.code()))
                                        .unwrap_or_default()
                                );
                                li {
                                    a class="slot" href=(href) {
                                        (super::clock(free.range.start()))
                                        span class="visually-hidden" { ", " (day) ". " (tr("page.start.book_this")) }
                                    }
                                }
                            }
                        }
                    }
                }
            })
        }
        _ => None,
    };
    let chat_start = super::chat::start_points(&state, chosen_home.as_deref()).await?;
    let choose = tr("page.start.choose");
    let body = html! {
        h1 id="page-title" { (tr("page.start.title")) }
        p { (tr("page.start.intro")) }
        form method="get" action="/" class="search" {
            div class="field" {
                label for="service" { (tr("page.start.service")) }
                select id="service" name="service" required {
                    option value="" { (choose) }
                    @for s in &services {
                        (option(s.code.as_str(), &service_name(&s.code), chosen_service.as_deref()))
                    }
                }
            }
            div class="field" {
                label for="home" { (tr("page.start.home")) }
                select id="home" name="home" required aria-describedby="home-hint" {
                    option value="" { (choose) }
                    @for m in &municipalities {
                        (option(m.code.as_str(), &m.name, chosen_home.as_deref()))
                    }
                }
                p class="hint" id="home-hint" { (tr("page.start.home_hint")) }
            }
            div class="field" {
                label for="language" { (tr("page.start.language")) }
                select id="language" name="language" {
                    (option("", &tr("page.start.any_language"), None))
                    @for l in Language::ALL {
                        (option(l.code(), &tr(&format!("page.language.{}", l.code())), chosen_language.as_deref()))
                    }
                }
            }
            button type="submit" { (tr("page.start.search")) }
        }
        p { a href="/legal-map" { (tr("page.start.legal_link")) } }
        (chat_start)
        @if let Some(times) = times { (times) }
    };
    Ok(page(&ctx, &tr("page.start.title"), body).into_response())
}

fn option(value: &str, label: &str, chosen: Option<&str>) -> Markup {
    html! { option value=(value) selected[chosen == Some(value)] { (label) } }
}

/// The confirmation step. A visitor who is not signed in goes to sign-in
/// first, and comes back here with the same choice.
#[tracing::instrument(skip(state, ctx))]
async fn confirm(
    State(state): State<AppState>,
    ctx: Ctx,
    PageQuery(choice): PageQuery<Choice>,
) -> PageResult {
    let resident = ctx.resident()?;
    let service = ServiceCode::parse(non_empty(&choice.service).unwrap_or_default())?;
    let starts_raw = non_empty(&choice.starts_at).unwrap_or_default().to_owned();
    let starts_at = parse_time("starts_at", &starts_raw)?;
    let language = non_empty(&choice.language)
        .map(Language::parse)
        .transpose()?;
    let service_row = catalog::service(&state.db, &service)
        .await?
        .ok_or(AppError::NotFound)?;
    let ends_at = starts_at
        .checked_add(jiff::Span::new().minutes(service_row.slot_minutes))
        .map_err(|e| AppError::Internal(e.into()))?;
    let range = booking::SlotRange::new(starts_at, ends_at)?;
    let home_name = municipality_name(&state.db, &resident.home).await?;
    let discreet = service_row.discreet || resident.discreet_mail;
    let body = confirm_body(
        &ctx,
        &service,
        &range,
        language,
        &home_name,
        &starts_raw,
        discreet,
        None,
    );
    // The times were searched for the home chosen on the start page, but a
    // booking is always made for the account's home municipality.
    let other_home = non_empty(&choice.home).is_some_and(|h| h != resident.home.as_str());
    let body = html! {
        (body)
        @if other_home {
            p class="note" { (tr_markup("page.confirm.other_home", &[("home", bdi(&home_name))])) }
        }
    };
    Ok(page(&ctx, &tr("page.confirm.title"), body).into_response())
}

// The confirmation page shows each of these; a struct for one caller's
// arguments would only rename them.
#[allow(clippy::too_many_arguments)]
fn confirm_body(
    ctx: &Ctx,
    service: &ServiceCode,
    range: &booking::SlotRange,
    language: Option<Language>,
    home_name: &str,
    starts_raw: &str,
    discreet: bool,
    problem: Option<&str>,
) -> Markup {
    let other_time = format!("/?service={}", enc(service.as_str()));
    html! {
        h1 id="page-title" { (tr("page.confirm.title")) }
        @if let Some(problem) = problem {
            div class="problem" role="alert" tabindex="-1" data-focus {
                p { (problem) }
                p { a href=(other_time) { (tr("page.confirm.other_time")) } }
            }
        }
        dl class="facts" {
            dt { (tr("page.confirm.service")) }
            dd { (service_name(service)) }
            dt { (tr("page.confirm.time")) }
            dd { (when(range)) }
            dt { (tr("page.confirm.home")) }
            dd { (bdi(home_name)) }
        }
        p { (tr("page.confirm.explain")) }
        form method="post" action="/book" {
            (csrf_field(ctx.csrf()))
            input type="hidden" name="service" value=(service.as_str());
            input type="hidden" name="starts_at" value=(starts_raw);
            input type="hidden" name="language" value=(language.map(|l| l.code()).unwrap_or_default());
            @if discreet { (neutral_title_choice()) }
            button type="submit" id="confirm-booking" { (tr("page.confirm.button")) }
        }
        p { a href=(other_time) { (tr("page.confirm.other_time")) } }
    }
}

/// The choice of neutral title for a discreet booking's mail and calendar
/// entry: a fixed set, never free text, so nothing typed can reach a
/// subject line.
fn neutral_title_choice() -> Markup {
    html! {
        fieldset class="neutral-title" {
            legend { (tr("page.discreet.choose")) }
            p class="hint" id="neutral-title-hint" { (tr("page.discreet.choose_hint")) }
            div class="choices" {
                @for title in NeutralTitle::ALL {
                    @let id = format!("neutral-{}", title.as_str());
                    div class="choice" {
                        input type="radio" name="neutral_title" id=(id) value=(title.as_str())
                            aria-describedby="neutral-title-hint" checked[title == NeutralTitle::default()];
                        label for=(id) { (tr(&format!("page.discreet.title.{}", title.as_str()))) }
                    }
                }
            }
        }
    }
}

#[derive(Debug, Deserialize)]
struct BookForm {
    csrf: String,
    service: String,
    starts_at: String,
    language: Option<String>,
    neutral_title: Option<String>,
}

/// Books the confirmed time and shows it on "My pages".
#[tracing::instrument(skip(state, ctx, form))]
async fn book(
    State(state): State<AppState>,
    ctx: Ctx,
    PageForm(form): PageForm<BookForm>,
) -> PageResult {
    let resident = ctx.resident()?.clone();
    ctx.check_csrf(&form.csrf)?;
    let service = ServiceCode::parse(&form.service)?;
    let starts_at = parse_time("starts_at", &form.starts_at)?;
    let language = non_empty(&form.language).map(Language::parse).transpose()?;
    let neutral_title = non_empty(&form.neutral_title)
        .map(NeutralTitle::parse)
        .transpose()?;
    let booked = bookings::book_titled(
        &state.db,
        &resident,
        &service,
        starts_at,
        language,
        neutral_title,
        now(),
    )
    .await;
    match booked {
        Ok(ticket) => {
            metrics::counter!("kontakt_bookings_total").increment(1);
            Ok(
                Redirect::to(&format!("/my?booked={}", enc(ticket.booking.id.as_str())))
                    .into_response(),
            )
        }
        Err(booking::Error::Conflict(_)) | Err(booking::Error::NotFound) => {
            let service_row = catalog::service(&state.db, &service)
                .await?
                .ok_or(AppError::NotFound)?;
            let ends_at = starts_at
                .checked_add(jiff::Span::new().minutes(service_row.slot_minutes))
                .map_err(|e| AppError::Internal(e.into()))?;
            let range = booking::SlotRange::new(starts_at, ends_at)?;
            let home_name = municipality_name(&state.db, &resident.home).await?;
            let body = confirm_body(
                &ctx,
                &service,
                &range,
                language,
                &home_name,
                &form.starts_at,
                service_row.discreet || resident.discreet_mail,
                Some(&tr("page.confirm.taken")),
            );
            let mut response = page(&ctx, &tr("page.confirm.title"), body).into_response();
            *response.status_mut() = axum::http::StatusCode::CONFLICT;
            Ok(response)
        }
        Err(other) => Err(other.into()),
    }
}

#[derive(Debug, Deserialize)]
struct SignInQuery {
    next: Option<String>,
}

/// The sign-in form: an email address, and for a first sign-in a name and a
/// home municipality.
#[tracing::instrument(skip(state, ctx))]
async fn sign_in(
    State(state): State<AppState>,
    ctx: Ctx,
    PageQuery(q): PageQuery<SignInQuery>,
) -> PageResult {
    let next = q.next.filter(|n| is_local_path(n)).unwrap_or_default();
    let body = sign_in_body(&state, &next, None).await?;
    Ok(page(&ctx, &tr("page.sign_in.title"), body).into_response())
}

async fn sign_in_body(
    state: &AppState,
    next: &str,
    problem: Option<&str>,
) -> Result<Markup, PageError> {
    let municipalities = catalog::municipalities(&state.db).await?;
    Ok(html! {
        h1 id="page-title" { (tr("page.sign_in.title")) }
        @if let Some(problem) = problem {
            div class="problem" role="alert" tabindex="-1" data-focus { p { (problem) } }
        }
        p { (tr("page.sign_in.intro")) }
        @if !next.is_empty() {
            p class="note" { (tr("page.sign_in.choice_kept")) }
        }
        form method="post" action="/sign-in" {
            input type="hidden" name="next" value=(next);
            div class="field" {
                label for="email" { (tr("page.sign_in.email")) }
                input type="email" id="email" name="email" autocomplete="email" required;
            }
            fieldset {
                legend { (tr("page.sign_in.first_time")) }
                p class="hint" { (tr("page.sign_in.first_time_hint")) }
                div class="field" {
                    label for="name" { (tr("page.sign_in.name")) }
                    input type="text" id="name" name="name" autocomplete="name";
                }
                div class="field" {
                    label for="home" { (tr("page.start.home")) }
                    select id="home" name="home_municipality" {
                        option value="" { (tr("page.start.choose")) }
                        @for m in &municipalities {
                            (option(m.code.as_str(), &m.name, None))
                        }
                    }
                }
            }
            button type="submit" { (tr("page.sign_in.button")) }
        }
    })
}

#[derive(Debug, Deserialize)]
struct SignInForm {
    email: String,
    name: Option<String>,
    home_municipality: Option<String>,
    next: Option<String>,
}

/// Sends the sign-in link by the same logic as the API, and keeps the
/// chosen time in a short-lived cookie so the link brings the resident back
/// to it. The form must come from this site.
#[tracing::instrument(skip(state, ctx, jar, headers, form), fields(client = %client))]
async fn send_link(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    ctx: Ctx,
    jar: CookieJar,
    headers: HeaderMap,
    PageForm(form): PageForm<SignInForm>,
) -> PageResult {
    same_origin(&headers, &state.settings.public_url)?;
    let next = form
        .next
        .clone()
        .filter(|n| is_local_path(n))
        .unwrap_or_default();
    let request = ResidentLinkRequest {
        email: form.email.trim().to_owned(),
        name: non_empty(&form.name).map(str::to_owned),
        home_municipality: non_empty(&form.home_municipality).map(str::to_owned),
        language: Some(ctx.locale.code().to_owned()),
    };
    match send_sign_in_link(&state, client.ip(), &request).await {
        Ok(()) => {}
        Err(AppError::Invalid(_)) => {
            let body = sign_in_body(&state, &next, Some(&tr("page.sign_in.invalid"))).await?;
            let mut response = page(&ctx, &tr("page.sign_in.title"), body).into_response();
            *response.status_mut() = axum::http::StatusCode::UNPROCESSABLE_ENTITY;
            return Ok(response);
        }
        Err(other) => return Err(other.into()),
    }
    let body = html! {
        h1 id="page-title" tabindex="-1" data-focus { (tr("page.sign_in.check_title")) }
        p role="status" { (tr("page.sign_in.check_text")) }
        p { (tr("page.sign_in.check_expiry")) }
        @if state.settings.demo {
            p class="note" { (tr("page.sign_in.demo_mail")) " " a href="/dev/mail" { "/dev/mail" } }
        }
    };
    let mut jar = jar;
    if !next.is_empty() {
        let mut cookie = Cookie::new(NEXT_COOKIE, next);
        cookie.set_http_only(true);
        cookie.set_same_site(SameSite::Lax);
        cookie.set_path("/");
        cookie.set_secure(state.settings.secure_cookies);
        cookie.set_max_age(cookie::time::Duration::seconds(
            booking::accounts::SIGN_IN_LINK_SECONDS,
        ));
        jar = jar.add(cookie);
    }
    Ok((jar, page(&ctx, &tr("page.sign_in.check_title"), body)).into_response())
}

#[derive(Debug, Deserialize)]
struct CallbackQuery {
    token: Option<String>,
}

/// The link from the sign-in mail: redeems it once, sets the session cookies
/// and goes on to the kept choice or to "My pages".
#[tracing::instrument(skip(state, ctx, jar, q), fields(client = %client))]
async fn callback(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    ctx: Ctx,
    jar: CookieJar,
    PageQuery(q): PageQuery<CallbackQuery>,
) -> PageResult {
    let token = q.token.unwrap_or_default();
    let resident = redeem_link(&state, client.ip(), &token).await?;
    let Some(resident) = resident else {
        let body = html! {
            h1 id="page-title" { (tr("page.callback.failed_title")) }
            p role="alert" { (tr("page.callback.failed_text")) }
            p { a href="/sign-in" { (tr("page.callback.again")) } }
        };
        let mut response = page(&ctx, &tr("page.callback.failed_title"), body).into_response();
        *response.status_mut() = axum::http::StatusCode::UNAUTHORIZED;
        return Ok(response);
    };
    let (token, claims) = auth::sign_in(
        &state.keys,
        &state.sessions,
        &Subject::Resident(resident.id.clone()),
        state.settings.resident_session_minutes,
        now().as_second(),
    )
    .await?;
    let [a, b] = session_cookies(token, &claims, state.settings.secure_cookies);
    let next = jar
        .get(NEXT_COOKIE)
        .map(|c| c.value().to_owned())
        .filter(|n| is_local_path(n))
        .unwrap_or_else(|| "/my".to_owned());
    let mut spent = Cookie::new(NEXT_COOKIE, "");
    spent.set_path("/");
    spent.make_removal();
    Ok((
        jar.add(a).add(b).add(spent),
        [(header::CACHE_CONTROL, "no-store")],
        Redirect::to(&next),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
struct CsrfForm {
    csrf: String,
}

/// Ends the page session, for residents and staff alike: the session ends
/// on the server too, so a copy of the cookie stops working.
#[tracing::instrument(skip_all)]
async fn sign_out(
    State(state): State<AppState>,
    ctx: Ctx,
    jar: CookieJar,
    PageForm(form): PageForm<CsrfForm>,
) -> PageResult {
    ctx.check_csrf(&form.csrf)?;
    if let Some(sid) = ctx.session.as_ref().and_then(|c| c.session()) {
        state.sessions.end(&sid, now().as_second()).await?;
    }
    let [a, b] = cleared_cookies();
    Ok((jar.add(a).add(b), Redirect::to("/")).into_response())
}

/// Ends every session of the signed-in resident or staff member, on every
/// device: the button on "My pages" and on the staff page.
#[tracing::instrument(skip_all)]
async fn sign_out_everywhere(
    State(state): State<AppState>,
    ctx: Ctx,
    jar: CookieJar,
    PageForm(form): PageForm<CsrfForm>,
) -> PageResult {
    ctx.check_csrf(&form.csrf)?;
    if let Some(subject) = ctx.session.as_ref().and_then(Claims::subject) {
        state.sessions.end_all(&subject, now().as_second()).await?;
    }
    let [a, b] = cleared_cookies();
    Ok((jar.add(a).add(b), Redirect::to("/")).into_response())
}

#[derive(Debug, Deserialize)]
struct MyQuery {
    booked: Option<String>,
    cancelled: Option<String>,
    moved: Option<String>,
    discreet: Option<String>,
}

/// "My pages": the resident's bookings, newest first, with who performs
/// each and under which rule.
#[tracing::instrument(skip(state, ctx))]
async fn my_pages(
    State(state): State<AppState>,
    ctx: Ctx,
    PageQuery(q): PageQuery<MyQuery>,
) -> PageResult {
    let resident = ctx.resident()?;
    let now = now();
    let list = bookings::for_resident(&state.db, resident, now).await?;
    let message = if q.booked.is_some() {
        Some(tr("page.my.booked"))
    } else if q.cancelled.is_some() {
        Some(tr("page.my.cancelled"))
    } else if q.moved.is_some() {
        Some(tr("page.my.moved"))
    } else {
        q.discreet.as_deref().map(|discreet| {
            tr(if discreet == "on" {
                "page.discreet.saved_on"
            } else {
                "page.discreet.saved_off"
            })
        })
    };
    let mut items = Vec::with_capacity(list.len());
    for b in &list {
        let by = municipality_name(&state.db, &b.performed_by).await?;
        let for_ = municipality_name(&state.db, &b.performed_for).await?;
        items.push(booking_item(&ctx, b, &by, &for_, q.booked.as_deref(), now));
    }
    let chat_start = super::chat::start_points(&state, Some(resident.home.as_str())).await?;
    let chats = chats::section(&state, resident).await?;
    let body = html! {
        h1 id="page-title" { (tr_markup("page.my.title_for", &[("name", bdi(&resident.name))])) }
        @if let Some(message) = message {
            div class="success" role="status" tabindex="-1" data-focus { p { (message) } }
        }
        h2 { (tr("page.my.bookings")) }
        p class="zone" { (zone_note()) }
        @if list.is_empty() {
            p { (tr("page.my.none")) " " a href="/" { (tr("page.nav.book")) } }
        }
        ul class="bookings" role="list" {
            @for item in &items { (item) }
        }
        (discreet_mail_form(&ctx, resident.discreet_mail))
        (chat_start)
        (chats)
        (sign_out_everywhere_form(ctx.csrf()))
    };
    Ok(page(&ctx, &tr("page.my.title"), body).into_response())
}

/// One booking on "My pages": what, when, who performs it under which rule,
/// and what the resident can still do with it.
fn booking_item(
    ctx: &Ctx,
    b: &bookings::Booking,
    by: &str,
    for_: &str,
    booked: Option<&str>,
    now: jiff::Timestamp,
) -> Markup {
    let what = service_name(&b.service);
    let join = b.is_joinable(now).then(|| {
        html! {
            a class="button" href={ "/join/" (enc(b.id.as_str())) } {
                (tr("page.meeting.join"))
                span class="visually-hidden" { " " (what) }
            }
        }
    });
    let changeable = b.is_changeable(now);
    let title_id = format!("b-{}", b.id);
    html! {
        li.booking.highlighted[booked == Some(b.id.as_str())] data-booking=(b.id) {
            article aria-labelledby=(title_id) {
                h3 id=(title_id) { (what) }
                dl class="facts" {
                    dt { (tr("page.my.status")) }
                    dd class={ "status status-" (b.status.as_str()) } { (status_text(b.status)) }
                    dt { (tr("page.confirm.time")) }
                    dd { (when(&b.range)) }
                    dt { (tr("page.my.performed_by")) }
                    dd { (bdi(by)) }
                    dt { (tr("page.my.performed_for")) }
                    dd { (bdi(for_)) }
                    dt { (tr("page.my.rule")) }
                    dd { (rule_text(b.rule, b.agreement_id.as_deref())) }
                }
                @if changeable {
                    div class="actions" {
                        @if let Some(join) = &join { (join) }
                        form method="post" action={ "/my/bookings/" (enc(b.id.as_str())) "/cancel" } {
                            (csrf_field(ctx.csrf()))
                            button type="submit" class="secondary" {
                                (tr("page.my.cancel"))
                                span class="visually-hidden" { " " (what) }
                            }
                        }
                        a class="button secondary" href={ "/my/bookings/" (enc(b.id.as_str())) "/reschedule" } {
                            (tr("page.my.reschedule"))
                            span class="visually-hidden" { " " (what) }
                        }
                    }
                } @else if let Some(join) = &join {
                    div class="actions" { (join) }
                }
            }
        }
    }
}

/// The form for "discreet mail for all my bookings".
fn discreet_mail_form(ctx: &Ctx, on: bool) -> Markup {
    html! {
        section aria-labelledby="discreet-title" class="discreet" {
            h2 id="discreet-title" { (tr("page.discreet.title")) }
            p id="discreet-intro" { (tr("page.discreet.intro")) }
            form method="post" action="/my/discreet-mail" {
                (csrf_field(ctx.csrf()))
                div class="choice" {
                    input type="checkbox" id="discreet" name="discreet" value="on"
                        aria-describedby="discreet-intro" checked[on];
                    label for="discreet" { (tr("page.discreet.all")) }
                }
                button type="submit" { (tr("page.discreet.save")) }
            }
        }
    }
}

#[derive(Debug, Deserialize)]
struct DiscreetForm {
    csrf: String,
    /// `on` when the box is ticked; a form leaves an unticked box out.
    discreet: Option<String>,
}

/// Turns discreet mail for all the resident's bookings on or off.
#[tracing::instrument(skip(state, ctx, form))]
async fn discreet_mail(
    State(state): State<AppState>,
    ctx: Ctx,
    PageForm(form): PageForm<DiscreetForm>,
) -> PageResult {
    let resident = ctx.resident()?;
    ctx.check_csrf(&form.csrf)?;
    let on = match form.discreet.as_deref() {
        None => false,
        Some("on") => true,
        Some(_) => return Err(AppError::Invalid("discreet: expected on".into()).into()),
    };
    booking::accounts::set_discreet_mail(&state.db, resident, on).await?;
    let state = if on { "on" } else { "off" };
    Ok(Redirect::to(&format!("/my?discreet={state}")).into_response())
}

/// Cancels one of the resident's bookings.
#[tracing::instrument(skip(state, ctx, form))]
async fn cancel(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    PageForm(form): PageForm<CsrfForm>,
) -> PageResult {
    let resident = ctx.resident()?;
    ctx.check_csrf(&form.csrf)?;
    let id = path_id(&id)?;
    bookings::cancel(&state.db, Authority::Resident(resident), Some(&id), now()).await?;
    Ok(Redirect::to("/my?cancelled=1").into_response())
}

/// Free times to move one of the resident's bookings to.
#[tracing::instrument(skip(state, ctx))]
async fn reschedule_form(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> PageResult {
    let resident = ctx.resident()?;
    let now = now();
    let b = bookings::for_resident_by_id(&state.db, resident, &path_id(&id)?, now).await?;
    let days = free_times_by_day(&state.db, &b.service, &resident.home, None, now).await?;
    let body = html! {
        h1 id="page-title" {
            (tr_with("page.reschedule.title_for", &[("service", &service_name(&b.service))]))
        }
        p { (tr("page.reschedule.current")) ": " (when(&b.range)) }
        h2 { (tr("page.reschedule.pick")) }
        (time_picker(
            &format!("/my/bookings/{}/reschedule", enc(b.id.as_str())),
            Some(ctx.csrf()),
            &days
        ))
        p { a href="/my" { (tr("page.reschedule.back")) } }
    };
    Ok(page(&ctx, &tr("page.reschedule.title"), body).into_response())
}

#[derive(Debug, Deserialize)]
struct MoveForm {
    csrf: Option<String>,
    starts_at: String,
}

/// Moves one of the resident's bookings to the chosen free time.
#[tracing::instrument(skip(state, ctx, form))]
async fn reschedule(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    PageForm(form): PageForm<MoveForm>,
) -> PageResult {
    let resident = ctx.resident()?;
    ctx.check_csrf(form.csrf.as_deref().unwrap_or_default())?;
    let starts_at = parse_time("starts_at", &form.starts_at)?;
    let id = path_id(&id)?;
    bookings::reschedule(
        &state.db,
        Authority::Resident(resident),
        Some(&id),
        starts_at,
        now(),
    )
    .await?;
    Ok(Redirect::to("/my?moved=1").into_response())
}

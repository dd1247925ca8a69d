//! The server-rendered pages of the `kontakt` binary: the resident's booking
//! flow, sign-in, "My pages", managing a booking by its mail token, the
//! meeting page with the video call, the public legal map, and the staff,
//! scheduler and admin views.
//!
//! Pages are plain HTML built here, with every string translated through
//! rust-i18n (`page.` keys) and every dynamic value escaped. They work without
//! JavaScript, except the video meeting (`meeting.js`); the one small script
//! on every page only moves focus to a message after a form post. Cookie
//! sessions are the same JWTs the API issues; because a plain HTML form
//! cannot send the `x-csrf-token` header, page forms carry the session's CSRF
//! value in a hidden `csrf` field that the handlers here compare with the
//! claim.

mod chat;
mod chats;
mod console;
mod legal;
mod manage;
mod meeting;
mod resident;
mod staff;

use std::collections::BTreeMap;

use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use booking::accounts::{Resident, Staff};
use booking::bookings::{self, FreeTime, SearchQuery};
use booking::{DateRange, Db, Language, MunicipalityCode, ServiceCode, SlotRange};
use jiff::civil::Date;
use jiff::{Timestamp, Zoned};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::auth::{Claims, Keys, SubjectKind, SESSION_COOKIE};
use crate::error::AppError;
use crate::i18n::{current_locale, Locale};
use crate::state::AppState;

/// The routes of every page and of the static assets.
pub fn router() -> Router<AppState> {
    Router::new()
        .merge(resident::router())
        .merge(manage::router())
        .merge(chats::router())
        .merge(chat::router())
        .merge(meeting::router())
        .merge(console::router())
        .merge(legal::router())
        .merge(staff::router())
        .route("/lang", get(switch_language))
}

/// How many days ahead the pages offer free times.
pub const SEARCH_DAYS: i64 = 13;

/// The cookie that keeps a resident's chosen time while they sign in by mail.
pub const NEXT_COOKIE: &str = "kontakt_next";

/// Who is looking at a page, and in which language.
pub struct Ctx {
    pub locale: Locale,
    /// The path and query of this request, for the language switcher.
    pub here: String,
    pub who: Who,
    /// The active session behind `who`; `None` when anonymous.
    pub session: Option<Claims>,
}

pub enum Who {
    Anonymous,
    Resident { resident: Resident, csrf: String },
    Staff { staff: Staff, csrf: String },
}

impl Ctx {
    /// The CSRF value of the session, empty when nobody is signed in.
    pub fn csrf(&self) -> &str {
        match &self.who {
            Who::Anonymous => "",
            Who::Resident { csrf, .. } | Who::Staff { csrf, .. } => csrf,
        }
    }

    /// Refuses a form post whose `csrf` field does not match the session.
    pub fn check_csrf(&self, given: &str) -> Result<(), PageError> {
        let expected = self.csrf();
        if expected.is_empty() || !constant_time_eq(expected.as_bytes(), given.as_bytes()) {
            return Err(PageError::App(AppError::Forbidden(
                "missing or wrong CSRF token".into(),
            )));
        }
        Ok(())
    }

    /// The signed-in resident, or a redirect to sign-in that comes back here.
    pub fn resident(&self) -> Result<&Resident, PageError> {
        match &self.who {
            Who::Resident { resident, .. } => Ok(resident),
            _ => Err(PageError::SignIn {
                next: self.here.clone(),
            }),
        }
    }

    /// The signed-in staff member, or a redirect to the staff sign-in.
    pub fn staff(&self) -> Result<&Staff, PageError> {
        match &self.who {
            Who::Staff { staff, .. } => Ok(staff),
            _ => Err(PageError::StaffSignIn),
        }
    }
}

impl FromRequestParts<AppState> for Ctx {
    type Rejection = PageError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let here = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".to_owned());
        // A token whose session ended (signed out, everywhere, or a
        // deactivated account) counts as no session at all.
        let mut session = session_claims(&parts.headers, &state.keys);
        if let Some(claims) = &session {
            if !crate::auth::is_live(&state.sessions, claims).await? {
                session = None;
            }
        }
        let who = match session.clone() {
            None => Who::Anonymous,
            Some(claims) => match claims.kind {
                SubjectKind::Resident => {
                    match booking::accounts::resident_by_id(&state.db, &claims.sub).await? {
                        Some(resident) => Who::Resident {
                            resident,
                            csrf: claims.csrf,
                        },
                        None => Who::Anonymous,
                    }
                }
                SubjectKind::Staff => {
                    match booking::accounts::staff_by_id(&state.db, &claims.sub).await? {
                        Some(staff) => Who::Staff {
                            staff,
                            csrf: claims.csrf,
                        },
                        None => Who::Anonymous,
                    }
                }
            },
        };
        if matches!(who, Who::Anonymous) {
            session = None;
        }
        Ok(Ctx {
            locale: current_locale(),
            here,
            who,
            session,
        })
    }
}

/// Why a page could not be shown.
#[derive(Debug)]
pub enum PageError {
    App(AppError),
    /// The page needs a signed-in resident; sign-in comes back to `next`.
    SignIn {
        next: String,
    },
    /// The page needs a signed-in staff member.
    StaffSignIn,
}

impl From<AppError> for PageError {
    fn from(err: AppError) -> Self {
        PageError::App(err)
    }
}

impl From<booking::Error> for PageError {
    fn from(err: booking::Error) -> Self {
        PageError::App(err.into())
    }
}

impl From<booking::InvalidValue> for PageError {
    fn from(err: booking::InvalidValue) -> Self {
        PageError::App(err.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let err = match self {
            PageError::SignIn { next } => {
                return Redirect::to(&format!("/sign-in?next={}", enc(&next))).into_response()
            }
            PageError::StaffSignIn => return Redirect::to("/staff/login").into_response(),
            PageError::App(err) => err,
        };
        let (status, code) = match &err {
            AppError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            AppError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            AppError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            AppError::Invalid(_) | AppError::BadJson(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid")
            }
            AppError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            AppError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            AppError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            AppError::Internal(e) => {
                tracing::error!(error = ?e, "page failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        let ctx = Ctx {
            locale: current_locale(),
            here: "/".into(),
            who: Who::Anonymous,
            session: None,
        };
        let body = format!(
            "<h1 id=\"page-title\">{title}</h1>\n<p role=\"alert\">{message}</p>\n<p><a href=\"/\">{home}</a></p>",
            title = t("page.error.title"),
            message = esc(&tr(&format!("error.{code}"))),
            home = t("page.error.home"),
        );
        (status, page(&ctx, &tr("page.error.title"), &body)).into_response()
    }
}

/// `Form` whose rejection is an HTML page, like every other page error.
pub struct PageForm<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for PageForm<T> {
    type Rejection = PageError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        axum::Form::<T>::from_request(req, state)
            .await
            .map(|f| PageForm(f.0))
            .map_err(|e| PageError::App(AppError::Invalid(e.body_text())))
    }
}

/// `Query` whose rejection is an HTML page.
pub struct PageQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for PageQuery<T> {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let invalid = |e: axum::extract::rejection::QueryRejection| {
            PageError::App(AppError::Invalid(e.body_text()))
        };
        let pairs = Query::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(invalid)?;
        if let Some(field) = crate::api::oversized_pair(&pairs) {
            return Err(PageError::App(crate::api::too_long(&field)));
        }
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| PageQuery(q.0))
            .map_err(invalid)
    }
}

/// The page result every handler returns.
pub type PageResult = Result<Response, PageError>;

/// Renders a whole page: the head, the header with navigation, language
/// switcher and sign-out button, `body` as the main content, and the footer.
pub fn page(ctx: &Ctx, title: &str, body: &str) -> Html<String> {
    let locale = ctx.locale;
    let dir = if locale.is_rtl() { "rtl" } else { "ltr" };
    let mut nav = Vec::new();
    nav.push(nav_link(ctx, "/", "page.nav.book"));
    match &ctx.who {
        Who::Staff { staff, .. } => {
            nav.push(nav_link(ctx, "/staff", "page.nav.staff"));
            nav.push(nav_link(ctx, "/staff/console", "page.nav.console"));
            if matches!(staff.role, booking::Role::Scheduler | booking::Role::Admin) {
                nav.push(nav_link(ctx, "/scheduler", "page.nav.scheduler"));
            }
            if staff.role == booking::Role::Admin {
                nav.push(nav_link(ctx, "/admin/audit", "page.nav.audit"));
            }
        }
        _ => nav.push(nav_link(ctx, "/my", "page.nav.my")),
    }
    nav.push(nav_link(ctx, "/legal-map", "page.nav.legal_map"));
    let account = match &ctx.who {
        Who::Anonymous => format!(
            "<a href=\"/sign-in\">{}</a> <a href=\"/staff/login\">{}</a>",
            t("page.nav.sign_in"),
            t("page.nav.staff_sign_in")
        ),
        Who::Resident { resident, csrf } => sign_out_form(&resident.name, csrf),
        Who::Staff { staff, csrf } => sign_out_form(&staff.name, csrf),
    };
    let back = without_lang(&ctx.here);
    let languages: String = Language::ALL
        .iter()
        .map(|l| {
            let current = if *l == locale {
                " aria-current=\"true\""
            } else {
                ""
            };
            format!(
                "<li><a href=\"/lang?to={code}&amp;back={back}\" lang=\"{code}\" hreflang=\"{code}\"{current}>{name}</a></li>",
                code = l.code(),
                back = esc(&enc(&back)),
                name = language_name(*l),
            )
        })
        .collect();
    let html = format!(
        r##"<!doctype html>
<html lang="{lang}" dir="{dir}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} – Kontakt</title>
<link rel="stylesheet" href="{css}">
<script src="{js}" defer></script>
</head>
<body>
<a class="skip" href="#main">{skip}</a>
<header class="site">
<div class="bar">
<a class="brand" href="/">Kontakt</a>
<nav aria-label="{nav_label}"><ul>{nav}</ul></nav>
<div class="account">{account}</div>
</div>
<nav class="languages" aria-label="{lang_label}"><ul>{languages}</ul></nav>
</header>
<main id="main" tabindex="-1">
{body}
</main>
<footer class="site">
<p>{footer} <a href="/legal-map">{legal_map}</a></p>
</footer>
</body>
</html>
"##,
        lang = locale.code(),
        css = crate::assets::url("kontakt.css"),
        js = crate::assets::url("kontakt.js"),
        title = esc(title),
        skip = t("page.skip"),
        nav_label = t("page.nav.label"),
        nav = nav.concat(),
        lang_label = t("page.nav.languages"),
        footer = t("page.footer"),
        legal_map = t("page.nav.legal_map"),
    );
    Html(html)
}

fn nav_link(ctx: &Ctx, href: &str, key: &str) -> String {
    let path = ctx.here.split('?').next().unwrap_or("/");
    let current = if path == href {
        " aria-current=\"page\""
    } else {
        ""
    };
    format!("<li><a href=\"{href}\"{current}>{}</a></li>", t(key))
}

fn sign_out_form(name: &str, csrf: &str) -> String {
    format!(
        "<span class=\"who\">{signed_in}</span> <form method=\"post\" action=\"/sign-out\" class=\"inline\">{csrf}<button type=\"submit\" class=\"link\">{sign_out}</button></form>",
        signed_in = tv_html("page.nav.signed_in_as", &[("name", &bdi(name))]),
        csrf = csrf_field(csrf),
        sign_out = t("page.nav.sign_out"),
    )
}

/// The "sign out everywhere" button, for "My pages" and the staff page:
/// ends every session of the signed-in person, on every device.
pub fn sign_out_everywhere_form(csrf: &str) -> String {
    format!(
        "<form method=\"post\" action=\"/sign-out-everywhere\" class=\"sign-out-everywhere\">{csrf}<p>{hint}</p><button type=\"submit\">{button}</button></form>",
        csrf = csrf_field(csrf),
        hint = t("page.sessions.everywhere_hint"),
        button = t("page.sessions.everywhere_button"),
    )
}

/// A hidden form field carrying the session's CSRF value.
pub fn csrf_field(csrf: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(csrf)
    )
}

/// Each language named in itself, so that a reader finds their own.
fn language_name(l: Language) -> &'static str {
    match l {
        Language::Sv => "Svenska",
        Language::En => "English",
        Language::Fi => "Suomi",
        Language::Ar => "العربية",
    }
}

#[derive(Deserialize)]
struct SwitchLanguage {
    to: String,
    back: Option<String>,
}

/// Sets the `lang` cookie and returns to the page the reader was on.
#[tracing::instrument(skip_all)]
async fn switch_language(Query(q): Query<SwitchLanguage>) -> Response {
    let back = q
        .back
        .as_deref()
        .filter(|b| is_local_path(b))
        .unwrap_or("/")
        .to_owned();
    let Ok(lang) = Language::parse(&q.to) else {
        return Redirect::to(&back).into_response();
    };
    let cookie = format!(
        "lang={}; Path=/; Max-Age=31536000; SameSite=Lax",
        lang.code()
    );
    ([(header::SET_COOKIE, cookie)], Redirect::to(&back)).into_response()
}

/// The verified claims of the page session cookie, if any.
pub fn session_claims(headers: &HeaderMap, keys: &Keys) -> Option<Claims> {
    let token = cookie(headers, SESSION_COOKIE)?;
    keys.verify(&token)
}

/// The value of cookie `name`.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// Compares two secrets without revealing where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether `path` is a path on this site, so a redirect to it cannot leave it.
pub fn is_local_path(path: &str) -> bool {
    path.starts_with('/')
        && !path.starts_with("//")
        && !path.starts_with("/\\")
        && !path.chars().any(|c| c.is_control())
}

/// `here` without any `lang=` query parameter, so that the switcher's choice
/// is not overridden by the language in the address.
fn without_lang(here: &str) -> String {
    match here.split_once('?') {
        None => here.to_owned(),
        Some((path, query)) => {
            let kept: Vec<&str> = query
                .split('&')
                .filter(|p| !p.starts_with("lang=") && !p.is_empty())
                .collect();
            if kept.is_empty() {
                path.to_owned()
            } else {
                format!("{path}?{}", kept.join("&"))
            }
        }
    }
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a query parameter value.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The translation of `key` in the request's language, unescaped.
pub fn tr(key: &str) -> String {
    rust_i18n::t!(key, locale = current_locale().code()).into_owned()
}

/// The translation of `key`, escaped for HTML.
pub fn t(key: &str) -> String {
    esc(&tr(key))
}

/// The translation of `key` with `%{name}` placeholders filled in, escaped.
pub fn tv(key: &str, values: &[(&str, &str)]) -> String {
    let mut text = tr(key);
    for (name, value) in values {
        text = text.replace(&format!("%{{{name}}}"), value);
    }
    esc(&text)
}

/// The translation of `key`, escaped, with `%{name}` placeholders filled in
/// by `values` that are already HTML (from [`bdi`], say).
pub fn tv_html(key: &str, values: &[(&str, &str)]) -> String {
    let mut text = t(key);
    for (name, value) in values {
        text = text.replace(&format!("%{{{name}}}"), value);
    }
    text
}

/// A name of a person or a municipality, escaped and isolated in `<bdi>`:
/// a Latin name inside Arabic text (or an Arabic name inside Swedish) then
/// keeps its own direction, and "name، municipality" is not reordered. A
/// stored name with a direction override from before names were checked
/// cannot reorder the text around it either.
pub fn bdi(name: &str) -> String {
    format!("<bdi>{}</bdi>", esc(name))
}

/// A name isolated with U+2068 FIRST STRONG ISOLATE and U+2069 POP
/// DIRECTIONAL ISOLATE, for the places `<bdi>` cannot go: attribute values
/// and `<option>` text.
pub fn isolate(name: &str) -> String {
    format!("\u{2068}{name}\u{2069}")
}

/// The name of a service in the request's language, escaped.
pub fn service_name(service: &ServiceCode) -> String {
    t(&format!("service.{service}"))
}

/// A time in the display zone.
pub fn local(at: Timestamp) -> Zoned {
    let tz = bookings::zone(bookings::DISPLAY_ZONE).expect("bundled zone");
    at.to_zoned(tz)
}

/// Today's date in the display zone.
pub fn today(now: Timestamp) -> Date {
    local(now).date()
}

/// A date written out in the request's language, e.g. "tisdag 3 december 2026".
pub fn long_date(date: Date) -> String {
    let weekday = tr(&format!(
        "page.weekday.{}",
        date.weekday().to_monday_one_offset()
    ));
    let month = tr(&format!("page.month.{}", date.month()));
    tv(
        "page.date.long",
        &[
            ("weekday", &weekday),
            ("day", &date.day().to_string()),
            ("month", &month),
            ("year", &date.year().to_string()),
        ],
    )
}

/// The clock time of `at` in the display zone, written the request's
/// language's way: `10:00` in Swedish, `10.00` in Finnish.
pub fn clock(at: Timestamp) -> String {
    let time = local(at);
    tv(
        "page.time.clock",
        &[
            ("hour", &format!("{:02}", time.hour())),
            ("minute", &format!("{:02}", time.minute())),
        ],
    )
}

/// The clock times of a range, e.g. "10:00–10:45". Arabic writes it in
/// words ("من 10:00 إلى 10:45"), since a dash between two numbers is
/// reordered in right-to-left text.
pub fn clock_range(range: &SlotRange) -> String {
    tv(
        "page.time.range",
        &[("from", &clock(range.start())), ("to", &clock(range.end()))],
    )
}

/// A meeting's date and time with the zone named in plain words, e.g.
/// "tisdag 3 december 2026 kl. 10:00–10:45 (svensk tid)", as a `<time>`
/// element.
pub fn when(range: &SlotRange) -> String {
    let start = local(range.start());
    let weekday = tr(&format!(
        "page.weekday.{}",
        start.weekday().to_monday_one_offset()
    ));
    let month = tr(&format!("page.month.{}", start.month()));
    let text = tv(
        "page.time.when",
        &[
            ("weekday", &weekday),
            ("day", &start.day().to_string()),
            ("month", &month),
            ("year", &start.year().to_string()),
            ("from", &clock(range.start())),
            ("to", &clock(range.end())),
        ],
    );
    format!(
        "<time datetime=\"{iso}\">{text}</time>",
        iso = start.strftime("%Y-%m-%dT%H:%M:%S%:z"),
    )
}

/// A time as RFC 3339 in the display zone, the value forms carry.
pub fn rfc3339(at: Timestamp) -> String {
    local(at).strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
}

/// Free times for the next [`SEARCH_DAYS`] days, grouped by local date.
pub async fn free_times_by_day(
    db: &Db,
    service: &ServiceCode,
    home: &MunicipalityCode,
    language: Option<Language>,
    now: Timestamp,
) -> Result<BTreeMap<Date, Vec<FreeTime>>, PageError> {
    let query = SearchQuery {
        service: service.clone(),
        home: home.clone(),
        dates: DateRange::starting(today(now), SEARCH_DAYS)?,
        language,
    };
    let mut days: BTreeMap<Date, Vec<FreeTime>> = BTreeMap::new();
    for free in bookings::search(db, &query, now).await? {
        days.entry(local(free.range.start()).date())
            .or_default()
            .push(free);
    }
    Ok(days)
}

/// A form to pick one of `days`' free times with radio buttons, grouped by
/// day, posting `starts_at` (and the CSRF value) to `action`.
pub fn time_picker(
    action: &str,
    csrf: Option<&str>,
    days: &BTreeMap<Date, Vec<FreeTime>>,
) -> String {
    if days.is_empty() {
        return format!("<p>{}</p>", t("page.times.none"));
    }
    let mut out = format!(
        "<form method=\"post\" action=\"{}\" class=\"picker\">{}",
        esc(action),
        csrf.map(csrf_field).unwrap_or_default()
    );
    for (i, (date, times)) in days.iter().enumerate() {
        out.push_str(&format!(
            "<fieldset><legend>{}</legend><div class=\"choices\">",
            long_date(*date)
        ));
        for (j, free) in times.iter().enumerate() {
            let id = format!("t-{i}-{j}");
            out.push_str(&format!(
                "<div class=\"choice\"><input type=\"radio\" name=\"starts_at\" id=\"{id}\" value=\"{value}\" required><label for=\"{id}\">{range}</label></div>",
                value = esc(&rfc3339(free.range.start())),
                range = clock_range(&free.range),
            ));
        }
        out.push_str("</div></fieldset>");
    }
    out.push_str(&format!(
        "<p class=\"zone\">{}</p><button type=\"submit\">{}</button></form>",
        zone_note(),
        t("page.times.move")
    ));
    out
}

/// The sentence that names the zone times are shown in, in plain words.
pub fn zone_note() -> String {
    t("page.times.zone")
}

/// The municipality's name for `code`, or the code if it is unknown.
pub async fn municipality_name(db: &Db, code: &MunicipalityCode) -> Result<String, PageError> {
    Ok(booking::catalog::municipality(db, code)
        .await?
        .map(|m| m.name)
        .unwrap_or_else(|| code.to_string()))
}

/// Which rule a booking relies on, in words, with the agreement it cites.
pub fn rule_text(rule: &str, agreement_id: Option<&str>) -> String {
    match (rule, agreement_id) {
        ("agreement", Some(id)) => tv("page.rule.agreement_with_id", &[("id", id)]),
        ("home", _) => t("page.rule.home"),
        ("open", _) => t("page.rule.open"),
        ("agreement", None) => t("page.rule.agreement"),
        ("home_only", _) => t("page.rule.home_only"),
        (other, _) => esc(other),
    }
}

/// A booking status in words.
/// Whether a booking's meeting can still be joined: it is booked and has not
/// ended.
pub fn joinable(booking: &bookings::Booking, now: Timestamp) -> bool {
    booking.status == booking::BookingStatus::Booked && booking.range.end() > now
}

pub fn status_text(status: booking::BookingStatus) -> String {
    t(&format!("page.status.{}", status.as_str()))
}

/// `None` for an empty form or query value.
pub fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(text: &str) -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with('_') && !l.trim().is_empty())
            .filter_map(|l| l.split_once(':').map(|(k, _)| k.trim().to_owned()))
            .collect()
    }

    #[test]
    fn every_language_has_every_key() {
        let sv = keys(include_str!("../../locales/sv.yml"));
        for (name, text) in [
            ("en", include_str!("../../locales/en.yml")),
            ("fi", include_str!("../../locales/fi.yml")),
            ("ar", include_str!("../../locales/ar.yml")),
        ] {
            let other = keys(text);
            let missing: Vec<&String> = sv.iter().filter(|k| !other.contains(k)).collect();
            let extra: Vec<&String> = other.iter().filter(|k| !sv.contains(k)).collect();
            assert!(missing.is_empty(), "{name} lacks {missing:?}");
            assert!(extra.is_empty(), "{name} has keys sv lacks: {extra:?}");
        }
    }

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn only_local_paths_are_redirect_targets() {
        for ok in ["/", "/book?service=a&starts_at=b", "/my"] {
            assert!(is_local_path(ok), "{ok}");
        }
        for bad in ["//evil.example", "https://evil.example", "/\\evil", "", "x"] {
            assert!(!is_local_path(bad), "{bad}");
        }
    }

    #[test]
    fn the_switcher_drops_the_language_in_the_address() {
        assert_eq!(without_lang("/?lang=ar"), "/");
        assert_eq!(
            without_lang("/?service=a&lang=en&home=1"),
            "/?service=a&home=1"
        );
        assert_eq!(without_lang("/my"), "/my");
    }

    #[test]
    fn csrf_comparison_needs_equal_values() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}

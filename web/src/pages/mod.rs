//! The server-rendered pages of the `kontakt` binary: the resident's booking
//! flow, sign-in, "My pages", managing a booking by its mail token, the
//! meeting page with the video call, the public legal map, and the staff,
//! scheduler and admin views.
//!
//! Pages are HTML built with maud's `html!` templates: one layout ([`page`]),
//! shared pieces as functions that return `Markup` (the navigation, the
//! language switcher, the sign-out forms, [`csrf_field`], [`time_picker`],
//! [`when`], [`bdi`]), and one escaper, maud's. Every string is translated
//! through rust-i18n (`page.` keys) as plain text that maud escapes where it
//! goes in; a translated sentence whose placeholders hold markup (a name in
//! `<bdi>`) is filled by [`tr_markup`], which escapes the text around them.
//! Nothing translated or typed goes in unescaped; the meeting page's strings
//! for its script are JSON escaped for the `<script>` they sit in. Pages work
//! without JavaScript, except the video meeting (`meeting.js`); the one small
//! script on every page only moves focus to a message after a form post. Cookie
//! sessions are the same JWTs the API issues; because a plain HTML form
//! cannot send the `x-csrf-token` header, page forms carry the session's CSRF
//! value in a hidden `csrf` field that the handlers here compare with the
//! claim.

mod chat;
mod chats;
mod console;
mod guest;
mod legal;
mod manage;
mod meeting;
pub mod precheck;
mod resident;
mod staff;

use std::collections::BTreeMap;

use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use booking::accounts::{Resident, Staff};
use booking::bookings::{self, FreeTime, SearchQuery};
use booking::{Basis, DateRange, Db, Language, MunicipalityCode, ServiceCode, SlotRange};
use jiff::civil::Date;
use jiff::{Timestamp, Zoned};
use maud::{html, Markup, DOCTYPE};
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
        .merge(guest::router())
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
                    match crate::auth::resident_of(&state.db, &claims).await? {
                        Some(resident) => Who::Resident {
                            resident,
                            csrf: claims.csrf,
                        },
                        None => Who::Anonymous,
                    }
                }
                SubjectKind::Staff => match crate::auth::staff_of(&state.db, &claims).await? {
                    Some(staff) => Who::Staff {
                        staff,
                        csrf: claims.csrf,
                    },
                    None => Who::Anonymous,
                },
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
        let (status, code) = err.parts();
        err.log_if_internal();
        let ctx = Ctx {
            locale: current_locale(),
            here: "/".into(),
            who: Who::Anonymous,
            session: None,
        };
        let body = html! {
            h1 id="page-title" { (tr("page.error.title")) }
            p role="alert" { (tr(&format!("error.{code}"))) }
            p { a href="/" { (tr("page.error.home")) } }
        };
        (status, page(&ctx, &tr("page.error.title"), body)).into_response()
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
pub fn page(ctx: &Ctx, title: &str, body: Markup) -> Html<String> {
    let locale = ctx.locale;
    let dir = if locale.is_rtl() { "rtl" } else { "ltr" };
    let html = html! {
        (DOCTYPE)
        html lang=(locale.code()) dir=(dir) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " – Kontakt" }
                link rel="stylesheet" href=(crate::assets::url("kontakt.css"));
                script src=(crate::assets::url("kontakt.js")) defer {}
            }
            body {
                a class="skip" href="#main" { (tr("page.skip")) }
                header class="site" {
                    div class="bar" {
                        a class="brand" href="/" { "Kontakt" }
                        nav aria-label=(tr("page.nav.label")) { ul { (nav(ctx)) } }
                        div class="account" { (account(ctx)) }
                    }
                    (language_switcher(ctx))
                }
                main id="main" tabindex="-1" { (body) }
                footer class="site" {
                    p { (tr("page.footer")) " " a href="/legal-map" { (tr("page.nav.legal_map")) } }
                }
            }
        }
    };
    Html(html.into_string())
}

/// The site's navigation: booking, "My pages" or the staff pages the
/// signed-in role may open, and the legal map.
fn nav(ctx: &Ctx) -> Markup {
    html! {
        (nav_link(ctx, "/", "page.nav.book"))
        @match &ctx.who {
            Who::Staff { staff, .. } => {
                (nav_link(ctx, "/staff", "page.nav.staff"))
                (nav_link(ctx, "/staff/console", "page.nav.console"))
                @if staff.may_see_load() {
                    (nav_link(ctx, "/scheduler", "page.nav.scheduler"))
                }
                @if staff.may_read_audit_log() {
                    (nav_link(ctx, "/admin/audit", "page.nav.audit"))
                }
            }
            _ => (nav_link(ctx, "/my", "page.nav.my")),
        }
        (nav_link(ctx, "/legal-map", "page.nav.legal_map"))
    }
}

fn nav_link(ctx: &Ctx, href: &str, key: &str) -> Markup {
    let path = ctx.here.split('?').next().unwrap_or("/");
    html! {
        li { a href=(href) aria-current=[(path == href).then_some("page")] { (tr(key)) } }
    }
}

/// Sign-in links for a visitor, or who is signed in and the sign-out button.
fn account(ctx: &Ctx) -> Markup {
    match &ctx.who {
        Who::Anonymous => html! {
            a href="/sign-in" { (tr("page.nav.sign_in")) }
            " "
            a href="/staff/login" { (tr("page.nav.staff_sign_in")) }
        },
        Who::Resident { resident, csrf } => sign_out_form(&resident.name, csrf),
        Who::Staff { staff, csrf } => sign_out_form(&staff.name, csrf),
    }
}

/// Links to this page in each language, the current one marked.
fn language_switcher(ctx: &Ctx) -> Markup {
    let back = enc(&without_lang(&ctx.here));
    html! {
        nav class="languages" aria-label=(tr("page.nav.languages")) {
            ul {
                @for l in Language::ALL {
                    li {
                        a href={ "/lang?to=" (l.code()) "&back=" (back) }
                            lang=(l.code()) hreflang=(l.code())
                            aria-current=[(l == ctx.locale).then_some("true")] { (language_name(l)) }
                    }
                }
            }
        }
    }
}

fn sign_out_form(name: &str, csrf: &str) -> Markup {
    html! {
        span class="who" { (tr_markup("page.nav.signed_in_as", &[("name", bdi(name))])) }
        " "
        form method="post" action="/sign-out" class="inline" {
            (csrf_field(csrf))
            button type="submit" class="link" { (tr("page.nav.sign_out")) }
        }
    }
}

/// The "sign out everywhere" button, for "My pages" and the staff page:
/// ends every session of the signed-in person, on every device.
pub fn sign_out_everywhere_form(csrf: &str) -> Markup {
    html! {
        form method="post" action="/sign-out-everywhere" class="sign-out-everywhere" {
            (csrf_field(csrf))
            p { (tr("page.sessions.everywhere_hint")) }
            button type="submit" { (tr("page.sessions.everywhere_button")) }
        }
    }
}

/// A hidden form field carrying the session's CSRF value.
pub fn csrf_field(csrf: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(csrf); }
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
    let token = crate::auth::cookie_value(headers, SESSION_COOKIE)?;
    keys.verify(&token)
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

/// Percent-encodes a path segment or query parameter value: `notify`'s
/// encoder, the one the mails' links use too.
pub use notify::percent_encode as enc;

/// A table in a region that scrolls sideways on a narrow screen and that a
/// keyboard can reach, named by its caption: one column heading per key of
/// `columns`, then `rows`.
pub fn data_table(
    class: Option<&str>,
    caption_id: &str,
    caption: Markup,
    columns: &[&str],
    rows: Markup,
) -> Markup {
    html! {
        div class="table-wrap" role="region" tabindex="0" aria-labelledby=(caption_id) {
            table class=[class] {
                caption id=(caption_id) { (caption) }
                thead {
                    tr {
                        @for key in columns {
                            th scope="col" { (tr(key)) }
                        }
                    }
                }
                tbody { (rows) }
            }
        }
    }
}

/// Translated strings by the names a script uses, from `(name, key)` pairs.
pub fn script_strings(strings: &[(&str, &str)]) -> serde_json::Value {
    serde_json::Value::Object(
        strings
            .iter()
            .map(|(name, key)| ((*name).to_owned(), serde_json::Value::String(tr(key))))
            .collect(),
    )
}

/// Fails unless every `(name, key)` of a page script's strings has a
/// translation in every language: a missing one would show the key itself.
#[cfg(test)]
pub(crate) fn assert_translated_everywhere(strings: &[(&str, &str)]) {
    for language in Language::ALL {
        for (name, key) in strings {
            let text = rust_i18n::t!(*key, locale = language.code());
            assert_ne!(text, *key, "{name} ({key}) in {}", language.code());
        }
    }
}

/// A `<script type="application/json">` element holding `value` for a page
/// script. JSON in a script element is not HTML, so maud's escaping would
/// corrupt it; instead every `<` is written `\u003c`, so that no text can
/// close the element or open a comment in it.
pub fn script_json(id: &str, value: &serde_json::Value) -> Markup {
    let text = value.to_string().replace('<', "\\u003c");
    html! { script type="application/json" id=(id) { (maud::PreEscaped(text)) } }
}

/// The translation of `key` in the request's language, as plain text for
/// maud to escape.
pub fn tr(key: &str) -> String {
    rust_i18n::t!(key, locale = current_locale().code()).into_owned()
}

/// The translation of `key` with its `%{name}` placeholders filled in by
/// `values`, as plain text.
pub fn tr_with(key: &str, values: &[(&str, &str)]) -> String {
    pieces(&tr(key), values)
        .into_iter()
        .map(|piece| match piece {
            Piece::Text(text) => text,
            Piece::Value(value) => *value,
        })
        .collect()
}

/// The translation of `key` with its `%{name}` placeholders filled in by
/// markup, such as a name in [`bdi`]: the translated text around them is
/// escaped as text, and each value goes in as the markup it is.
pub fn tr_markup(key: &str, values: &[(&str, Markup)]) -> Markup {
    fill(&tr(key), values)
}

/// `text` split at its `%{name}` placeholders, with the text between them
/// escaped and each placeholder replaced by its value in `values`.
fn fill(text: &str, values: &[(&str, Markup)]) -> Markup {
    html! {
        @for piece in pieces(text, values) {
            @match piece {
                Piece::Text(text) => (text),
                Piece::Value(value) => (value),
            }
        }
    }
}

/// A part of a translated text: text as written, or a placeholder's value.
enum Piece<'a, V> {
    Text(&'a str),
    Value(&'a V),
}

/// Splits `text` at the `%{name}` placeholders that `values` names. A
/// placeholder without a value stays as it was written, and a value is
/// never searched for placeholders itself.
fn pieces<'a, V>(text: &'a str, values: &'a [(&str, V)]) -> Vec<Piece<'a, V>> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find("%{") {
        let after = &rest[open + 2..];
        let Some(close) = after.find('}') else {
            break;
        };
        let name = &after[..close];
        match values.iter().find(|(n, _)| *n == name) {
            Some((_, value)) => {
                out.push(Piece::Text(&rest[..open]));
                out.push(Piece::Value(value));
            }
            None => out.push(Piece::Text(&rest[..open + 2 + close + 1])),
        }
        rest = &after[close + 1..];
    }
    out.push(Piece::Text(rest));
    out
}

/// A name of a person or a municipality, isolated in `<bdi>`: a Latin name
/// inside Arabic text (or an Arabic name inside Swedish) then keeps its own
/// direction, and "name، municipality" is not reordered. A stored name with
/// a direction override from before names were checked cannot reorder the
/// text around it either.
pub fn bdi(name: &str) -> Markup {
    html! { bdi { (name) } }
}

/// A name isolated with U+2068 FIRST STRONG ISOLATE and U+2069 POP
/// DIRECTIONAL ISOLATE, for the places `<bdi>` cannot go: attribute values
/// and `<option>` text.
pub fn isolate(name: &str) -> String {
    format!("\u{2068}{name}\u{2069}")
}

/// The name of a service in the request's language.
pub fn service_name(service: &ServiceCode) -> String {
    tr(&format!("service.{service}"))
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
    tr_with(
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
    tr_with(
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
    tr_with(
        "page.time.range",
        &[("from", &clock(range.start())), ("to", &clock(range.end()))],
    )
}

/// A meeting's date and time with the zone named in plain words, e.g.
/// "tisdag 3 december 2026 kl. 10:00–10:45 (svensk tid)", as a `<time>`
/// element.
pub fn when(range: &SlotRange) -> Markup {
    let start = local(range.start());
    let weekday = tr(&format!(
        "page.weekday.{}",
        start.weekday().to_monday_one_offset()
    ));
    let month = tr(&format!("page.month.{}", start.month()));
    let text = tr_with(
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
    html! { time datetime=(rfc3339(range.start())) { (text) } }
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
) -> Markup {
    if days.is_empty() {
        return html! { p { (tr("page.times.none")) } };
    }
    html! {
        form method="post" action=(action) class="picker" {
            @if let Some(csrf) = csrf { (csrf_field(csrf)) }
            @for (i, (date, times)) in days.iter().enumerate() {
                fieldset {
                    legend { (long_date(*date)) }
                    div class="choices" {
                        @for (j, free) in times.iter().enumerate() {
                            @let id = format!("t-{i}-{j}");
                            div class="choice" {
                                input type="radio" name="starts_at" id=(id)
                                    value=(rfc3339(free.range.start())) required;
                                label for=(id) { (clock_range(&free.range)) }
                            }
                        }
                    }
                }
            }
            p class="zone" { (zone_note()) }
            button type="submit" { (tr("page.times.move")) }
        }
    }
}

/// The sentence that names the zone times are shown in, in plain words.
pub fn zone_note() -> String {
    tr("page.times.zone")
}

/// The municipality's name for `code`, or the code if it is unknown.
pub async fn municipality_name(db: &Db, code: &MunicipalityCode) -> Result<String, PageError> {
    Ok(booking::catalog::municipality(db, code)
        .await?
        .map(|m| m.name)
        .unwrap_or_else(|| code.to_string()))
}

/// Which rule a booking relies on, in words, with the agreement it cites.
pub fn rule_text(rule: Basis, agreement_id: Option<&str>) -> String {
    match (rule, agreement_id) {
        (Basis::Agreement, Some(id)) => tr_with("page.rule.agreement_with_id", &[("id", id)]),
        (Basis::Agreement, None) => tr("page.rule.agreement"),
        (Basis::Home, _) => tr("page.rule.home"),
        (Basis::Open, _) => tr("page.rule.open"),
        (Basis::HomeOnly, _) => tr("page.rule.home_only"),
    }
}

/// A booking status in words.
pub fn status_text(status: booking::BookingStatus) -> String {
    tr(&format!("page.status.{}", status.as_str()))
}

pub use crate::api::non_empty;

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
    fn names_are_escaped_inside_bdi() {
        assert_eq!(
            bdi(r#"<a href="x">&</a>"#).into_string(),
            "<bdi>&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;</bdi>"
        );
    }

    #[test]
    fn placeholders_take_markup_and_the_text_around_them_is_escaped() {
        let filled = fill(
            "<b>%{name}</b> & %{missing} %{home}%{name}",
            &[("name", bdi("Ann")), ("home", html! { "1 < 2" })],
        );
        assert_eq!(
            filled.into_string(),
            "&lt;b&gt;<bdi>Ann</bdi>&lt;/b&gt; &amp; %{missing} 1 &lt; 2<bdi>Ann</bdi>"
        );
    }

    #[test]
    fn a_value_is_not_searched_for_placeholders() {
        let text: String = pieces("%{a}%{b}", &[("a", "%{b}"), ("b", "x")])
            .into_iter()
            .map(|p| match p {
                Piece::Text(t) => t,
                Piece::Value(v) => *v,
            })
            .collect();
        assert_eq!(text, "%{b}x");
    }

    #[test]
    fn an_unclosed_placeholder_stays_text() {
        assert_eq!(fill("50%{ off", &[]).into_string(), "50%{ off");
    }

    #[test]
    fn script_json_cannot_end_its_script_element() {
        let value = serde_json::json!({ "text": "</script><!-- <script>alert(1)</script>" });
        let html = script_json("data", &value).into_string();
        let inner = html
            .strip_prefix(r#"<script type="application/json" id="data">"#)
            .and_then(|rest| rest.strip_suffix("</script>"))
            .expect("one script element");
        assert!(!inner.contains('<'), "{html}");
        let parsed: serde_json::Value = serde_json::from_str(inner).unwrap();
        assert_eq!(parsed, value);
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

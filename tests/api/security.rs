//! Hardening checked by walking the route table: every operation of the
//! OpenAPI document the server serves, and the routes OpenAPI does not
//! describe (pages, assets, `/ws`, `/healthz`), kept by hand in [`OTHER_ROUTES`].
//!
//! Every route must send the hardening headers, answer a stranger without
//! ever failing (401 or 404 where a session is needed, a redirect to sign-in
//! for pages), and answer a date far in the future or a field far too long
//! with 4xx, not with 500.

use kontakt_tests::{spawn_apps, TestApp};
use reqwest::{Method, Response, StatusCode};
use serde_json::{json, Map, Value};

/// The far-off dates: `GET /api/search?from=9999-12-01&to=9999-12-31`
/// answered 500.
const FAR_FROM: &str = "9999-12-01";
const FAR_TO: &str = "9999-12-31";
const FAR_TIME: &str = "9999-12-30T10:00:00+01:00";

/// Longer than any field Kontakt takes, and still far below the body limit,
/// so that the field itself is what gets refused.
const OVERSIZED: usize = 10_000;

/// A plausible id in a path: well formed, and matching nothing.
const SOME_ID: &str = "00000000-0000-4000-8000-000000000000";

/// The routes that are not in the OpenAPI document: method, path, and
/// whether it is public (no session needed).
const OTHER_ROUTES: &[(&str, &str, bool)] = &[
    ("GET", "/", true),
    ("GET", "/book", false),
    ("POST", "/book", false),
    ("GET", "/sign-in", true),
    ("POST", "/sign-in", true),
    ("GET", "/auth/resident/callback?token=nothing", true),
    ("POST", "/sign-out", false),
    ("GET", "/my", false),
    ("POST", "/my/bookings/{id}/cancel", false),
    ("GET", "/my/bookings/{id}/reschedule", false),
    ("POST", "/my/bookings/{id}/reschedule", false),
    ("GET", "/my/chats/{room}", false),
    ("GET", "/b/{token}", true),
    ("POST", "/b/{token}/cancel", true),
    ("POST", "/b/{token}/reschedule", true),
    ("GET", "/join/{booking_id}", false),
    ("GET", "/chat/{service}", true),
    ("GET", "/meeting/adhoc/{id}", true),
    ("GET", "/legal-map", true),
    ("GET", "/lang?to=en&back=/legal-map", true),
    ("GET", "/staff/login", true),
    ("POST", "/staff/login", true),
    ("GET", "/staff", false),
    ("GET", "/staff/console", false),
    ("GET", "/scheduler", false),
    ("GET", "/admin/audit", false),
    ("GET", "/dev/mail", true),
    ("GET", "/dev/mail/{id}", true),
    // Each asset's address (`/assets/{stem}.{hash}.{ext}`) is checked by
    // `assets.rs`; a stale one answers 404 with the same headers.
    ("GET", "/assets/kontakt.0000000000.css", true),
    ("GET", "/ws", false),
    ("GET", "/healthz", true),
    ("GET", "/no-such-page", true),
    ("GET", "/api/no-such-thing", true),
    ("GET", "/metrics", true),
];

#[tokio::test]
async fn every_route_sends_the_hardening_headers_and_never_fails_a_stranger() {
    for app in spawn_apps().await {
        let client = no_redirects();
        let spec = openapi(&app).await;
        let mut checked = 0;
        for op in operations(&spec) {
            let path = fill(&op.path, &|_| SOME_ID.to_owned());
            let mut request = client.request(op.method.clone(), app.url(&path));
            if let Some(body) = op.example_body(&spec, &Values::default()) {
                request = request.json(&body);
            }
            let response = request.send().await.expect("sent");
            let what = format!("{}: {} {path}", app.backend, op.method);
            assert_hardened(&response, &what);
            let status = response.status();
            if op.secured {
                assert!(
                    matches!(status, StatusCode::UNAUTHORIZED | StatusCode::NOT_FOUND),
                    "{what}: a stranger got {status}"
                );
            } else {
                assert!(!status.is_server_error(), "{what}: {status}");
            }
            checked += 1;
        }
        assert!(checked >= 25, "the OpenAPI document lists every operation");
        for (method, template, public) in OTHER_ROUTES {
            let path = fill(template, &|_| SOME_ID.to_owned());
            let method: Method = method.parse().expect("a method");
            let response = client
                .request(method.clone(), app.url(&path))
                .header("content-type", "application/x-www-form-urlencoded")
                .body("")
                .send()
                .await
                .expect("sent");
            let what = format!("{}: {method} {path}", app.backend);
            assert_hardened(&response, &what);
            let status = response.status();
            assert!(!status.is_server_error(), "{what}: {status}");
            if !public {
                let refused = matches!(status, StatusCode::UNAUTHORIZED | StatusCode::NOT_FOUND)
                    || (status.is_redirection() && is_sign_in(&response))
                    // A form post refused before its session is asked
                    // for: an empty form, or no CSRF value.
                    || (method == Method::POST && status.is_client_error());
                assert!(refused, "{what}: a stranger got {status}");
            }
        }
    }
}

#[tokio::test]
async fn the_websocket_upgrade_carries_the_hardening_headers() {
    for app in spawn_apps().await {
        let anna = app.resident("anna@example.se").await;
        let token = app.resident_token(&anna).await;
        let ticket: Value = app
            .post("/api/ws/ticket", Some(&token), &json!({}))
            .await
            .json()
            .await
            .expect("json");
        let url = format!(
            "{}/ws?ticket={}",
            app.address.replacen("http://", "ws://", 1),
            ticket["ticket"].as_str().expect("a ticket")
        );
        let (_socket, response) = tokio_tungstenite::connect_async(url)
            .await
            .expect("the socket opens");
        assert_eq!(response.status(), 101);
        let headers = response.headers();
        for (name, expected) in [
            ("x-content-type-options", "nosniff"),
            ("referrer-policy", "no-referrer"),
            ("cache-control", "no-store"),
        ] {
            assert_eq!(headers[name], expected, "{}: {name}", app.backend);
        }
        assert!(headers.contains_key("content-security-policy"));
    }
}

#[tokio::test]
async fn every_date_far_off_and_every_field_far_too_long_gets_4xx() {
    for app in spawn_apps().await {
        let client = no_redirects();
        let spec = openapi(&app).await;
        let sessions = Sessions::new(&app).await;
        let mut dated = 0;
        for op in operations(&spec) {
            let token = sessions.bearer_for(&op.path);
            let values = Values {
                staff_id: sessions.admin_id.clone(),
                ..Values::default()
            };
            // Every date and time field of the operation far off at once,
            // as in the issue, then each on its own.
            let fields = op.fields(&spec);
            let dates: Vec<&String> = fields.iter().filter(|f| far_value(f).is_some()).collect();
            if !dates.is_empty() {
                dated += 1;
                let mut variants = vec![dates.clone()];
                variants.extend(dates.iter().map(|f| vec![*f]));
                for far in variants {
                    let values = Values {
                        far: far.iter().map(|f| f.to_string()).collect(),
                        ..values.clone()
                    };
                    let response = op.send(&client, &app, &spec, &values, token).await;
                    let status = response.status();
                    assert_eq!(
                        status,
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "{}: {} {} with {far:?} far off: {}",
                        app.backend,
                        op.method,
                        op.path,
                        response.text().await.unwrap_or_default()
                    );
                }
            }
            for field in op.text_fields(&spec).iter().chain(&op.path_params()) {
                let values = Values {
                    oversized: Some(field.clone()),
                    ..values.clone()
                };
                let response = op.send(&client, &app, &spec, &values, token).await;
                let status = response.status();
                // 401 would mean the session did not reach the field.
                let signed_in = !op.secured || status != StatusCode::UNAUTHORIZED;
                assert!(
                    status.is_client_error() && signed_in,
                    "{}: {} {} with {field} of {OVERSIZED} characters: {status} {}",
                    app.backend,
                    op.method,
                    op.path,
                    response.text().await.unwrap_or_default()
                );
            }
        }
        assert!(dated >= 5, "the walk found the operations that take dates");

        // The pages that take dates, signed in as someone who may see them.
        for path in [
            format!("/staff?date={FAR_TO}"),
            format!("/staff?date={FAR_FROM}"),
            format!("/scheduler?from={FAR_FROM}&to={FAR_TO}"),
            format!("/scheduler?from={FAR_TO}"),
        ] {
            let response = client
                .get(app.url(&path))
                .header("cookie", sessions.admin_cookie())
                .send()
                .await
                .expect("sent");
            assert_hardened(&response, &path);
            assert_eq!(response.status(), 422, "{}: {path}", app.backend);
        }
        let far_choice = format!(
            "/book?service=ekonomiskt-bistand&starts_at={}",
            FAR_TIME.replace('+', "%2B")
        );
        let response = client
            .get(app.url(&far_choice))
            .header("cookie", sessions.resident_cookie())
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 422, "{}: {far_choice}", app.backend);
    }
}

/// Asserts the headers every response must carry.
fn assert_hardened(response: &Response, what: &str) {
    let headers = response.headers();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("{what}: no {name}"))
            .to_owned()
    };
    let csp = header("content-security-policy");
    let directives: Vec<&str> = csp.split(';').map(str::trim).collect();
    let script = directives
        .iter()
        .find(|d| d.starts_with("script-src"))
        .unwrap_or_else(|| panic!("{what}: no script-src in {csp}"));
    assert!(
        !script.contains("unsafe-inline") && !script.contains("unsafe-eval"),
        "{what}: {csp}"
    );
    assert!(
        directives.contains(&"frame-ancestors 'none'"),
        "{what}: {csp}"
    );
    assert!(directives.contains(&"base-uri 'none'"), "{what}: {csp}");
    assert_eq!(header("x-content-type-options"), "nosniff", "{what}");
    assert_eq!(header("referrer-policy"), "no-referrer", "{what}");
    let cache = header("cache-control");
    if response.url().path().starts_with("/assets/") && response.status().is_success() {
        assert!(cache.starts_with("public"), "{what}: {cache}");
    } else {
        assert_eq!(cache, "no-store", "{what}");
    }
    // The test servers' public address is http.
    assert!(
        !headers.contains_key("strict-transport-security"),
        "{what}: HSTS over http"
    );
}

fn is_sign_in(response: &Response) -> bool {
    response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|l| l.starts_with("/sign-in") || l.starts_with("/staff/login"))
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a client")
}

async fn openapi(app: &TestApp) -> Value {
    let response = app.get("/api/openapi.json", None).await;
    assert_eq!(response.status(), 200);
    response.json().await.expect("the OpenAPI document")
}

/// One operation of the OpenAPI document.
struct Operation {
    method: Method,
    path: String,
    secured: bool,
    /// The names of its query parameters.
    query: Vec<String>,
    /// The name of its request body's schema, if it takes one.
    body: Option<String>,
}

fn operations(spec: &Value) -> Vec<Operation> {
    let mut out = Vec::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("a path item") {
            let Ok(method) = method.to_uppercase().parse::<Method>() else {
                continue;
            };
            let query = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "query")
                .map(|p| p["name"].as_str().expect("a name").to_owned())
                .collect();
            let body = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                .as_str()
                .map(|r| r.trim_start_matches("#/components/schemas/").to_owned());
            out.push(Operation {
                method,
                path: path.clone(),
                secured: op
                    .get("security")
                    .and_then(Value::as_array)
                    .is_some_and(|s| !s.is_empty()),
                query,
                body,
            });
        }
    }
    out
}

impl Operation {
    /// The names of the query parameters and body fields.
    fn fields(&self, spec: &Value) -> Vec<String> {
        let mut fields = self.query.clone();
        if let Some(schema) = &self.body {
            fields.extend(
                spec["components"]["schemas"][schema]["properties"]
                    .as_object()
                    .expect("a schema with properties")
                    .keys()
                    .cloned(),
            );
        }
        fields
    }

    /// The names of the query parameters and the body's text fields.
    fn text_fields(&self, spec: &Value) -> Vec<String> {
        let mut fields = self.query.clone();
        if let Some(schema) = &self.body {
            let properties = spec["components"]["schemas"][schema]["properties"]
                .as_object()
                .expect("a schema with properties");
            fields.extend(
                properties
                    .iter()
                    .filter(|(_, p)| is_kind(&p["type"], "string"))
                    .map(|(name, _)| name.clone()),
            );
        }
        fields
    }

    fn path_params(&self) -> Vec<String> {
        self.path
            .split('{')
            .skip(1)
            .filter_map(|rest| rest.split_once('}'))
            .map(|(name, _)| name.to_owned())
            .collect()
    }

    fn example_body(&self, spec: &Value, values: &Values) -> Option<Value> {
        let schema = &spec["components"]["schemas"][self.body.as_ref()?];
        let mut body = Map::new();
        for (name, property) in schema["properties"].as_object()? {
            let value = if is_kind(&property["type"], "integer") {
                json!(1)
            } else if is_kind(&property["type"], "boolean") {
                json!(false)
            } else {
                json!(values.get(name))
            };
            body.insert(name.clone(), value);
        }
        Some(Value::Object(body))
    }

    async fn send(
        &self,
        client: &reqwest::Client,
        app: &TestApp,
        spec: &Value,
        values: &Values,
        token: &str,
    ) -> Response {
        let path = fill(&self.path, &|name| values.get(name));
        let query: Vec<(String, String)> = self
            .query
            .iter()
            .map(|name| (name.clone(), values.get(name)))
            .collect();
        let mut request = client
            .request(self.method.clone(), app.url(&path))
            .query(&query)
            .bearer_auth(token);
        if let Some(body) = self.example_body(spec, values) {
            request = request.json(&body);
        }
        request.send().await.expect("sent")
    }
}

/// The value a request gives each field: plausible, except the ones the
/// test makes far off or oversized.
#[derive(Clone, Default)]
struct Values {
    staff_id: String,
    far: Vec<String>,
    oversized: Option<String>,
}

impl Values {
    fn get(&self, name: &str) -> String {
        if self.oversized.as_deref() == Some(name) {
            return "x".repeat(OVERSIZED);
        }
        if self.far.iter().any(|f| f == name) {
            return far_value(name).expect("a date field").to_owned();
        }
        let tz = booking::bookings::zone(booking::bookings::DISPLAY_ZONE).expect("zone");
        let today = jiff::Timestamp::now().to_zoned(tz).date();
        let day = |n: i64| {
            today
                .checked_add(jiff::Span::new().days(n))
                .expect("a date")
                .to_string()
        };
        match name {
            "service" => "ekonomiskt-bistand".into(),
            "home" | "home_municipality" => "2418".into(),
            "language" | "lang" => "sv".into(),
            "from" | "valid_from" => day(1),
            "to" => day(8),
            "valid_to" => day(30),
            "date" => day(0),
            "starts_at" => format!("{}T10:00:00+01:00", day(1)),
            "start" => "09:00".into(),
            "end" => "10:00".into(),
            "email" | "resident_email" => "anna@example.se".into(),
            "password" => "not-the-password".into(),
            "name" => "Anna".into(),
            "staff_id" if !self.staff_id.is_empty() => self.staff_id.clone(),
            "room" => format!("chat:{SOME_ID}"),
            _ => SOME_ID.into(),
        }
    }
}

/// Whether an OpenAPI `type` is `kind`: `"string"`, say, or
/// `["string", "null"]` for an optional one.
fn is_kind(types: &Value, kind: &str) -> bool {
    match types {
        Value::String(k) => k == kind,
        Value::Array(kinds) => kinds.iter().any(|k| k == kind),
        _ => false,
    }
}

/// The far-off value of a date or time field, `None` for other fields.
fn far_value(name: &str) -> Option<&'static str> {
    match name {
        "from" | "valid_from" => Some(FAR_FROM),
        "to" | "valid_to" | "date" => Some(FAR_TO),
        "starts_at" => Some(FAR_TIME),
        _ => None,
    }
}

/// `template` with each `{name}` replaced by `value(name)`.
fn fill(template: &str, value: &dyn Fn(&str) -> String) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').expect("a closing brace") + open;
        out.push_str(&value(&rest[open + 1..close]));
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

/// Sessions for the walk: a resident and an admin, who may use every staff
/// route.
struct Sessions {
    resident: String,
    admin: String,
    admin_id: String,
}

impl Sessions {
    async fn new(app: &TestApp) -> Sessions {
        let anna = app.resident("anna@example.se").await;
        let admin = app.staff_token("admin.lycksele@kontakt.demo").await;
        let me: Value = app
            .get("/api/staff/me", Some(&admin))
            .await
            .json()
            .await
            .expect("json");
        Sessions {
            resident: app.resident_token(&anna).await,
            admin_id: me["id"].as_str().expect("an id").to_owned(),
            admin,
        }
    }

    /// The Bearer token that reaches the checks of `path`.
    fn bearer_for(&self, path: &str) -> &str {
        let staff = ["/api/staff", "/api/scheduler", "/api/admin"];
        // Guest links are made by the meeting's staff only.
        let staff_only = path.starts_with("/api/meetings/") && path.ends_with("/guests");
        if staff_only || staff.iter().any(|p| path.starts_with(p)) {
            &self.admin
        } else {
            &self.resident
        }
    }

    fn admin_cookie(&self) -> String {
        format!("{}={}", web::auth::SESSION_COOKIE, self.admin)
    }

    fn resident_cookie(&self) -> String {
        format!("{}={}", web::auth::SESSION_COOKIE, self.resident)
    }
}

#[tokio::test]
async fn an_https_public_address_adds_strict_transport_security() {
    let mut databases = vec![(booking::testing::TestDb::sqlite().await, "sqlite")];
    if let Some(pg) = booking::testing::TestDb::postgres().await {
        databases.push((pg, "postgres"));
    }
    for (database, backend) in databases {
        let app = kontakt_tests::spawn_app_with(database, backend, |s| {
            s.public_url = "https://kontakt.example.se".into();
        })
        .await;
        for path in ["/", "/api/services", "/no-such-page"] {
            let response = app.get(path, None).await;
            assert_eq!(
                response.headers()["strict-transport-security"],
                "max-age=31536000",
                "{backend}: {path}"
            );
        }
    }
}

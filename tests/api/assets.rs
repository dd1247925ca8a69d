//! The static assets under content-hashed addresses: every stylesheet and
//! script a page links, and every module those scripts import, answers 200
//! with a year's immutable caching and its content type; an address with a
//! stale hash, or without one, answers 404.

use std::collections::BTreeSet;

use kontakt_tests::{spawn_apps, TestApp};
use serde_json::json;

/// The `/assets/...` addresses in `text` after `href="`, `src="` or an
/// import's `from "`.
fn asset_urls(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for opener in ["href=\"", "src=\"", "from \"", "import \""] {
        let mut rest = text;
        while let Some(at) = rest.find(opener) {
            rest = &rest[at + opener.len()..];
            let end = rest.find('"').unwrap_or(rest.len());
            let url = &rest[..end];
            if url.starts_with("/assets/") {
                found.insert(url.to_owned());
            }
        }
    }
    found
}

async fn page_as(app: &TestApp, token: Option<&str>, path: &str) -> String {
    let mut request = reqwest::Client::new().get(app.url(path));
    if let Some(token) = token {
        request = request.header("cookie", format!("{}={token}", web::auth::SESSION_COOKIE));
    }
    let response = request.send().await.expect("sent");
    assert_eq!(response.status(), 200, "{}: {path}", app.backend);
    response.text().await.expect("a body")
}

#[tokio::test]
async fn every_asset_a_page_links_is_served_immutable_under_its_hash() {
    for app in spawn_apps().await {
        // A booked meeting, so that the meeting page and its modules count.
        let anna = app.resident("anna@example.se").await;
        let token = app.resident_token(&anna).await;
        let times = app.free_times("ekonomiskt-bistand", "2418", 14).await;
        let booked = app
            .post(
                "/api/bookings",
                Some(&token),
                &json!({"service": "ekonomiskt-bistand", "starts_at": times[0]["starts_at"]}),
            )
            .await;
        assert_eq!(booked.status(), 201, "{}", app.backend);
        let booked: serde_json::Value = booked.json().await.expect("json");
        let join = format!("/join/{}", booked["booking"]["id"].as_str().expect("id"));

        let mut pending = BTreeSet::new();
        for path in ["/", "/sign-in", "/legal-map", "/staff/login"] {
            pending.extend(asset_urls(&page_as(&app, None, path).await));
        }
        for path in ["/my", join.as_str()] {
            pending.extend(asset_urls(&page_as(&app, Some(&token), path).await));
        }
        assert!(
            pending.contains(web::assets::url("kontakt.css"))
                && pending.contains(web::assets::url("meeting.js")),
            "{pending:?}"
        );

        // Each asset, and each module it imports in turn.
        let mut checked = BTreeSet::new();
        while let Some(url) = pending.pop_first() {
            if !checked.insert(url.clone()) {
                continue;
            }
            let response = app.get(&url, None).await;
            let what = format!("{}: {url}", app.backend);
            assert_eq!(response.status(), 200, "{what}");
            let header = |name: &str| response.headers()[name].to_str().expect("ascii").to_owned();
            assert_eq!(
                header("cache-control"),
                "public, max-age=31536000, immutable",
                "{what}"
            );
            let content_type = header("content-type");
            if url.ends_with(".js") {
                assert!(content_type.starts_with("text/javascript"), "{what}");
            } else if url.ends_with(".css") {
                assert!(content_type.starts_with("text/css"), "{what}");
            }
            let body = response.text().await.expect("a body");
            assert!(
                !body.contains("from \"./"),
                "{what} keeps a relative import"
            );
            pending.extend(asset_urls(&body));
        }
        for module in ["protocol.js", "chat.js", "call.js"] {
            assert!(
                checked.contains(web::assets::url(module)),
                "{}: meeting.js imports {module}: {checked:?}",
                app.backend
            );
        }

        // The old unhashed addresses, and a stale hash, are gone.
        let current = web::assets::url("meeting.js");
        let stale = format!("/assets/meeting.{}.js", "0".repeat(10));
        assert_ne!(current, stale);
        for gone in ["/assets/meeting.js", "/assets/kontakt.css", stale.as_str()] {
            let response = app.get(gone, None).await;
            assert_eq!(response.status(), 404, "{}: {gone}", app.backend);
            assert_eq!(response.headers()["cache-control"], "no-store");
        }
    }
}

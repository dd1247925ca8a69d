//! Staff may book and read only what the cross-border policy lets their
//! municipality handle, per rule kind.

use kontakt_tests::{spawn_apps, TestApp};
use serde_json::{json, Value};

/// A free time of `staff_email`'s own for `service`, for a resident of `home`
/// of the staff member's municipality, so that only the policy decides.
async fn own_time(app: &TestApp, service: &str, municipality: &str) -> String {
    let times = app.free_times(service, municipality, 14).await;
    times[0]["starts_at"]
        .as_str()
        .expect("a free time")
        .to_owned()
}

async fn staff_books(
    app: &TestApp,
    staff_email: &str,
    resident: &str,
    service: &str,
    at: &str,
) -> u16 {
    let token = app.staff_token(staff_email).await;
    app.post(
        "/api/staff/bookings",
        Some(&token),
        &json!({"resident_email": resident, "service": service, "starts_at": at}),
    )
    .await
    .status()
    .as_u16()
}

/// A refusal by the policy must not tell staff that the address belongs to
/// a registered resident: it answers exactly as an unknown address, and
/// both are audited as denied.
#[tokio::test]
async fn a_refused_resident_answers_exactly_as_an_unknown_address() {
    for app in spawn_apps().await {
        let staff = "handlaggare.helsingborg@kontakt.demo";
        let token = app.staff_token(staff).await;
        let at = own_time(&app, "ekonomiskt-bistand", "1283").await;
        let mut answers = Vec::new();
        for resident in ["anna@example.se", "nobody-at-all@example.se"] {
            let response = app
                .post(
                    "/api/staff/bookings",
                    Some(&token),
                    &json!({"resident_email": resident, "service": "ekonomiskt-bistand", "starts_at": at}),
                )
                .await;
            let status = response.status().as_u16();
            answers.push((status, response.text().await.unwrap()));
        }
        assert_eq!(answers[0].0, 404, "refused ({})", app.backend);
        assert_eq!(
            answers[0], answers[1],
            "refused and unknown answer alike ({})",
            app.backend
        );
        let audit = booking::audit::recent(&app.db, None, 100).await.unwrap();
        let denied: Vec<_> = audit
            .iter()
            .filter(|r| r.action == "booking.create" && r.outcome == "denied")
            .collect();
        assert_eq!(denied.len(), 2, "both audited: {denied:?}");
        let anna = app.resident("anna@example.se").await;
        assert!(denied
            .iter()
            .any(|r| r.resident_id.as_ref() == Some(&anna.id)));
    }
}

#[tokio::test]
async fn staff_booking_follows_each_rule_kind() {
    for app in spawn_apps().await {
        app.new_resident("norsjo@example.se", "2417").await;
        // (staff, resident, service, expected status, why)
        let cases = [
            (
                "handlaggare.helsingborg@kontakt.demo",
                "anna@example.se",
                "stod-till-anhoriga",
                201,
                "open: any municipality",
            ),
            (
                "handlaggare.lycksele@kontakt.demo",
                "anna@example.se",
                "ekonomiskt-bistand",
                201,
                "agreement Lycksele–Malå in force",
            ),
            (
                "handlaggare.helsingborg@kontakt.demo",
                "anna@example.se",
                "ekonomiskt-bistand",
                404,
                "agreement rule, no agreement",
            ),
            (
                "handlaggare1.lycksele@kontakt.demo",
                "norsjo@example.se",
                "ekonomiskt-bistand",
                404,
                "agreement Lycksele–Norsjö has expired",
            ),
            (
                "handlaggare1.lycksele@kontakt.demo",
                "anna@example.se",
                "barn-och-familj",
                404,
                "home_only, another municipality",
            ),
            (
                "handlaggare.mala@kontakt.demo",
                "anna@example.se",
                "barn-och-familj",
                201,
                "home_only, the home municipality",
            ),
        ];
        for (staff, resident, service, expected, why) in cases {
            let municipality = match staff {
                s if s.contains("helsingborg") => "1283",
                s if s.contains("lycksele") => "2481",
                _ => "2418",
            };
            let at = own_time(&app, service, municipality).await;
            let status = staff_books(&app, staff, resident, service, &at).await;
            assert_eq!(status, expected, "{why} ({})", app.backend);
        }
        let anna = app.resident("anna@example.se").await;
        let audit = booking::audit::recent(&app.db, Some(&anna.id), 100)
            .await
            .unwrap();
        assert!(
            audit
                .iter()
                .any(|r| r.action == "booking.create" && r.outcome == "denied"),
            "refusals are audited"
        );
        assert!(
            audit
                .iter()
                .any(|r| r.agreement_id.as_deref() == Some("avtal-lycksele-mala")),
            "the agreement relied on is recorded"
        );
    }
}

#[tokio::test]
async fn staff_read_a_booking_only_where_the_policy_lets_them() {
    for app in spawn_apps().await {
        let anna = app.resident("anna@example.se").await;
        let times = app.free_times("ekonomiskt-bistand", "2418", 14).await;
        let booked: Value = app
            .post(
                "/api/bookings",
                Some(&app.resident_token(&anna).await),
                &json!({"service": "ekonomiskt-bistand", "starts_at": times[0]["starts_at"]}),
            )
            .await
            .json()
            .await
            .unwrap();
        let path = format!(
            "/api/staff/bookings/{}",
            booked["booking"]["id"].as_str().unwrap()
        );
        // Malå (home) and Lycksele (agreement) may read it; Helsingborg may not.
        for (email, expected) in [
            ("handlaggare.mala@kontakt.demo", 200),
            ("handlaggare1.lycksele@kontakt.demo", 200),
            ("handlaggare.helsingborg@kontakt.demo", 404),
            ("handlaggare.storuman@kontakt.demo", 404),
        ] {
            let token = app.staff_token(email).await;
            assert_eq!(
                app.get(&path, Some(&token)).await.status(),
                expected,
                "{email} ({})",
                app.backend
            );
        }
        let audit = booking::audit::recent(&app.db, Some(&anna.id), 100)
            .await
            .unwrap();
        let reads: Vec<_> = audit
            .iter()
            .filter(|r| r.action == "booking.read")
            .collect();
        assert_eq!(
            reads.iter().filter(|r| r.outcome == "allowed").count(),
            2,
            "{reads:?}"
        );
        assert_eq!(reads.iter().filter(|r| r.outcome == "denied").count(), 2);
        assert!(reads
            .iter()
            .all(|r| r.on_behalf_of.as_deref() == Some("2418")));
    }
}

#[tokio::test]
async fn search_offers_only_what_the_policy_allows() {
    for app in spawn_apps().await {
        // Helsingborg residents of a home_only meeting see one staff member per
        // time (their own); of an open meeting, staff everywhere.
        let home_only = app.free_times("barn-och-familj", "1283", 14).await;
        assert!(home_only.iter().all(|t| t["free_staff"] == 1));
        let open = app.free_times("stod-till-anhoriga", "1283", 14).await;
        assert!(
            open.iter().any(|t| t["free_staff"].as_u64().unwrap() > 5),
            "open meetings draw on every municipality"
        );
        let unknown = app
            .get(
                "/api/search?service=ekonomiskt-bistand&home=9999&from=2030-01-01&to=2030-01-02",
                None,
            )
            .await;
        assert_eq!(unknown.status(), 404);
    }
}

use booking::outbox::Message;
use kontakt_tests::{spawn_apps, TestApp};
use serde_json::{json, Value};

async fn book(app: &TestApp, token: &str, service: &str, starts_at: &str) -> reqwest::Response {
    app.post(
        "/api/bookings",
        Some(token),
        &json!({"service": service, "starts_at": starts_at}),
    )
    .await
}

/// Books the first free time of `service` for a resident of `home`, within
/// two weeks, and returns the answer's body.
async fn book_first(app: &TestApp, token: &str, service: &str, home: &str) -> Value {
    let times = app.free_times(service, home, 14).await;
    let starts_at = times[0]["starts_at"].as_str().expect("a free time");
    let booked = book(app, token, service, starts_at).await;
    assert_eq!(booked.status(), 201, "{}", app.backend);
    booked.json().await.expect("json")
}

#[tokio::test]
async fn a_resident_books_reschedules_and_cancels() {
    for app in spawn_apps().await {
        let anna = app.resident("anna@example.se").await;
        let token = app.resident_token(&anna).await;
        let times = app.free_times("ekonomiskt-bistand", "2418", 14).await;
        assert!(times.len() > 2, "{}: the demo offers times", app.backend);
        let first = times[0]["starts_at"].as_str().unwrap();
        let booked = book(&app, &token, "ekonomiskt-bistand", first).await;
        assert_eq!(booked.status(), 201, "{}", app.backend);
        let booked: Value = booked.json().await.unwrap();
        let id = booked["booking"]["id"].as_str().unwrap().to_owned();
        assert_eq!(booked["booking"]["starts_at"], first);
        assert!(
            booked["booking"].get("staff_id").is_none(),
            "a resident sees a time, not a person"
        );
        // Malå is served by its own staff or by Lycksele under the agreement.
        let by = booked["booking"]["performed_by"].as_str().unwrap();
        match by {
            "2418" => assert_eq!(booked["booking"]["rule"], "home"),
            "2481" => assert_eq!(booked["booking"]["agreement_id"], "avtal-lycksele-mala"),
            other => panic!("performed by {other}, which the policy does not allow"),
        }
        assert!(matches!(
            app.last_message("anna@example.se", "booking_confirmed")
                .await,
            Some(Message::BookingConfirmed { .. })
        ));

        let mine: Vec<Value> = app
            .get("/api/bookings", Some(&token))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(mine.len(), 1);

        let later = times[2]["starts_at"].as_str().unwrap();
        let moved = app
            .post(
                &format!("/api/bookings/{id}/reschedule"),
                Some(&token),
                &json!({"starts_at": later}),
            )
            .await;
        assert_eq!(moved.status(), 200);
        let moved: Value = moved.json().await.unwrap();
        assert_eq!(moved["starts_at"], later);
        assert_eq!(moved["id"], id.as_str(), "a move keeps the booking");

        let cancelled = app
            .post(
                &format!("/api/bookings/{id}/cancel"),
                Some(&token),
                &json!({}),
            )
            .await;
        assert_eq!(cancelled.status(), 200);
        let again = app
            .post(
                &format!("/api/bookings/{id}/reschedule"),
                Some(&token),
                &json!({"starts_at": first}),
            )
            .await;
        assert_eq!(
            again.status(),
            409,
            "a cancelled booking cannot be rescheduled"
        );
        let twice = app
            .post(
                &format!("/api/bookings/{id}/cancel"),
                Some(&token),
                &json!({}),
            )
            .await;
        assert_eq!(twice.status(), 409);
    }
}

#[tokio::test]
async fn the_mailed_token_manages_the_booking_across_a_reschedule_and_is_spent_by_cancelling() {
    for app in spawn_apps().await {
        let erik = app.resident("erik@example.se").await;
        let token = app.resident_token(&erik).await;
        let times = app.free_times("stod-till-anhoriga", "1283", 14).await;
        let booked: Value = book(
            &app,
            &token,
            "stod-till-anhoriga",
            times[0]["starts_at"].as_str().unwrap(),
        )
        .await
        .json()
        .await
        .unwrap();
        let manage = booked["manage_token"].as_str().unwrap().to_owned();
        let seen: Value = app
            .get(&format!("/api/manage/{manage}"), None)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(seen["id"], booked["booking"]["id"]);
        let later = times[3]["starts_at"].as_str().unwrap();
        let moved = app
            .post(
                &format!("/api/manage/{manage}/reschedule"),
                None,
                &json!({"starts_at": later}),
            )
            .await;
        assert_eq!(moved.status(), 200, "{}", app.backend);
        assert!(matches!(
            app.last_message("erik@example.se", "booking_rescheduled")
                .await,
            Some(Message::BookingRescheduled { sequence: 1, .. })
        ));
        let cancel = app
            .post(&format!("/api/manage/{manage}/cancel"), None, &json!({}))
            .await;
        assert_eq!(cancel.status(), 200, "the token still works after the move");
        assert!(matches!(
            app.last_message("erik@example.se", "booking_cancelled")
                .await,
            Some(Message::BookingCancelled { sequence: 2, .. })
        ));
        // Cancelling spent the token: it is now as unknown as a made-up one.
        let spent = app
            .post(&format!("/api/manage/{manage}/cancel"), None, &json!({}))
            .await;
        assert_eq!(spent.status(), 404);
        let reschedule = app
            .post(
                &format!("/api/manage/{manage}/reschedule"),
                None,
                &json!({"starts_at": later}),
            )
            .await;
        assert_eq!(reschedule.status(), 404);
        let read = app.get(&format!("/api/manage/{manage}"), None).await;
        assert_eq!(read.status(), 404);
        let unknown = app.get("/api/manage/not-a-token", None).await;
        assert_eq!(unknown.status(), 404);
        assert_eq!(peek_body(read).await, peek_body(unknown).await);
    }
}

#[tokio::test]
async fn another_residents_booking_is_not_found_and_the_attempt_is_audited() {
    for app in spawn_apps().await {
        let anna = app.resident("anna@example.se").await;
        let erik = app.resident("erik@example.se").await;
        let booked = book_first(
            &app,
            &app.resident_token(&anna).await,
            "stod-till-anhoriga",
            "2418",
        )
        .await;
        let id = booked["booking"]["id"].as_str().unwrap();
        let erik_token = app.resident_token(&erik).await;
        let peek = app
            .get(&format!("/api/bookings/{id}"), Some(&erik_token))
            .await;
        assert_eq!(peek.status(), 404);
        let missing = app
            .get("/api/bookings/no-such-booking", Some(&erik_token))
            .await;
        assert_eq!(missing.status(), 404);
        assert_eq!(
            peek_body(peek).await,
            peek_body(missing).await,
            "indistinguishable from a missing booking"
        );
        let cancel = app
            .post(
                &format!("/api/bookings/{id}/cancel"),
                Some(&erik_token),
                &json!({}),
            )
            .await;
        assert_eq!(cancel.status(), 404);
        let audit = booking::audit::recent(&app.db, Some(&anna.id), 50)
            .await
            .unwrap();
        let denied = audit
            .iter()
            .filter(|r| r.actor == format!("resident:{}", erik.id) && r.outcome == "denied")
            .count();
        assert_eq!(denied, 2, "{audit:?}");
        let still: Value = app
            .get(
                &format!("/api/bookings/{id}"),
                Some(&app.resident_token(&anna).await),
            )
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(still["status"], "booked", "nothing was lost");
    }
}

#[tokio::test]
async fn a_residents_own_reads_and_a_manage_token_read_are_audited() {
    for app in spawn_apps().await {
        let anna = app.resident("anna@example.se").await;
        let token = app.resident_token(&anna).await;
        let booked = book_first(&app, &token, "stod-till-anhoriga", "2418").await;
        let id = booked["booking"]["id"].as_str().unwrap();
        let manage = booked["manage_token"].as_str().unwrap();
        for path in ["/api/bookings".to_owned(), format!("/api/bookings/{id}")] {
            let read = app.get(&path, Some(&token)).await;
            assert_eq!(read.status(), 200, "{path} on {}", app.backend);
        }
        let my_pages = reqwest::Client::new()
            .get(app.url("/my"))
            .header("cookie", format!("{}={token}", web::auth::SESSION_COOKIE))
            .send()
            .await
            .expect("sent");
        assert_eq!(my_pages.status(), 200, "{}", app.backend);
        let by_token = app.get(&format!("/api/manage/{manage}"), None).await;
        assert_eq!(by_token.status(), 200);
        let page = app.get(&format!("/b/{manage}"), None).await;
        assert_eq!(page.status(), 200);

        let audit = booking::audit::recent(&app.db, Some(&anna.id), 50)
            .await
            .unwrap();
        let count = |actor: &str, action: &str, subject: &str| {
            audit
                .iter()
                .filter(|r| {
                    r.actor == actor
                        && r.action == action
                        && r.subject == subject
                        && r.outcome == "allowed"
                })
                .count()
        };
        let resident = format!("resident:{}", anna.id);
        assert_eq!(
            count(&resident, "booking.list", &resident),
            2,
            "the API list and My pages: {audit:?}"
        );
        assert_eq!(
            count(&resident, "booking.read", &format!("booking:{id}")),
            1,
            "{audit:?}"
        );
        assert_eq!(
            count("anonymous", "booking.read", &format!("booking:{id}")),
            2,
            "the manage API and page: {audit:?}"
        );
        let listed = audit
            .iter()
            .find(|r| r.action == "booking.list")
            .expect("a list entry");
        assert_eq!(listed.resident_id.as_ref(), Some(&anna.id));
        assert_eq!(listed.on_behalf_of.as_deref(), Some("2418"));
    }
}

async fn peek_body(r: reqwest::Response) -> Value {
    r.json().await.unwrap()
}

/// A path segment that is no id at all (a space, say, or too long) names
/// no booking: it is answered exactly as a booking that does not exist.
#[tokio::test]
async fn a_booking_id_that_is_no_id_is_not_found_like_a_missing_one() {
    for app in spawn_apps().await {
        let erik = app.resident("erik@example.se").await;
        let token = app.resident_token(&erik).await;
        let missing = app.get("/api/bookings/no-such-booking", Some(&token)).await;
        assert_eq!(missing.status(), 404, "{}", app.backend);
        let missing = peek_body(missing).await;
        let too_long = "b".repeat(200);
        for id in ["no%20id", too_long.as_str()] {
            let read = app.get(&format!("/api/bookings/{id}"), Some(&token)).await;
            assert_eq!(read.status(), 404, "{}: {id}", app.backend);
            assert_eq!(peek_body(read).await, missing, "{}: {id}", app.backend);
            let cancel = app
                .post(
                    &format!("/api/bookings/{id}/cancel"),
                    Some(&token),
                    &json!({}),
                )
                .await;
            assert_eq!(cancel.status(), 404, "{}: {id}", app.backend);
        }
    }
}

#[tokio::test]
async fn the_last_free_staff_member_at_a_time_goes_to_one_resident() {
    for app in spawn_apps().await {
        // Barn och familj meetings are home_only: Helsingborg residents are
        // served by Helsingborg's one staff member for that service.
        let times = app.free_times("barn-och-familj", "1283", 14).await;
        let at = times[0]["starts_at"].as_str().unwrap();
        assert_eq!(times[0]["free_staff"], 1);
        let first = app.new_resident("first@example.se", "1283").await;
        let second = app.new_resident("second@example.se", "1283").await;
        assert_eq!(
            book(
                &app,
                &app.resident_token(&first).await,
                "barn-och-familj",
                at
            )
            .await
            .status(),
            201
        );
        let late = book(
            &app,
            &app.resident_token(&second).await,
            "barn-och-familj",
            at,
        )
        .await;
        assert_eq!(late.status(), 409, "{}", app.backend);
        let body: Value = late.json().await.unwrap();
        assert_eq!(body["error"], "conflict");
        let after = app.free_times("barn-och-familj", "1283", 14).await;
        assert!(
            after.iter().all(|t| t["starts_at"] != at),
            "the time is gone from search"
        );
    }
}

#[tokio::test]
async fn booking_picks_the_least_loaded_staff_member() {
    for app in spawn_apps().await {
        // Sorsele residents: Sorsele's own staff, or Storuman's under the
        // agreement. Two bookings at the same time go to different staff, the
        // first to the home municipality when loads tie.
        let times = app.free_times("ekonomiskt-bistand", "2422", 14).await;
        let slot = times
            .iter()
            .find(|t| t["free_staff"] == 2)
            .expect("a time two staff share");
        let at = slot["starts_at"].as_str().unwrap();
        let a = app.new_resident("a@example.se", "2422").await;
        let b = app.new_resident("b@example.se", "2422").await;
        let first: Value = book(
            &app,
            &app.resident_token(&a).await,
            "ekonomiskt-bistand",
            at,
        )
        .await
        .json()
        .await
        .unwrap();
        assert_eq!(first["booking"]["performed_by"], "2422", "ties go home");
        let second: Value = book(
            &app,
            &app.resident_token(&b).await,
            "ekonomiskt-bistand",
            at,
        )
        .await
        .json()
        .await
        .unwrap();
        assert_eq!(second["booking"]["performed_by"], "2421");
        assert_eq!(second["booking"]["agreement_id"], "avtal-storuman-sorsele");
    }
}

#[tokio::test]
async fn staff_see_their_day_and_schedulers_see_load() {
    for app in spawn_apps().await {
        let leila = app.resident("leila@example.se").await;
        let times = app.free_times("barn-och-familj", "2481", 14).await;
        let at = times[0]["starts_at"].as_str().unwrap().to_owned();
        let booked: Value = book(
            &app,
            &app.resident_token(&leila).await,
            "barn-och-familj",
            &at,
        )
        .await
        .json()
        .await
        .unwrap();
        let id = booked["booking"]["id"].as_str().unwrap().to_owned();
        let date = &at[..10];
        let mut found = false;
        for email in [
            "handlaggare.lycksele@kontakt.demo",
            "handlaggare1.lycksele@kontakt.demo",
        ] {
            let token = app.staff_token(email).await;
            let day: Vec<Value> = app
                .get(&format!("/api/staff/day?date={date}"), Some(&token))
                .await
                .json()
                .await
                .unwrap();
            if let Some(entry) = day.iter().find(|e| e["booking"]["id"] == id.as_str()) {
                assert_eq!(entry["resident"]["name"], "Leila Haddad");
                found = true;
            }
        }
        assert!(found, "the assigned staff member sees the meeting");
        let audit = booking::audit::recent(&app.db, Some(&leila.id), 50)
            .await
            .unwrap();
        assert!(audit.iter().any(|r| r.action == "booking.read"
            && r.actor.starts_with("staff:")
            && r.outcome == "allowed"));

        let staff = app.staff_token("handlaggare.lycksele@kontakt.demo").await;
        let today = &at[..10];
        let load_path = format!("/api/scheduler/load?from={today}&to={today}");
        assert_eq!(app.get(&load_path, Some(&staff)).await.status(), 403);
        let scheduler = app.staff_token("planerare.lycksele@kontakt.demo").await;
        let load: Vec<Value> = app
            .get(&load_path, Some(&scheduler))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(load.len(), 9);
        let lycksele = load.iter().find(|l| l["municipality"] == "2481").unwrap();
        assert_eq!(lycksele["bookings"], 1);
        assert!(lycksele["published_minutes"].as_i64().unwrap() > 0);
        assert_eq!(
            app.get("/api/admin/audit", Some(&scheduler)).await.status(),
            403
        );
        let admin = app.staff_token("admin.lycksele@kontakt.demo").await;
        let entries: Vec<Value> = app
            .get("/api/admin/audit", Some(&admin))
            .await
            .json()
            .await
            .unwrap();
        assert!(!entries.is_empty());
    }
}

#[tokio::test]
async fn schedulers_publish_availability_for_their_own_municipality() {
    for app in spawn_apps().await {
        let scheduler = app.staff_token("planerare.lycksele@kontakt.demo").await;
        let staff = app.staff_token("handlaggare.lycksele@kontakt.demo").await;
        let me: Value = app
            .get("/api/staff/me", Some(&staff))
            .await
            .json()
            .await
            .unwrap();
        let id = me["id"].as_str().unwrap();
        let path = format!("/api/staff/{id}/templates");
        let template = json!({"weekday": 6, "start": "10:00", "end": "12:00", "valid_from": "2030-01-01", "valid_to": "2030-12-31"});
        assert_eq!(
            app.post(&path, Some(&staff), &template).await.status(),
            403,
            "staff cannot publish"
        );
        let created = app.post(&path, Some(&scheduler), &template).await;
        assert_eq!(created.status(), 201);
        let created: Value = created.json().await.unwrap();
        assert_eq!(
            app.post(&path, Some(&scheduler), &template).await.status(),
            409,
            "overlap"
        );
        let list: Vec<Value> = app.get(&path, Some(&staff)).await.json().await.unwrap();
        assert!(list.iter().any(|t| t["id"] == created["id"]));
        let helsingborg = app
            .staff_token("handlaggare.helsingborg@kontakt.demo")
            .await;
        let other: Value = app
            .get("/api/staff/me", Some(&helsingborg))
            .await
            .json()
            .await
            .unwrap();
        let foreign = format!("/api/staff/{}/templates", other["id"].as_str().unwrap());
        assert_eq!(
            app.post(&foreign, Some(&scheduler), &template)
                .await
                .status(),
            403,
            "another municipality"
        );
        let bad = json!({"weekday": 8, "start": "10:00", "end": "09:00", "valid_from": "2030-01-01", "valid_to": "2030-12-31"});
        assert_eq!(app.post(&path, Some(&scheduler), &bad).await.status(), 422);
        let delete = app
            .client
            .delete(app.url(&format!("{path}/{}", created["id"].as_str().unwrap())))
            .bearer_auth(&scheduler)
            .send()
            .await
            .unwrap();
        assert_eq!(delete.status(), 204);
    }
}

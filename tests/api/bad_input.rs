use kontakt_tests::spawn_apps;
use serde_json::{json, Value};

#[tokio::test]
async fn malformed_unknown_and_oversized_bodies_get_clear_errors() {
    for app in spawn_apps().await {
        let anna = app.resident("anna@example.se").await;
        let token = app.resident_token(&anna).await;
        let send = |body: String, content_type: &'static str| {
            let req = app
                .client
                .post(app.url("/api/bookings"))
                .bearer_auth(&token)
                .header("content-type", content_type)
                .body(body);
            async move { req.send().await.unwrap() }
        };
        let broken = send("{\"service\": ".into(), "application/json").await;
        assert_eq!(broken.status(), 400);
        let body: Value = broken.json().await.unwrap();
        assert_eq!(body["error"], "bad_json");
        assert!(body["detail"].as_str().unwrap().contains("EOF"), "{body}");

        let unknown = send(json!({"service": "stod-till-anhoriga", "starts_at": "2030-01-01T10:00:00+01:00", "staff_id": "x"}).to_string(), "application/json").await;
        assert_eq!(unknown.status(), 422);
        let body: Value = unknown.json().await.unwrap();
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("unknown field `staff_id`"),
            "{body}"
        );

        let wrong_time = send(
            json!({"service": "stod-till-anhoriga", "starts_at": "tomorrow"}).to_string(),
            "application/json",
        )
        .await;
        assert_eq!(wrong_time.status(), 422);

        let not_json = send("service=x".into(), "application/x-www-form-urlencoded").await;
        assert_eq!(not_json.status(), 400);

        let huge = send(
            format!("{{\"service\": \"{}\"}}", "a".repeat(200_000)),
            "application/json",
        )
        .await;
        assert_eq!(huge.status(), 413);

        let bad_query = app
            .get(
                "/api/search?service=ekonomiskt-bistand&home=24&from=x&to=y",
                None,
            )
            .await;
        assert_eq!(bad_query.status(), 422);
        let too_long = app
            .get(
                "/api/search?service=ekonomiskt-bistand&home=2418&from=2030-01-01&to=2030-12-31",
                None,
            )
            .await;
        assert_eq!(too_long.status(), 422);

        let mine: Vec<Value> = app
            .get("/api/bookings", Some(&token))
            .await
            .json()
            .await
            .unwrap();
        assert!(mine.is_empty(), "nothing half-made was stored");
    }
}

#[tokio::test]
async fn far_off_dates_are_refused_as_invalid_not_failed_on() {
    for app in spawn_apps().await {
        let admin = app.staff_token("admin.lycksele@kontakt.demo").await;
        let search = "/api/search?service=ekonomiskt-bistand&home=2418";
        for (path, token) in [
            (format!("{search}&from=9999-12-01&to=9999-12-31"), None),
            (format!("{search}&from=9999-12-31&to=9999-12-31"), None),
            (format!("{search}&from=1999-12-31&to=2000-01-02"), None),
            ("/api/staff/day?date=9999-12-31".to_owned(), Some(&admin)),
            (
                "/api/scheduler/load?from=9999-12-01&to=9999-12-31".to_owned(),
                Some(&admin),
            ),
        ] {
            let response = app.get(&path, token.map(String::as_str)).await;
            assert_eq!(response.status(), 422, "{}: {path}", app.backend);
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"], "invalid", "{body}");
            assert!(
                body["detail"].as_str().unwrap().contains("2199-12-31"),
                "the answer says which dates are accepted: {body}"
            );
        }
        for path in [
            "/staff?date=9999-12-31",
            "/scheduler?from=9999-12-01&to=9999-12-31",
        ] {
            let response = reqwest::Client::new()
                .get(app.url(path))
                .header("cookie", format!("{}={admin}", web::auth::SESSION_COOKIE))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 422, "{}: {path}", app.backend);
        }
        // A booking for a time at the end of the calendar, too.
        let anna = app.resident("anna@example.se").await;
        let far = app
            .post(
                "/api/bookings",
                Some(&app.resident_token(&anna).await),
                &json!({"service": "ekonomiskt-bistand", "starts_at": "9999-12-31T10:00:00+01:00"}),
            )
            .await;
        assert_eq!(far.status(), 422, "{}", app.backend);
    }
}

#[tokio::test]
async fn a_field_far_too_long_is_refused_whatever_the_field() {
    for app in spawn_apps().await {
        let long = "x".repeat(web::api::MAX_FIELD_BYTES + 1);
        let search = app
            .get(
                &format!("/api/search?service=ekonomiskt-bistand&home=2418&from=2030-01-01&to=2030-01-02&lang={long}"),
                None,
            )
            .await;
        assert_eq!(search.status(), 422, "{}", app.backend);
        let body: Value = search.json().await.unwrap();
        assert!(
            body["detail"].as_str().unwrap().starts_with("lang:"),
            "{body}"
        );
        let link = app
            .post(
                "/api/auth/resident/link",
                None,
                &json!({"email": "new@example.se", "name": long, "home_municipality": "2418"}),
            )
            .await;
        assert_eq!(link.status(), 422, "{}", app.backend);
        assert!(
            app.last_message("new@example.se", "sign_in_link")
                .await
                .is_none(),
            "nothing was sent"
        );
    }
}

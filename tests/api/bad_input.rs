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

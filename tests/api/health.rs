use booking::testing::TestDb;
use kontakt_tests::{spawn_app_with, spawn_apps};
use web::config::MetricsListen;

#[tokio::test]
async fn health_metrics_and_openapi_are_served() {
    for app in spawn_apps().await {
        assert_eq!(
            app.get("/healthz", None).await.status(),
            200,
            "{}",
            app.backend
        );
        let services = app.get("/api/services", None).await;
        assert_eq!(services.status(), 200);
        let metrics_addr = app.metrics_addr.expect("metrics are served");
        assert!(metrics_addr.ip().is_loopback(), "{metrics_addr}");
        let metrics = app
            .client
            .get(format!("http://{metrics_addr}/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(metrics.status(), 200);
        let metrics = metrics.text().await.unwrap();
        assert!(metrics.contains("kontakt_http_requests_total"), "{metrics}");
        let spec: serde_json::Value = app
            .get("/api/openapi.json", None)
            .await
            .json()
            .await
            .unwrap();
        for path in [
            "/api/search",
            "/api/bookings",
            "/api/manage/{token}/reschedule",
            "/api/staff/day",
            "/api/scheduler/load",
            "/api/policy",
        ] {
            assert!(spec["paths"].get(path).is_some(), "OpenAPI lacks {path}");
        }
    }
}

#[tokio::test]
async fn services_and_errors_speak_the_callers_language() {
    for app in spawn_apps().await {
        let names = |lang: &'static str| {
            let client = app.client.clone();
            let url = app.url("/api/services");
            async move {
                let list: Vec<serde_json::Value> = client
                    .get(url)
                    .header("accept-language", lang)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                list.iter()
                    .map(|s| s["name"].as_str().unwrap().to_owned())
                    .collect::<Vec<_>>()
            }
        };
        assert!(names("sv").await.contains(&"Stöd till anhöriga".to_owned()));
        assert!(names("en")
            .await
            .contains(&"Support for relatives".to_owned()));
        assert!(names("ar")
            .await
            .contains(&"دعم الأقارب ومقدّمي الرعاية".to_owned()));
        let missing: serde_json::Value = app
            .get("/api/nothing-here?lang=fi", None)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(missing["error"], "not_found");
        assert!(
            missing["message"].as_str().unwrap().starts_with("Täällä"),
            "{missing}"
        );
    }
}

#[tokio::test]
async fn metrics_are_not_served_on_the_public_port() {
    for app in spawn_apps().await {
        let public = app.get("/metrics", None).await;
        assert_eq!(public.status(), 404, "{}", app.backend);
        let body = public.text().await.unwrap();
        assert!(!body.contains("kontakt_http_requests_total"), "{body}");
    }
}

#[tokio::test]
async fn metrics_can_be_turned_off() {
    let app = spawn_app_with(TestDb::sqlite().await, "sqlite", |s| {
        s.metrics_listen = MetricsListen::Off;
    })
    .await;
    assert_eq!(app.metrics_addr, None);
    assert_eq!(app.get("/healthz", None).await.status(), 200);
    assert_eq!(app.get("/metrics", None).await.status(), 404);
}

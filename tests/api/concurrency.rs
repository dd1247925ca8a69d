//! 200 concurrent booking requests at 20 slots: exactly 20 bookings, no
//! overlaps, and 409 for everyone else, on both databases.

use futures::future::join_all;
use kontakt_tests::spawn_apps;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_requests_race_for_twenty_slots() {
    for app in spawn_apps().await {
        // Barn och familj meetings are home_only, and Helsingborg has one staff
        // member for them: each time is exactly one slot.
        let times = app.free_times("barn-och-familj", "1283", 14).await;
        assert!(times.len() >= 20, "the demo has at least 20 slots");
        let slots: Vec<String> = times
            .iter()
            .take(20)
            .map(|t| t["starts_at"].as_str().unwrap().to_owned())
            .collect();
        let mut tokens = Vec::new();
        for i in 0..200 {
            let resident = app
                .new_resident(&format!("racer{i}@example.se"), "1283")
                .await;
            tokens.push(app.resident_token(&resident).await);
        }
        let requests = tokens.iter().enumerate().map(|(i, token)| {
            let body = json!({"service": "barn-och-familj", "starts_at": slots[i % 20]});
            app.client
                .post(app.url("/api/bookings"))
                .bearer_auth(token)
                .json(&body)
                .send()
        });
        let responses = join_all(requests).await;
        let mut created = 0;
        let mut conflicts = 0;
        for r in responses {
            match r.expect("a response").status().as_u16() {
                201 => created += 1,
                409 => conflicts += 1,
                other => panic!("unexpected status {other} on {}", app.backend),
            }
        }
        assert_eq!((created, conflicts), (20, 180), "{}", app.backend);

        let load_check = booking::bookings::active_ranges(&app.db).await.unwrap();
        assert_eq!(load_check.len(), 20);
        for (i, (staff_a, a)) in load_check.iter().enumerate() {
            for (staff_b, b) in &load_check[i + 1..] {
                assert!(
                    staff_a != staff_b || !a.overlaps(b),
                    "overlap on {}: {a:?} {b:?}",
                    app.backend
                );
            }
        }
    }
}

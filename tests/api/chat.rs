//! Chat pre-assessment over the real server, from both sides: which
//! services offer chat, the "I don't know" chat, anonymous chat, the
//! offline form, canned replies, closing with an outcome, transfer, offered
//! times, escalation to video and the queue's rules per municipality, each
//! with the bad input it must refuse without losing anything.

use booking::RoomId;
use kontakt_tests::{spawn_apps, TestApp};
use serde_json::{json, Value};

use crate::ws::Client;

/// The social workers (role `staff`) of `municipality`, in id order.
async fn social_workers(app: &TestApp, municipality: &str) -> Vec<booking::accounts::Staff> {
    let mut staff: Vec<_> = booking::accounts::all_staff(&app.db)
        .await
        .expect("staff")
        .into_iter()
        .filter(|s| s.municipality.as_str() == municipality && s.role == booking::Role::Staff)
        .collect();
    staff.sort_by(|a, b| a.id.cmp(&b.id));
    assert!(!staff.is_empty(), "the demo has staff in {municipality}");
    staff
}

/// A console of `staff` that takes up to `max_chats` chats.
async fn console_of(app: &TestApp, staff: &booking::accounts::Staff, max_chats: u32) -> Client {
    let mut client = Client::open(app, &app.staff_token(staff.email.as_str()).await).await;
    client
        .send(json!({"type": "staff.availability", "available": true, "max_chats": max_chats}))
        .await;
    client
}

/// A console of the first social worker of `municipality`.
async fn console(app: &TestApp, municipality: &str) -> Client {
    let staff = social_workers(app, municipality).await.remove(0);
    console_of(app, &staff, 2).await
}

/// A signed-in resident's socket.
async fn resident(app: &TestApp, email: &str) -> Client {
    let resident = app.resident(email).await;
    Client::open(app, &app.resident_token(&resident).await).await
}

/// Opens a chat for `service` and returns its room.
async fn open_chat(client: &mut Client, service: &str) -> String {
    client
        .send(json!({"type": "queue.open", "service": service}))
        .await;
    client.until("joined").await["room"]
        .as_str()
        .expect("a room")
        .to_owned()
}

fn codes(list: &[Value]) -> Vec<&str> {
    list.iter()
        .map(|s| s["code"].as_str().expect("a code"))
        .collect()
}

#[tokio::test]
async fn chat_is_offered_where_the_service_and_the_policy_allow_it() {
    for app in spawn_apps().await {
        let services: Vec<Value> = app.get("/api/services", None).await.json().await.unwrap();
        assert_eq!(services.len(), 5, "{}: bookable services only", app.backend);
        let chat = |code: &str| {
            services.iter().find(|s| s["code"] == code).expect("listed")["chat"]
                .as_bool()
                .expect("a chat flag")
        };
        assert!(chat("ekonomiskt-bistand"));
        assert!(!chat("barn-och-familj"), "its pre-assessment is a meeting");
        assert!(
            !codes(&services).contains(&"general"),
            "general books nothing"
        );

        let offered = app.get("/api/chats/services?home=2418&lang=en", None).await;
        assert_eq!(offered.status(), 200, "{}", app.backend);
        let offered: Vec<Value> = offered.json().await.unwrap();
        assert_eq!(
            codes(&offered),
            [
                "ekonomiskt-bistand",
                "missbruk-beroende",
                "stod-till-anhoriga",
                "vald-i-nara-relationer",
                "general"
            ],
            "{}",
            app.backend
        );
        let general = offered.last().unwrap();
        assert_eq!(general["name"], "I don't know which help I need");
        assert_eq!(general["anonymous_chat"], false);
        assert_eq!(offered[1]["anonymous_chat"], true);

        let unknown = app.get("/api/chats/services?home=9999", None).await;
        assert_eq!(unknown.status(), 404, "{}", app.backend);
        let malformed = app.get("/api/chats/services?home=malå", None).await;
        assert_eq!(malformed.status(), 422, "{}", app.backend);
    }
}

#[tokio::test]
async fn the_i_dont_know_chat_reaches_every_social_worker_of_the_home_municipality_only() {
    for app in spawn_apps().await {
        // Helsingborg's second social worker handles two services only, and
        // still takes "I don't know" chats of Helsingborg's residents.
        let helsingborg = social_workers(&app, "1283").await;
        let narrow = helsingborg
            .iter()
            .find(|s| s.services.len() == 2)
            .expect("a social worker of two services");
        let mut own = console_of(&app, narrow, 2).await;
        let mut elsewhere = console(&app, "2481").await;
        let mut erik = resident(&app, "erik@example.se").await;

        let room = open_chat(&mut erik, "general").await;
        let entry = own.until("queue.entry").await;
        assert_eq!(entry["entry"]["room"], room.as_str(), "{}", app.backend);
        assert_eq!(entry["entry"]["service"], "general");
        let seen = elsewhere.frames_until_pong().await;
        assert!(
            !seen.iter().any(|f| f["type"] == "queue.entry"),
            "{}: Lycksele may not pre-assess for Helsingborg: {seen:?}",
            app.backend
        );
        erik.settle().await;
        let stored = booking::events::queue_entry(&app.db, &RoomId::parse(&room).unwrap())
            .await
            .expect("query")
            .expect("stored");
        assert_eq!(stored.eligible_municipalities, "1283", "{}", app.backend);

        own.claim(&room).await;
        erik.until_event(&room, "assigned").await;
    }
}

#[tokio::test]
async fn a_chat_for_a_service_without_chat_is_refused_and_nothing_is_queued() {
    for app in spawn_apps().await {
        let mut staff = console(&app, "2418").await;
        let mut anna = resident(&app, "anna@example.se").await;
        anna.send(json!({"type": "queue.open", "service": "barn-och-familj"}))
            .await;
        let error = anna.until("error").await;
        assert_eq!(error["code"], "not_eligible", "{}: {error}", app.backend);
        anna.send(json!({"type": "queue.open", "service": "no-such-service"}))
            .await;
        let error = anna.until("error").await;
        assert_eq!(error["code"], "not_found", "{}: {error}", app.backend);
        let seen = staff.frames_until_pong().await;
        assert!(
            !seen.iter().any(|f| f["type"] == "queue.entry"),
            "{}: {seen:?}",
            app.backend
        );
        let open = booking::events::open_queue_entries(&app.db)
            .await
            .expect("query");
        assert!(open.is_empty(), "{}: {open:?}", app.backend);
        // The refusals cost the socket nothing: a real chat opens on it.
        open_chat(&mut anna, "ekonomiskt-bistand").await;
    }
}

/// `POST /api/chats/anonymous` for `service` and `municipality`.
async fn anonymous_token(app: &TestApp, service: &str, municipality: &str) -> reqwest::Response {
    app.post(
        "/api/chats/anonymous",
        None,
        &json!({"service": service, "municipality": municipality}),
    )
    .await
}

/// Sends `frame` and returns the `error` it is answered with.
async fn refused(client: &mut Client, frame: Value) -> Value {
    client.send(frame).await;
    client.until("error").await
}

#[tokio::test]
async fn an_anonymous_chat_is_one_chat_for_one_service_that_allows_it() {
    for app in spawn_apps().await {
        for (service, municipality, status) in [
            ("ekonomiskt-bistand", "2418", 404),
            ("barn-och-familj", "2418", 404),
            ("general", "2418", 404),
            ("no-such-service", "2418", 404),
            ("stod-till-anhoriga", "9999", 404),
            ("stod-till-anhoriga", "Malå", 422),
        ] {
            let answer = anonymous_token(&app, service, municipality).await;
            assert_eq!(
                answer.status(),
                status,
                "{}: {service} in {municipality}",
                app.backend
            );
        }
        let issued = anonymous_token(&app, "stod-till-anhoriga", "2418").await;
        assert_eq!(issued.status(), 201, "{}", app.backend);
        let issued: Value = issued.json().await.unwrap();
        let token = issued["token"].as_str().expect("a token").to_owned();
        assert!(issued["expires_at"].as_str().is_some(), "{issued}");
        // The token is no sign-in.
        let mine = app.get("/api/bookings", Some(&token)).await;
        assert_eq!(mine.status(), 401, "{}", app.backend);

        // Supporting relatives may be pre-assessed by any municipality.
        let mut staff = console(&app, "2481").await;
        let mut anonymous = Client::open(&app, &token).await;
        assert!(
            anonymous.party.starts_with("anonymous:chat:"),
            "{}",
            anonymous.party
        );
        let error = refused(
            &mut anonymous,
            json!({"type": "queue.open", "service": "missbruk-beroende"}),
        )
        .await;
        assert_eq!(error["code"], "forbidden", "{}: {error}", app.backend);
        let room = open_chat(&mut anonymous, "stod-till-anhoriga").await;
        assert_eq!(anonymous.party, format!("anonymous:{room}"));
        let entry = staff.until("queue.entry").await;
        assert_eq!(entry["entry"]["room"], room.as_str(), "{}", app.backend);
        assert_eq!(entry["entry"]["anonymous"], true);
        assert_eq!(entry["entry"]["home_municipality"], "2418");
        let error = refused(
            &mut anonymous,
            json!({"type": "queue.open", "service": "stod-till-anhoriga"}),
        )
        .await;
        assert_eq!(error["code"], "invalid_state", "{}: {error}", app.backend);

        // Someone else's chat is not this token's to see.
        let mut anna = resident(&app, "anna@example.se").await;
        let annas = open_chat(&mut anna, "ekonomiskt-bistand").await;
        for frame in [
            json!({"type": "join", "room": annas}),
            json!({"type": "resume", "room": annas, "last_seq": 0}),
        ] {
            let error = refused(&mut anonymous, frame).await;
            assert_eq!(error["code"], "not_found", "{}: {error}", app.backend);
        }

        staff.claim(&room).await;
        anonymous
            .send(json!({"type": "chat.send", "room": room, "client_id": "a1", "text": "Min mamma behöver hjälp"}))
            .await;
        anonymous.until("chat.stored").await;
        staff.until_event(&room, "chat").await;

        // Video: the anonymous resident enters the ad-hoc room directly.
        staff
            .send(json!({"type": "chat.escalate_video", "room": room}))
            .await;
        let opened = anonymous.until_event(&room, "video_opened").await;
        let meeting = opened["event"]["meeting_room"]
            .as_str()
            .expect("a room")
            .to_owned();
        anonymous
            .send(json!({"type": "join", "room": meeting}))
            .await;
        let joined = anonymous.until("joined").await;
        assert_eq!(joined["state"], "admitted", "{}: {joined}", app.backend);
        let turn = anonymous.until("turn.credentials").await;
        assert_eq!(turn["room"], meeting.as_str());

        anonymous
            .send(json!({"type": "chat.close", "room": room}))
            .await;
        anonymous.until_event(&room, "ended").await;
        anonymous.settle().await;
        // The token still gets tickets, but its one chat does not open again.
        let mut again = Client::open(&app, &token).await;
        let error = refused(
            &mut again,
            json!({"type": "queue.open", "service": "stod-till-anhoriga"}),
        )
        .await;
        assert_eq!(error["code"], "invalid_state", "{}: {error}", app.backend);
        let stored = booking::events::queue_entry(&app.db, &RoomId::parse(&room).unwrap())
            .await
            .expect("query")
            .expect("stored");
        assert!(stored.anonymous);
        assert_eq!(stored.state, "closed");
        assert_eq!(stored.resident, anonymous.party);
    }
}

#[tokio::test]
async fn staff_escalate_a_chat_and_both_enter_the_ad_hoc_room_with_turn_credentials() {
    for app in spawn_apps().await {
        let lycksele = social_workers(&app, "2481").await;
        let mut staff = console_of(&app, &lycksele[0], 2).await;
        let mut colleague = console_of(&app, &lycksele[1], 2).await;
        let mut anna = resident(&app, "anna@example.se").await;
        let room = open_chat(&mut anna, "ekonomiskt-bistand").await;
        staff.claim(&room).await;
        staff
            .send(json!({"type": "chat.escalate_video", "room": room}))
            .await;
        let opened = anna.until_event(&room, "video_opened").await;
        let meeting = opened["event"]["meeting_room"]
            .as_str()
            .expect("a room")
            .to_owned();
        assert!(meeting.starts_with("adhoc:"), "{opened}");
        let seen = staff.until_event(&room, "video_opened").await;
        assert_eq!(seen["event"]["meeting_room"], meeting.as_str());

        for client in [&mut anna, &mut staff] {
            client.send(json!({"type": "join", "room": meeting})).await;
            let joined = client.until("joined").await;
            assert_eq!(
                joined["state"], "admitted",
                "{}: no waiting room: {joined}",
                app.backend
            );
            let turn = client.until("turn.credentials").await;
            assert!(
                !turn["credentials"]["urls"]
                    .as_array()
                    .expect("urls")
                    .is_empty(),
                "{turn}"
            );
        }
        // A colleague who did not take the chat does not enter its meeting.
        let error = refused(&mut colleague, json!({"type": "join", "room": meeting})).await;
        assert_eq!(error["code"], "not_found", "{}: {error}", app.backend);
        // And a room that does not exist is answered the same.
        let error = refused(
            &mut anna,
            json!({"type": "join", "room": "adhoc:no-such-room"}),
        )
        .await;
        assert_eq!(error["code"], "not_found", "{}: {error}", app.backend);
    }
}

/// Posts `body` to `path` from a client with no cookies: someone who never
/// signed in (the app's own client keeps the staff sign-ins' cookies).
async fn post_signed_out(app: &TestApp, path: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(app.url(path))
        .json(body)
        .send()
        .await
        .expect("sent")
}

/// `GET /api/staff/offline-messages` as `staff`.
async fn offline_list(app: &TestApp, staff: &booking::accounts::Staff) -> Vec<Value> {
    let token = app.staff_token(staff.email.as_str()).await;
    let response = app.get("/api/staff/offline-messages", Some(&token)).await;
    assert_eq!(response.status(), 200, "{}", app.backend);
    response.json().await.expect("json")
}

/// `POST /api/staff/offline-messages/{id}/handled` as `staff`.
async fn mark_handled(app: &TestApp, staff: &booking::accounts::Staff, id: &str) -> u16 {
    let token = app.staff_token(staff.email.as_str()).await;
    app.post(
        &format!("/api/staff/offline-messages/{id}/handled"),
        Some(&token),
        &json!({}),
    )
    .await
    .status()
    .as_u16()
}

#[tokio::test]
async fn the_offline_form_reaches_the_eligible_staff_and_confirms_without_naming_anything() {
    for app in spawn_apps().await {
        let sent = post_signed_out(
            &app,
            "/api/chats/offline",
            &json!({
                "service": "ekonomiskt-bistand",
                "municipality": "2418",
                "message": "Jag behöver hjälp med hyran <snart>",
                "name": "Sam Sändare",
                "contact_email": "sam@example.se",
                "contact_phone": ""
            }),
        )
        .await;
        assert_eq!(sent.status(), 202, "{}", app.backend);
        let id = sent.json::<Value>().await.unwrap()["id"]
            .as_str()
            .expect("an id")
            .to_owned();

        // Malå's residents are pre-assessed by Malå and, under their
        // agreement, Lycksele; Helsingborg sees nothing.
        let lycksele = social_workers(&app, "2481").await.remove(0);
        let listed = offline_list(&app, &lycksele).await;
        assert_eq!(listed.len(), 1, "{}: {listed:?}", app.backend);
        let message = &listed[0];
        assert_eq!(message["id"], id.as_str());
        assert_eq!(message["service"], "ekonomiskt-bistand");
        assert_eq!(message["municipality"], "2418");
        assert_eq!(message["message"], "Jag behöver hjälp med hyran <snart>");
        assert_eq!(message["name"], "Sam Sändare");
        assert_eq!(message["contact_email"], "sam@example.se");
        assert_eq!(message["contact_phone"], Value::Null);
        assert_eq!(message["handled_at"], Value::Null);
        let mala = social_workers(&app, "2418").await.remove(0);
        assert_eq!(offline_list(&app, &mala).await.len(), 1);
        let helsingborg = social_workers(&app, "1283").await.remove(0);
        assert!(offline_list(&app, &helsingborg).await.is_empty());

        // Handled by someone who may see it; anyone else is told it is not there.
        assert_eq!(mark_handled(&app, &helsingborg, &id).await, 404);
        assert_eq!(mark_handled(&app, &lycksele, "no-such-message").await, 404);
        assert_eq!(mark_handled(&app, &lycksele, &id).await, 204);
        let listed = offline_list(&app, &mala).await;
        assert!(listed[0]["handled_at"].is_string(), "{listed:?}");

        let audit = booking::audit::recent(&app.db, None, 200)
            .await
            .expect("audit");
        let count = |actor: &str, action: &str, outcome: &str| {
            audit
                .iter()
                .filter(|r| r.actor == actor && r.action == action && r.outcome == outcome)
                .count()
        };
        let lycksele_actor = format!("staff:{}", lycksele.id);
        assert_eq!(count(&lycksele_actor, "offline_message.read", "allowed"), 1);
        assert_eq!(
            count(&lycksele_actor, "offline_message.handle", "allowed"),
            1
        );
        let helsingborg_actor = format!("staff:{}", helsingborg.id);
        assert_eq!(
            count(&helsingborg_actor, "offline_message.read", "allowed"),
            0
        );
        assert_eq!(
            count(&helsingborg_actor, "offline_message.handle", "denied"),
            1
        );

        // The confirmation names neither the service nor the message.
        let mail = app
            .dev_mail_to("sam@example.se", std::time::Duration::from_secs(10))
            .await;
        for secret in [
            "hyran",
            "bistånd",
            "Ekonomiskt",
            "ekonomiskt-bistand",
            "Malå",
            "Lycksele",
        ] {
            assert!(
                !mail.contains(secret),
                "{}: {secret} in\n{mail}",
                app.backend
            );
        }

        // A signed-in resident needs no municipality, and gets the mail at
        // their own address when they leave only a telephone number.
        let anna = app.resident("anna@example.se").await;
        let token = app.resident_token(&anna).await;
        let sent = app
            .post(
                "/api/chats/offline",
                Some(&token),
                &json!({
                    "service": "general",
                    "message": "Ring mig gärna.",
                    "contact_phone": "070-123 45 67"
                }),
            )
            .await;
        assert_eq!(sent.status(), 202, "{}", app.backend);
        assert!(
            app.last_message("anna@example.se", "offline_message_received")
                .await
                .is_some(),
            "{}",
            app.backend
        );
        // "I don't know" stays with the home municipality.
        let general: Vec<Value> = offline_list(&app, &mala)
            .await
            .into_iter()
            .filter(|m| m["service"] == "general")
            .collect();
        assert_eq!(general.len(), 1, "{}", app.backend);
        assert_eq!(general[0]["contact_phone"], "070-123 45 67");
        assert!(offline_list(&app, &lycksele)
            .await
            .iter()
            .all(|m| m["service"] != "general"));
    }
}

#[tokio::test]
async fn the_offline_form_refuses_bad_input_and_keeps_nothing_of_it() {
    for app in spawn_apps().await {
        let form = |changes: Value| {
            let mut body = json!({
                "service": "stod-till-anhoriga",
                "municipality": "2418",
                "message": "Hej",
                "contact_email": "sam@example.se"
            });
            for (key, value) in changes.as_object().unwrap() {
                if value.is_null() {
                    body.as_object_mut().unwrap().remove(key);
                } else {
                    body[key] = value.clone();
                }
            }
            body
        };
        let longest = "ä".repeat(2000);
        for (changes, status) in [
            (json!({"contact_email": null}), 422),
            (json!({"contact_email": "  "}), 422),
            (json!({"contact_email": "not an address"}), 422),
            (
                json!({"contact_email": null, "contact_phone": "call me"}),
                422,
            ),
            (json!({"message": ""}), 422),
            (json!({"message": " \n "}), 422),
            (json!({"message": format!("{longest}a")}), 422),
            (json!({"message": "x".repeat(9000)}), 422),
            (json!({"municipality": null}), 422),
            (json!({"municipality": "9999"}), 404),
            (json!({"service": "no-such-service"}), 404),
            (json!({"service": "barn-och-familj"}), 404),
            (json!({"name": "x".repeat(101)}), 422),
            (json!({"colour": "blue"}), 422),
        ] {
            let answer = post_signed_out(&app, "/api/chats/offline", &form(changes.clone())).await;
            assert_eq!(answer.status(), status, "{}: {changes}", app.backend);
        }
        let mala = social_workers(&app, "2418").await.remove(0);
        assert!(
            offline_list(&app, &mala).await.is_empty(),
            "{}: nothing refused was kept",
            app.backend
        );
        // The longest message there may be is taken whole.
        let answer = post_signed_out(
            &app,
            "/api/chats/offline",
            &form(json!({"message": longest})),
        )
        .await;
        assert_eq!(answer.status(), 202, "{}", app.backend);
        let listed = offline_list(&app, &mala).await;
        assert_eq!(
            listed[0]["message"].as_str().map(|m| m.chars().count()),
            Some(2000)
        );

        // A page's cookie session must echo its CSRF value here too.
        let anna = app.resident("anna@example.se").await;
        let (cookie_token, _) = app.resident_session(&anna).await;
        let without_csrf = reqwest::Client::new()
            .post(app.url("/api/chats/offline"))
            .header(
                "cookie",
                format!("{}={cookie_token}", web::auth::SESSION_COOKIE),
            )
            .json(&form(json!({})))
            .send()
            .await
            .expect("sent");
        assert_eq!(without_csrf.status(), 403, "{}", app.backend);
    }
}

#[tokio::test]
async fn canned_replies_come_from_the_database_per_service_and_language() {
    for app in spawn_apps().await {
        let stored = booking::chats::canned_responses(&app.db)
            .await
            .expect("query");
        assert_eq!(
            stored.len(),
            6 * 4 * 3,
            "{}: three per service and language, general too",
            app.backend
        );
        let mut staff = console(&app, "2481").await;
        staff
            .send(json!({"type": "canned.list", "service": "ekonomiskt-bistand"}))
            .await;
        let swedish = staff.until("canned.responses").await;
        assert_eq!(swedish["language"], "sv", "{}: {swedish}", app.backend);
        let ids: Vec<&str> = swedish["responses"]
            .as_array()
            .expect("responses")
            .iter()
            .map(|r| r["id"].as_str().expect("an id"))
            .collect();
        assert_eq!(ids, ["welcome", "household", "closing"]);
        assert!(swedish["responses"][1]["text"]
            .as_str()
            .unwrap()
            .contains("ekonomiskt bistånd"));

        staff
            .send(json!({"type": "canned.list", "service": "general", "language": "ar"}))
            .await;
        let arabic = staff.until("canned.responses").await;
        assert_eq!(arabic["language"], "ar", "{}: {arabic}", app.backend);
        assert_eq!(arabic["responses"][1]["id"], "right-help");
        assert_eq!(arabic["responses"][1]["title"], "المساعدة المناسبة");

        // Only staff who take the service's chats get its replies.
        let helsingborg = social_workers(&app, "1283").await;
        let narrow = helsingborg
            .iter()
            .find(|s| s.services.len() == 2)
            .expect("a social worker of two services");
        let mut narrow = console_of(&app, narrow, 1).await;
        let error = refused(
            &mut narrow,
            json!({"type": "canned.list", "service": "ekonomiskt-bistand"}),
        )
        .await;
        assert_eq!(error["code"], "forbidden", "{}: {error}", app.backend);
        let mut anna = resident(&app, "anna@example.se").await;
        let error = refused(
            &mut anna,
            json!({"type": "canned.list", "service": "ekonomiskt-bistand"}),
        )
        .await;
        assert_eq!(error["code"], "forbidden", "{}: {error}", app.backend);
        let error = refused(
            &mut staff,
            json!({"type": "canned.list", "service": "general", "language": "de"}),
        )
        .await;
        assert_eq!(error["code"], "malformed", "{}: {error}", app.backend);

        // A second start stores nothing twice.
        let again = booking::seed::canned_responses(&app.db)
            .await
            .expect("seeded");
        assert_eq!(again, 0, "{}", app.backend);
    }
}

#[tokio::test]
async fn staff_close_with_an_outcome_and_refused_messages_lose_nothing() {
    for app in spawn_apps().await {
        let mut staff = console(&app, "2481").await;
        let mut anna = resident(&app, "anna@example.se").await;
        let room = open_chat(&mut anna, "ekonomiskt-bistand").await;

        // A claim of a room that does not exist changes nothing.
        let error = refused(
            &mut staff,
            json!({"type": "queue.claim", "room": "chat:no-such-room"}),
        )
        .await;
        assert_eq!(error["code"], "not_found", "{}: {error}", app.backend);
        staff.claim(&room).await;

        // Too long: refused under its own client id, and nothing stored.
        let long = "å".repeat(4001);
        let error = refused(
            &mut anna,
            json!({"type": "chat.send", "room": room, "client_id": "long", "text": long}),
        )
        .await;
        assert_eq!(error["code"], "invalid", "{}: {error}", app.backend);
        assert_eq!(error["room"], room.as_str());
        assert_eq!(error["client_id"], "long");
        anna.send(
            json!({"type": "chat.send", "room": room, "client_id": "short", "text": "Kortare då"}),
        )
        .await;
        anna.until("chat.stored").await;
        let said = staff.until_event(&room, "chat").await;
        assert_eq!(said["event"]["text"], "Kortare då", "{}", app.backend);

        // Staff must say how the chat ended.
        let error = refused(&mut staff, json!({"type": "chat.close", "room": room})).await;
        assert_eq!(error["code"], "invalid", "{}: {error}", app.backend);
        let error = refused(
            &mut staff,
            json!({"type": "chat.close", "room": room, "outcome": "happy"}),
        )
        .await;
        assert_eq!(error["code"], "malformed", "{}: {error}", app.backend);
        staff
            .send(json!({"type": "chat.send", "room": room, "client_id": "s1", "text": "Jag skickar dig vidare."}))
            .await;
        staff.until("chat.stored").await;
        staff
            .send(json!({"type": "chat.close", "room": room, "outcome": "referred"}))
            .await;
        let ended = anna.until_event(&room, "ended").await;
        assert_eq!(
            ended["event"]["outcome"], "referred",
            "{}: {ended}",
            app.backend
        );

        let events = booking::events::events_after(&app.db, &RoomId::parse(&room).unwrap(), 0)
            .await
            .expect("query");
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(
            kinds,
            ["assigned", "chat", "chat", "ended"],
            "{}",
            app.backend
        );
        assert!(!events.iter().any(|e| e.body.contains("ååå")));
        assert!(
            events[3].body.contains(r#""outcome":"referred""#),
            "{:?}",
            events[3]
        );
    }
}

/// `GET /api/staff/chats/{room}/colleagues` as `staff`: the status, and the
/// ids listed.
async fn colleagues(
    app: &TestApp,
    staff: &booking::accounts::Staff,
    room: &str,
) -> (u16, Vec<String>) {
    let token = app.staff_token(staff.email.as_str()).await;
    let response = app
        .get(&format!("/api/staff/chats/{room}/colleagues"), Some(&token))
        .await;
    let status = response.status().as_u16();
    if status != 200 {
        return (status, Vec::new());
    }
    let list: Vec<Value> = response.json().await.expect("json");
    for c in &list {
        assert!(c["name"].as_str().is_some_and(|n| !n.is_empty()), "{c}");
        assert!(c["municipality"].as_str().is_some(), "{c}");
    }
    let ids = list
        .iter()
        .map(|c| c["id"].as_str().expect("an id").to_owned())
        .collect();
    (status, ids)
}

#[tokio::test]
async fn a_chat_is_transferred_only_to_an_online_eligible_colleague_under_their_limit() {
    for app in spawn_apps().await {
        let lycksele = social_workers(&app, "2481").await;
        let (first, second) = (&lycksele[0], &lycksele[1]);
        let mala = social_workers(&app, "2418").await.remove(0);
        let helsingborg = social_workers(&app, "1283").await.remove(0);
        let mut holder = console_of(&app, first, 2).await;
        let mut taker = console_of(&app, second, 1).await;
        let mut home = console_of(&app, &mala, 1).await;
        let mut stranger = console_of(&app, &helsingborg, 3).await;
        let mut anna = resident(&app, "anna@example.se").await;
        let room = open_chat(&mut anna, "ekonomiskt-bistand").await;
        holder.claim(&room).await;

        let mut expected = vec![second.id.to_string(), mala.id.to_string()];
        expected.sort();
        let (status, ids) = colleagues(&app, first, &room).await;
        assert_eq!(status, 200, "{}", app.backend);
        assert_eq!(ids, expected, "{}: Helsingborg may not", app.backend);
        assert_eq!(colleagues(&app, second, &room).await.0, 404, "not theirs");
        assert_eq!(colleagues(&app, first, "chat:no-such-room").await.0, 404);

        // Refused transfers leave the chat where it was.
        for to in [helsingborg.id.as_str(), "no-such-staff"] {
            let error = refused(
                &mut holder,
                json!({"type": "queue.transfer", "room": room, "to": to}),
            )
            .await;
            assert_eq!(error["code"], "not_eligible", "{}: {error}", app.backend);
        }
        home.send(json!({"type": "staff.availability", "available": false, "max_chats": 1}))
            .await;
        home.frames_until_pong().await;
        assert_eq!(colleagues(&app, first, &room).await.1, [second.id.as_str()]);
        let error = refused(
            &mut holder,
            json!({"type": "queue.transfer", "room": room, "to": mala.id}),
        )
        .await;
        assert_eq!(
            error["code"], "not_eligible",
            "{}: offline: {error}",
            app.backend
        );
        let seen = stranger.frames_until_pong().await;
        assert!(
            !seen.iter().any(|f| f["type"] == "queue.assigned"),
            "{}: {seen:?}",
            app.backend
        );

        holder
            .send(json!({"type": "queue.transfer", "room": room, "to": second.id}))
            .await;
        let unassigned = holder.until("queue.unassigned").await;
        assert_eq!(unassigned["reason"], "transferred");
        taker.until("queue.assigned").await;
        taker
            .send(json!({"type": "chat.send", "room": room, "client_id": "t1", "text": "Jag tar över"}))
            .await;
        taker.until("chat.stored").await;
        let said = anna.until_event(&room, "chat").await;
        assert_eq!(said["event"]["text"], "Jag tar över", "{}", app.backend);
        assert_eq!(
            colleagues(&app, first, &room).await.0,
            404,
            "no longer theirs"
        );
    }
}

/// Free times asked for a room that is no room id at all are refused as
/// for a chat that does not exist: 404, and a denied audit entry naming
/// what was asked for.
#[tokio::test]
async fn free_times_for_a_room_that_is_no_room_id_are_refused_and_audited() {
    for app in spawn_apps().await {
        let lycksele = social_workers(&app, "2481").await;
        let token = app.staff_token(lycksele[0].email.as_str()).await;
        let answer = app
            .get("/api/staff/chats/no%20room/free-times?days=3", Some(&token))
            .await;
        assert_eq!(answer.status(), 404, "{}", app.backend);
        let audit = booking::audit::recent(&app.db, None, 50).await.unwrap();
        assert!(
            audit.iter().any(|r| r.action == "chat.free_times"
                && r.actor == format!("staff:{}", lycksele[0].id)
                && r.subject == "no room"
                && r.outcome == "denied"
                && r.resident_id.is_none()),
            "{}: {audit:?}",
            app.backend
        );
    }
}

#[tokio::test]
async fn staff_offer_free_times_for_the_residents_home_and_the_resident_books_one() {
    for app in spawn_apps().await {
        let lycksele = social_workers(&app, "2481").await;
        let mut staff = console_of(&app, &lycksele[0], 2).await;
        let anna = app.resident("anna@example.se").await;
        let anna_token = app.resident_token(&anna).await;
        let mut resident = Client::open(&app, &anna_token).await;
        let room = open_chat(&mut resident, "ekonomiskt-bistand").await;
        staff.claim(&room).await;

        let tz = booking::bookings::zone(booking::bookings::DISPLAY_ZONE).unwrap();
        let tomorrow = jiff::Timestamp::now()
            .to_zoned(tz)
            .date()
            .tomorrow()
            .unwrap();
        let path = |query: &str| format!("/api/staff/chats/{room}/free-times?{query}");
        let token = app.staff_token(lycksele[0].email.as_str()).await;
        let answer = app
            .get(&path(&format!("from={tomorrow}&days=14")), Some(&token))
            .await;
        assert_eq!(answer.status(), 200, "{}", app.backend);
        let offered: Vec<Value> = answer.json().await.unwrap();
        assert!(
            !offered.is_empty(),
            "{}: the demo has free times",
            app.backend
        );
        for time in &offered {
            let by = time["municipality"].as_str().unwrap();
            assert!(["2418", "2481"].contains(&by), "{}: {time}", app.backend);
            assert!(time["municipality_name"]
                .as_str()
                .is_some_and(|n| !n.is_empty()));
        }
        // The same times the resident would find, no more and no fewer.
        let public: Vec<String> = app
            .free_times("ekonomiskt-bistand", "2418", 13)
            .await
            .iter()
            .map(|t| t["starts_at"].as_str().unwrap().to_owned())
            .collect();
        let starts: Vec<String> = offered
            .iter()
            .map(|t| t["starts_at"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(starts, public, "{}", app.backend);

        // Another service they handle may be offered instead; general has no times.
        let other = app
            .get(&path("days=3&service=stod-till-anhoriga"), Some(&token))
            .await;
        assert_eq!(other.status(), 200, "{}", app.backend);
        for (query, status) in [
            ("days=15", 422),
            ("days=0", 422),
            ("from=tomorrow", 422),
            ("from=2199-12-31&days=2", 422),
            ("days=3&service=general", 404),
            ("days=3&colour=blue", 422),
        ] {
            let answer = app.get(&path(query), Some(&token)).await;
            assert_eq!(answer.status(), status, "{}: {query}", app.backend);
        }
        // Not theirs: a colleague, or a chat that does not exist.
        let colleague = app.staff_token(lycksele[1].email.as_str()).await;
        let answer = app.get(&path("days=3"), Some(&colleague)).await;
        assert_eq!(answer.status(), 404, "{}", app.backend);
        let answer = app
            .get("/api/staff/chats/chat:no-such/free-times", Some(&token))
            .await;
        assert_eq!(answer.status(), 404, "{}", app.backend);
        let audit = booking::audit::recent(&app.db, None, 200).await.unwrap();
        let reads: Vec<_> = audit
            .iter()
            .filter(|r| r.action == "chat.free_times")
            .collect();
        assert!(reads
            .iter()
            .any(|r| r.actor == format!("staff:{}", lycksele[0].id)
                && r.outcome == "allowed"
                && r.resident_id.as_ref() == Some(&anna.id)
                && r.on_behalf_of.as_deref() == Some("2418")));
        assert!(reads
            .iter()
            .any(|r| r.actor == format!("staff:{}", lycksele[1].id)
                && r.outcome == "denied"
                && r.resident_id.is_none()));

        // Offered in the chat, booked by the resident through the booking API.
        let first = &offered[0];
        staff
            .send(json!({
                "type": "chat.offer_times",
                "room": room,
                "client_id": "offer-1",
                "times": [{
                    "slot_id": first["starts_at"],
                    "starts_at": first["starts_at"],
                    "ends_at": first["ends_at"]
                }]
            }))
            .await;
        let seen = resident.until_event(&room, "times_offered").await;
        let starts_at = seen["event"]["times"][0]["starts_at"].as_str().unwrap();
        let booked = app
            .post(
                "/api/bookings",
                Some(&anna_token),
                &json!({"service": "ekonomiskt-bistand", "starts_at": starts_at}),
            )
            .await;
        assert_eq!(booked.status(), 201, "{}", app.backend);
        let mine: Vec<Value> = app
            .get("/api/bookings", Some(&anna_token))
            .await
            .json()
            .await
            .unwrap();
        assert!(mine.iter().any(|b| b["starts_at"] == starts_at));
    }
}

/// A chat about ekonomiskt bistånd that Anna (of Malå) opened signed in,
/// claimed by the first social worker of Lycksele.
struct ClaimedChat {
    staff: Client,
    resident: Client,
    anna: booking::accounts::Resident,
    anna_token: String,
    room: String,
}

async fn claimed_chat(app: &TestApp) -> ClaimedChat {
    let mut staff = console(app, "2481").await;
    let anna = app.resident("anna@example.se").await;
    let anna_token = app.resident_token(&anna).await;
    let mut resident = Client::open(app, &anna_token).await;
    resident
        .send(json!({"type": "queue.open", "service": "ekonomiskt-bistand"}))
        .await;
    let room = resident.until("joined").await["room"]
        .as_str()
        .expect("a room")
        .to_owned();
    staff.claim(&room).await;
    ClaimedChat {
        staff,
        resident,
        anna,
        anna_token,
        room,
    }
}

#[tokio::test]
async fn the_transcript_says_how_staff_closed_the_chat() {
    for app in spawn_apps().await {
        let ClaimedChat {
            mut staff,
            mut resident,
            anna_token,
            room,
            ..
        } = claimed_chat(&app).await;
        staff
            .send(json!({"type": "chat.close", "room": room, "outcome": "booked"}))
            .await;
        resident.until_event(&room, "ended").await;
        let response = reqwest::Client::new()
            .get(app.url(&format!("/my/chats/{}", room.replace(':', "%3A"))))
            .header(
                "cookie",
                format!("{}={anna_token}", web::auth::SESSION_COOKIE),
            )
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 200, "{}", app.backend);
        let transcript = response.text().await.expect("a body");
        assert!(
            transcript.contains("Chatten avslutades. Ett möte är bokat."),
            "{}: {transcript}",
            app.backend
        );
    }
}

#[tokio::test]
async fn a_resident_reads_their_own_chats_over_the_api_and_another_residents_is_not_found() {
    for app in spawn_apps().await {
        let ClaimedChat {
            mut staff,
            mut resident,
            anna,
            anna_token,
            room,
        } = claimed_chat(&app).await;
        resident
            .send(json!({"type": "chat.send", "room": room, "client_id": "r1", "text": "Hur ansöker jag?"}))
            .await;
        resident.until("chat.stored").await;
        staff
            .send(json!({"type": "chat.send", "room": room, "client_id": "s1", "text": "Via blanketten"}))
            .await;
        staff.until("chat.stored").await;
        resident.until_event(&room, "chat").await;
        staff
            .send(json!({"type": "chat.close", "room": room, "outcome": "resolved"}))
            .await;
        resident.until_event(&room, "ended").await;
        // The closed entry is stored once the close is carried out.
        staff.settle().await;
        let path = format!("/api/chats/mine/{}", room.replace(':', "%3A"));

        let list = app.get("/api/chats/mine", Some(&anna_token)).await;
        assert_eq!(list.status(), 200, "{}", app.backend);
        let list: Vec<Value> = list.json().await.expect("json");
        assert_eq!(list.len(), 1, "{}: {list:?}", app.backend);
        assert_eq!(list[0]["room"], room.as_str());
        assert_eq!(list[0]["service"], "ekonomiskt-bistand");
        assert_eq!(list[0]["state"], "closed");

        let read = app.get(&path, Some(&anna_token)).await;
        assert_eq!(read.status(), 200, "{}", app.backend);
        let read: Value = read.json().await.expect("json");
        let said: Vec<&str> = read["events"]
            .as_array()
            .expect("events")
            .iter()
            .filter(|e| e["event"]["kind"] == "chat")
            .map(|e| e["event"]["text"].as_str().expect("text"))
            .collect();
        assert_eq!(
            said,
            ["Hur ansöker jag?", "Via blanketten"],
            "{}",
            app.backend
        );
        let kinds: Vec<&str> = read["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| e["event"]["kind"].as_str().expect("kind"))
            .collect();
        assert_eq!(kinds.last(), Some(&"ended"), "{}: {kinds:?}", app.backend);

        // Another resident gets nothing of it, and cannot tell it exists.
        let erik = app.resident("erik@example.se").await;
        let erik_token = app.resident_token(&erik).await;
        let theirs: Vec<Value> = app
            .get("/api/chats/mine", Some(&erik_token))
            .await
            .json()
            .await
            .expect("json");
        assert!(theirs.is_empty(), "{}: {theirs:?}", app.backend);
        let peek = app.get(&path, Some(&erik_token)).await;
        assert_eq!(peek.status(), 404, "{}", app.backend);
        let peek = peek.text().await.expect("a body");
        assert!(
            !peek.contains("Via blanketten") && !peek.contains("ekonomiskt"),
            "{peek}"
        );
        let missing = app
            .get("/api/chats/mine/chat%3Ano-such", Some(&erik_token))
            .await;
        assert_eq!(missing.status(), 404, "{}", app.backend);
        assert_eq!(missing.text().await.expect("a body"), peek, "alike");
        assert_eq!(app.get(&path, None).await.status(), 401, "{}", app.backend);

        let audit = app.audit_about(&anna.id).await;
        let entries =
            |actor: &str, action: &str, outcome: &str| audit.count(actor, action, outcome);
        let anna_actor = format!("resident:{}", anna.id);
        let erik_actor = format!("resident:{}", erik.id);
        assert_eq!(entries(&anna_actor, "chat.list", "allowed"), 1, "{audit:?}");
        assert_eq!(entries(&anna_actor, "chat.read", "allowed"), 1, "{audit:?}");
        assert_eq!(entries(&erik_actor, "chat.read", "denied"), 1, "{audit:?}");
    }
}

/// One server per database, as [`spawn_apps`], with `adjust` applied to the
/// settings.
async fn spawn_apps_with(adjust: impl Fn(&mut web::Settings)) -> Vec<TestApp> {
    use booking::testing::TestDb;
    let mut apps =
        vec![kontakt_tests::spawn_app_with(TestDb::sqlite().await, "sqlite", &adjust).await];
    if let Some(pg) = TestDb::postgres().await {
        apps.push(kontakt_tests::spawn_app_with(pg, "postgres", &adjust).await);
    }
    apps
}

#[tokio::test]
async fn each_chat_follows_the_queue_rules_of_its_home_municipality() {
    // Malå assigns its residents' chats by itself and counts a minute a
    // chat; everyone else keeps the defaults: claimed by hand, 15 minutes.
    let apps = spawn_apps_with(|s| {
        s.queue.municipalities.insert(
            "2418".into(),
            web::config::QueueOverride {
                mode: Some(web::config::QueueModeSetting::Automatic),
                average_chat_secs: Some(60),
                ..Default::default()
            },
        );
    })
    .await;
    for app in apps {
        let mut staff = console(&app, "2418").await;
        staff.frames_until_pong().await;
        let mut anna = resident(&app, "anna@example.se").await;
        let annas = open_chat(&mut anna, "ekonomiskt-bistand").await;
        let assigned = staff.until("queue.assigned").await;
        assert_eq!(assigned["entry"]["room"], annas.as_str(), "{}", app.backend);
        anna.until_event(&annas, "assigned").await;

        // Supporting relatives may be pre-assessed anywhere; Malå's staff
        // may take Erik's chat, but Helsingborg's rules leave it waiting.
        let mut erik = resident(&app, "erik@example.se").await;
        let eriks = open_chat(&mut erik, "stod-till-anhoriga").await;
        let status = erik.until("queue.status").await;
        assert_eq!(status["eta_secs"], 900, "{}: {status}", app.backend);
        let entry = staff.until("queue.entry").await;
        assert_eq!(entry["entry"]["room"], eriks.as_str());
        erik.settle().await;
        let stored = booking::events::queue_entry(&app.db, &RoomId::parse(&eriks).unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.state, "waiting", "{}", app.backend);

        // A second chat from Malå, with its staff member busy, is told
        // Malå's estimate.
        staff
            .send(json!({"type": "staff.availability", "available": true, "max_chats": 1}))
            .await;
        let mut anna_again = resident(&app, "anna@example.se").await;
        let second = open_chat(&mut anna_again, "missbruk-beroende").await;
        let status = anna_again.until("queue.status").await;
        assert_eq!(status["room"], second.as_str());
        assert_eq!(status["eta_secs"], 60, "{}: {status}", app.backend);
    }
}

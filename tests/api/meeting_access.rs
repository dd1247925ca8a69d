//! Who may enter a booking's meeting room is exactly who may read the
//! booking through the API: for each kind of staff member, the API read, the
//! knocks their console hears (live and on connect), entering the room over
//! `/ws` and admitting the resident agree, and every refusal is audited.

use booking::accounts::{self, NewStaff};
use booking::{
    EmailAddress, Language, MunicipalityCode, NewPassword, PersonName, Role, ServiceCode,
};
use kontakt_tests::{spawn_apps, TestApp};
use serde_json::{json, Value};

use crate::ws::Client;

/// One kind of staff member and whether the policy lets them handle the
/// booking (performed by Lycksele for a resident of Malå, under their
/// agreement).
struct Case {
    who: &'static str,
    email: String,
    may_handle: bool,
}

/// Books financial aid for Malå's Anna with a Lycksele social worker (the
/// agreement rule), and returns the booking's id and the booked staff
/// member's email.
async fn book_with_lycksele(app: &TestApp) -> (String, String) {
    let booked_staff = "handlaggare.lycksele@kontakt.demo";
    let token = app.staff_token(booked_staff).await;
    let times = app.free_times("ekonomiskt-bistand", "2481", 14).await;
    let starts_at = times[0]["starts_at"].as_str().expect("a free time");
    let response = app
        .post(
            "/api/staff/bookings",
            Some(&token),
            &json!({"resident_email": "anna@example.se", "service": "ekonomiskt-bistand", "starts_at": starts_at}),
        )
        .await;
    assert_eq!(response.status(), 201, "{}: booked", app.backend);
    let body: Value = response.json().await.expect("json");
    let id = body["booking"]["id"].as_str().expect("an id").to_owned();
    (id, booked_staff.to_owned())
}

/// A Lycksele social worker who handles only support to relatives, not
/// financial aid.
pub(crate) async fn staff_without_the_service(app: &TestApp) -> String {
    let email = "utan.tjansten@kontakt.demo";
    let password = NewPassword::parse(booking::seed::DEMO_PASSWORD).expect("a password");
    accounts::create_staff(
        &app.db,
        &NewStaff {
            municipality: MunicipalityCode::parse("2481").unwrap(),
            email: EmailAddress::parse(email).unwrap(),
            name: PersonName::parse("Utan Tjänsten").unwrap(),
            role: Role::Staff,
            services: vec![ServiceCode::parse("stod-till-anhoriga").unwrap()],
            languages: vec![Language::Sv],
            password_hash: accounts::hash_password(&password).await.expect("hashed"),
        },
        kontakt_tests::now(),
    )
    .await
    .expect("staff created");
    email.to_owned()
}

async fn staff_id(app: &TestApp, email: &str) -> booking::StaffId {
    accounts::all_staff(&app.db)
        .await
        .expect("staff")
        .into_iter()
        .find(|s| s.email.as_str() == email)
        .expect("a staff member")
        .id
}

/// Reads until `pong` and says whether a `lobby.knock` of `room` came first.
async fn knocked_before_pong(client: &mut Client, room: &str) -> bool {
    client.send(json!({"type": "ping"})).await;
    let mut knocked = false;
    loop {
        let frame = client.until_any(&["lobby.knock", "pong"]).await;
        if frame["type"] == "pong" {
            return knocked;
        }
        knocked |= frame["room"] == room;
    }
}

/// The answer to a room that does not exist, for comparison.
fn no_such_room(room: &str) -> Value {
    json!({"v": 1, "type": "error", "code": "not_found", "message": "no such room", "room": room})
}

#[tokio::test]
async fn the_meeting_room_admits_exactly_who_may_read_the_booking() {
    for app in spawn_apps().await {
        let (id, booked) = book_with_lycksele(&app).await;
        let room = format!("booking:{id}");
        let cases = [
            Case {
                who: "the booked staff member",
                email: booked,
                may_handle: true,
            },
            Case {
                who: "staff of the performing municipality with the service",
                email: "handlaggare1.lycksele@kontakt.demo".into(),
                may_handle: true,
            },
            Case {
                who: "staff of the home municipality with the service",
                email: "handlaggare.mala@kontakt.demo".into(),
                may_handle: true,
            },
            Case {
                who: "staff of the performing municipality without the service",
                email: staff_without_the_service(&app).await,
                may_handle: false,
            },
            Case {
                who: "a scheduler of the performing municipality",
                email: "planerare.lycksele@kontakt.demo".into(),
                may_handle: false,
            },
            Case {
                who: "an admin of the performing municipality",
                email: "admin.lycksele@kontakt.demo".into(),
                may_handle: false,
            },
            Case {
                who: "staff of a municipality without an agreement",
                email: "handlaggare.helsingborg@kontakt.demo".into(),
                may_handle: false,
            },
        ];
        let mut tokens = Vec::new();
        for case in &cases {
            tokens.push(app.staff_token(&case.email).await);
        }

        // The API's read of the booking.
        for (case, token) in cases.iter().zip(&tokens) {
            let status = app
                .get(&format!("/api/staff/bookings/{id}"), Some(token))
                .await
                .status();
            let expected = if case.may_handle { 200 } else { 404 };
            assert_eq!(status, expected, "{}: {} reads", app.backend, case.who);
        }

        // Consoles connected when the resident knocks.
        let mut consoles = Vec::new();
        for token in &tokens {
            consoles.push(Client::open(&app, token).await);
        }
        let anna = app.resident("anna@example.se").await;
        let resident_token = app.resident_token(&anna).await;
        let opened = app
            .post(
                &format!("/api/meetings/{id}/open"),
                Some(&resident_token),
                &json!({}),
            )
            .await;
        assert_eq!(opened.status(), 200, "{}: opened", app.backend);
        let mut resident = Client::open(&app, &resident_token).await;
        resident.send(json!({"type": "join", "room": room})).await;
        assert_eq!(resident.until("joined").await["state"], "lobby");
        for (case, console) in cases.iter().zip(&mut consoles) {
            assert_eq!(
                knocked_before_pong(console, &room).await,
                case.may_handle,
                "{}: {} hears the knock",
                app.backend,
                case.who
            );
        }
        drop(consoles);

        // Consoles that connect while the resident waits, then enter and
        // admit.
        for (case, token) in cases.iter().zip(&tokens) {
            let mut staff = Client::open(&app, token).await;
            assert_eq!(
                knocked_before_pong(&mut staff, &room).await,
                case.may_handle,
                "{}: {} hears the knock on connect",
                app.backend,
                case.who
            );
            staff.send(json!({"type": "join", "room": room})).await;
            let answer = staff.until_any(&["joined", "error"]).await;
            let admit = json!({"type": "lobby.admit", "room": room, "party": resident.party});
            if case.may_handle {
                assert_eq!(answer["state"], "admitted", "{}: {answer}", case.who);
                staff.until("turn.credentials").await;
                staff.send(admit).await;
                resident.until("lobby.admitted").await;
                staff
                    .send(json!({"type": "lobby.send_back", "room": room, "party": resident.party}))
                    .await;
                resident.until("lobby.sent_back").await;
                staff.send(json!({"type": "leave", "room": room})).await;
            } else {
                assert_eq!(
                    answer,
                    no_such_room(&room),
                    "{}: {} enters",
                    app.backend,
                    case.who
                );
                staff.send(admit).await;
                assert_eq!(
                    staff.until("error").await,
                    no_such_room(&room),
                    "{}: {} admits",
                    app.backend,
                    case.who
                );
            }
            // The hub answers a ping only after it has carried out
            // everything before it, audit entries included.
            staff.send(json!({"type": "ping"})).await;
            staff.until("pong").await;
        }
        // A room that does not exist answers the same.
        let mut outsider = Client::open(&app, &tokens[tokens.len() - 1]).await;
        outsider
            .send(json!({"type": "join", "room": "booking:no-such-booking"}))
            .await;
        assert_eq!(
            outsider.until("error").await,
            no_such_room("booking:no-such-booking")
        );

        // Every refusal is audited, with the booking's rule and on whose
        // behalf; nobody allowed is refused.
        let audit = booking::audit::recent(&app.db, Some(&anna.id), 500)
            .await
            .expect("audit");
        for case in &cases {
            let actor = format!("staff:{}", staff_id(&app, &case.email).await);
            let denied: Vec<_> = audit
                .iter()
                .filter(|r| r.actor == actor && r.outcome == "denied")
                .collect();
            let mut denied_actions: Vec<&str> = denied.iter().map(|r| r.action.as_str()).collect();
            denied_actions.sort();
            if case.may_handle {
                assert!(denied.is_empty(), "{}: {denied:?}", case.who);
                assert!(
                    audit
                        .iter()
                        .any(|r| r.actor == actor && r.action == "meeting.read"),
                    "{}: the entry is audited",
                    case.who
                );
            } else {
                assert_eq!(
                    denied_actions,
                    // The API read, then entering and admitting.
                    ["booking.read", "meeting.enter", "meeting.enter"],
                    "{}: {}",
                    app.backend,
                    case.who
                );
                assert!(denied.iter().all(|r| r.subject == room
                    && r.on_behalf_of.as_deref() == Some("2418")
                    && r.rule == Some(booking::Basis::Agreement)
                    && r.agreement_id.as_deref() == Some("avtal-lycksele-mala")));
            }
        }
    }
}

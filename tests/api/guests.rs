//! Guest links to a booking's meeting: only staff of that meeting make
//! them, a link enters its one room once, into the waiting room, gets TURN
//! credentials only when admitted, reads nothing of the booking, and the
//! room refuses a fifth participant. Invitations and admissions of guests
//! are audited.

use booking::outbox::Message;
use kontakt_tests::{spawn_apps, TestApp, TEST_SECRET};
use serde_json::{json, Value};
use web::ws::{GuestPass, Tickets};

use crate::meeting_access::staff_without_the_service;
use crate::ws::{book_meeting, connect, refused_status, Client, Meeting};

/// Staff in the room ask it for an invitation; returns its token.
async fn invite(staff: &mut Client, room: &str, role: &str) -> String {
    staff
        .send(json!({"type": "meeting.invite", "room": room, "role": role}))
        .await;
    let invited = staff.until("meeting.invited").await;
    assert_eq!(invited["role"], role, "{invited}");
    invited["token"].as_str().expect("a token").to_owned()
}

/// Asks the API for a guest link with `body`, as `token`.
async fn link(app: &TestApp, meeting: &Meeting, token: &str, body: Value) -> reqwest::Response {
    app.post(
        &format!("/api/meetings/{}/guests", meeting.id),
        Some(token),
        &body,
    )
    .await
}

/// The staff member of `meeting`, admitted in its room, and a guest link's
/// token (the part after `/guest/`) for an interpreter.
async fn staff_and_link(app: &TestApp, meeting: &Meeting) -> (Client, String) {
    let mut staff = Client::open(app, &meeting.staff_token).await;
    staff
        .send(json!({"type": "join", "room": meeting.room}))
        .await;
    assert_eq!(staff.until("joined").await["state"], "admitted");
    let invitation = invite(&mut staff, &meeting.room, "interpreter").await;
    let token = guest_token(app, meeting, &invitation).await;
    (staff, token)
}

async fn guest_token(app: &TestApp, meeting: &Meeting, invitation: &str) -> String {
    let response = link(
        app,
        meeting,
        &meeting.staff_token,
        json!({"invitation": invitation, "role": "interpreter", "interpreting": "ar"}),
    )
    .await;
    assert_eq!(response.status(), 200, "{}", app.backend);
    let body: Value = response.json().await.expect("json");
    let url = body["url"].as_str().expect("a url");
    url.split("/guest/")
        .nth(1)
        .expect("a guest link")
        .to_owned()
}

#[tokio::test]
async fn only_staff_of_the_meeting_make_guest_links_and_each_is_audited() {
    for app in spawn_apps().await {
        let meeting = book_meeting(&app).await;
        let mut staff = Client::open(&app, &meeting.staff_token).await;
        staff
            .send(json!({"type": "join", "room": meeting.room}))
            .await;
        staff.until("joined").await;
        let invitation = invite(&mut staff, &meeting.room, "interpreter").await;
        let body = json!({"invitation": invitation, "role": "interpreter", "interpreting": "ar"});

        // The resident, staff who may not handle the booking, and nobody.
        let resident = link(&app, &meeting, &meeting.resident_token, body.clone()).await;
        assert_eq!(resident.status(), 401, "{}: the resident", app.backend);
        let outsider = app
            .staff_token(&staff_without_the_service(&app).await)
            .await;
        let refused = link(&app, &meeting, &outsider, body.clone()).await;
        assert_eq!(refused.status(), 404, "{}: other staff", app.backend);
        let anonymous = app
            .post(&format!("/api/meetings/{}/guests", meeting.id), None, &body)
            .await;
        assert!(
            matches!(anonymous.status().as_u16(), 401 | 403),
            "{}: {}",
            app.backend,
            anonymous.status()
        );

        // Nonsense is refused before anything is made.
        for bad in [
            json!({"invitation": invitation, "role": "interpreter"}),
            json!({"invitation": invitation, "role": "interpreter", "interpreting": "xx"}),
            json!({"invitation": invitation, "role": "resident"}),
            json!({"invitation": invitation, "role": "social_worker", "interpreting": "ar"}),
            json!({"invitation": "not a token!", "role": "social_worker"}),
            json!({"invitation": invitation, "role": "social_worker", "email": "nope"}),
        ] {
            let response = link(&app, &meeting, &meeting.staff_token, bad.clone()).await;
            assert_eq!(response.status(), 422, "{}: {bad}", app.backend);
        }

        // The meeting's staff member gets a link, mailed when asked, valid
        // until an hour after the meeting.
        let made = link(
            &app,
            &meeting,
            &meeting.staff_token,
            json!({"invitation": invitation, "role": "interpreter", "interpreting": "ar",
                   "email": "tolk@example.se", "mail_language": "en"}),
        )
        .await;
        assert_eq!(made.status(), 200, "{}", app.backend);
        let made: Value = made.json().await.expect("json");
        assert_eq!(made["mailed"], true);
        let url = made["url"].as_str().expect("a url");
        let token = url.split("/guest/").nth(1).expect("a guest link");
        let pass = Tickets::new(TEST_SECRET.as_bytes())
            .verify_guest_link(token, kontakt_tests::now())
            .expect("a valid link");
        assert_eq!(pass.room, meeting.room);
        assert_eq!(pass.invitation, invitation);
        assert_eq!(made["expires_at"], pass.ends_at + 3600);
        match app
            .last_message("tolk@example.se", "guest_invitation")
            .await
        {
            Some(Message::GuestInvitation {
                token: mailed,
                starts_at,
                ends_at,
            }) => {
                assert_eq!(mailed, token);
                assert_eq!((starts_at, ends_at), (pass.starts_at, pass.ends_at));
            }
            other => panic!("{}: no guest mail: {other:?}", app.backend),
        }

        let anna = app.resident("anna@example.se").await;
        let audit = booking::audit::recent(&app.db, Some(&anna.id), 500)
            .await
            .expect("audit");
        let invites: Vec<_> = audit
            .iter()
            .filter(|r| r.action == "meeting.guest_invite")
            .collect();
        assert_eq!(invites.len(), 1, "{}: {invites:?}", app.backend);
        assert_eq!(invites[0].outcome, "allowed");
        assert_eq!(invites[0].actor, staff.party);
    }
}

#[tokio::test]
async fn a_guest_link_enters_once_waits_and_gets_turn_only_when_admitted() {
    for app in spawn_apps().await {
        let meeting = book_meeting(&app).await;
        let room = meeting.room.as_str();
        let (mut staff, token) = staff_and_link(&app, &meeting).await;
        // The resident and staff chat before the guest comes.
        let mut resident = Client::open(&app, &meeting.resident_token).await;
        resident.send(json!({"type": "join", "room": room})).await;
        resident.until("joined").await;
        staff
            .send(json!({"type": "lobby.admit", "room": room, "party": resident.party}))
            .await;
        resident.until("lobby.admitted").await;
        resident
            .send(json!({"type": "chat.send", "room": room, "client_id": "c1", "text": "före tolken"}))
            .await;
        resident.until("chat.stored").await;

        let mut guest = Client::open(&app, &token).await;
        assert!(guest.party.starts_with("guest:"), "{}", guest.party);
        guest.send(json!({"type": "join", "room": room})).await;
        let joined = guest.until("joined").await;
        assert_eq!(joined["state"], "lobby", "{}: {joined}", app.backend);
        assert_eq!(joined["participants"], json!([]), "the lobby sees nobody");
        loop {
            let knock = staff.until_event(room, "knock").await;
            if knock["event"]["participant"]["party"] == guest.party.as_str() {
                assert_eq!(knock["event"]["participant"]["role"], "interpreter");
                break;
            }
        }
        let waiting = guest.frames_until_pong().await;
        assert!(
            !waiting.iter().any(|f| f["type"] == "turn.credentials"),
            "{}: no TURN in the lobby: {waiting:?}",
            app.backend
        );

        // The link again, from another browser: refused by the room.
        let mut again = Client::open(&app, &token).await;
        again.send(json!({"type": "join", "room": room})).await;
        let refused = again.until("error").await;
        assert_eq!(refused["code"], "invitation_invalid", "{}", app.backend);

        // The guest's socket opens only its own room.
        guest
            .send(json!({"type": "join", "room": "booking:another"}))
            .await;
        assert_eq!(guest.until("error").await["code"], "not_found");

        staff
            .send(json!({"type": "lobby.admit", "room": room, "party": guest.party}))
            .await;
        guest.until("lobby.admitted").await;
        let turn = guest.until("turn.credentials").await;
        assert_eq!(turn["room"], room);
        // Admitted, the guest sees nothing said before they came.
        guest
            .send(json!({"type": "resume", "room": room, "last_seq": 0}))
            .await;
        let replayed = guest.frames_until_pong().await;
        assert!(
            !replayed
                .iter()
                .any(|f| f.to_string().contains("före tolken")),
            "{}: {replayed:?}",
            app.backend
        );
        staff.send(json!({"type": "ping"})).await;
        staff.until("pong").await;

        // The link is no session: the booking and its transcript stay shut.
        for path in [
            format!("/api/bookings/{}", meeting.id),
            format!("/api/staff/bookings/{}", meeting.id),
            "/api/bookings".to_owned(),
        ] {
            let response = app.get(&path, Some(&token)).await;
            assert_eq!(response.status(), 401, "{}: {path}", app.backend);
        }
        let open = app
            .post(
                &format!("/api/meetings/{}/open", meeting.id),
                Some(&token),
                &json!({}),
            )
            .await;
        assert_eq!(open.status(), 401, "{}", app.backend);

        let anna = app.resident("anna@example.se").await;
        let audit = booking::audit::recent(&app.db, Some(&anna.id), 500)
            .await
            .expect("audit");
        assert!(
            audit
                .iter()
                .any(|r| r.action == "meeting.guest_admit" && r.actor == staff.party),
            "{}: the admission is audited",
            app.backend
        );
    }
}

#[tokio::test]
async fn expired_and_forged_guest_links_are_refused() {
    for app in spawn_apps().await {
        let meeting = book_meeting(&app).await;
        let now = kontakt_tests::now();
        let pass = GuestPass {
            room: meeting.room.clone(),
            invitation: "made-up".into(),
            role: "interpreter".into(),
            language: Some("ar".into()),
            starts_at: now - 7200,
            ends_at: now - 3600,
        };
        let ours = Tickets::new(TEST_SECRET.as_bytes());
        let expired = ours.issue_guest_link(&pass, now - 7200, now - 1);
        let forged = Tickets::new(b"not-the-server-secret-at-all-not-at-all").issue_guest_link(
            &pass,
            now,
            now + 3600,
        );
        for (what, token) in [("expired", &expired), ("forged", &forged)] {
            let ticket = app.post("/api/ws/ticket", Some(token), &json!({})).await;
            assert_eq!(ticket.status(), 401, "{}: {what}", app.backend);
            let page = app.get(&format!("/guest/{token}"), None).await;
            assert_eq!(page.status(), 404, "{}: {what}", app.backend);
        }
        // A ticket for a guest is spent like any other.
        let fresh = ours.issue_guest_link(&pass, now, now + 3600);
        let page = app.get(&format!("/guest/{fresh}"), None).await;
        assert_eq!(page.status(), 200, "{}", app.backend);
        assert_eq!(
            page.headers()["permissions-policy"],
            "camera=(self), microphone=(self)"
        );
        let ticket = crate::ws::ticket(&app, &fresh).await;
        let _first = connect(&app, Some(&ticket)).await.expect("opens");
        assert_eq!(
            refused_status(connect(&app, Some(&ticket)).await),
            401,
            "{}",
            app.backend
        );
        // An invitation the room never made is refused at the door.
        let mut stranger = Client::open(&app, &fresh).await;
        stranger
            .send(json!({"type": "join", "room": meeting.room}))
            .await;
        assert_eq!(
            stranger.until("error").await["code"],
            "invitation_invalid",
            "{}",
            app.backend
        );
    }
}

#[tokio::test]
async fn a_fifth_participant_is_refused() {
    for app in spawn_apps().await {
        let meeting = book_meeting(&app).await;
        let room = meeting.room.as_str();
        let (mut staff, first) = staff_and_link(&app, &meeting).await;
        let mut tokens = vec![first];
        for _ in 0..2 {
            let invitation = invite(&mut staff, room, "interpreter").await;
            tokens.push(guest_token(&app, &meeting, &invitation).await);
        }
        let mut resident = Client::open(&app, &meeting.resident_token).await;
        resident.send(json!({"type": "join", "room": room})).await;
        resident.until("joined").await;
        let mut guests = Vec::new();
        for token in &tokens {
            let mut guest = Client::open(&app, token).await;
            guest.send(json!({"type": "join", "room": room})).await;
            assert_eq!(guest.until("joined").await["state"], "lobby");
            guests.push(guest);
        }
        // Staff, the resident and two guests make four.
        for party in [&resident.party, &guests[0].party, &guests[1].party] {
            staff
                .send(json!({"type": "lobby.admit", "room": room, "party": party}))
                .await;
        }
        resident.until("lobby.admitted").await;
        guests[0].until("lobby.admitted").await;
        guests[1].until("lobby.admitted").await;
        staff
            .send(json!({"type": "lobby.admit", "room": room, "party": guests[2].party}))
            .await;
        let full = staff.until("error").await;
        assert_eq!(full["code"], "room_full", "{}: {full}", app.backend);
        let waiting = guests[2].frames_until_pong().await;
        assert!(
            !waiting
                .iter()
                .any(|f| f["type"] == "lobby.admitted" || f["type"] == "turn.credentials"),
            "{}: {waiting:?}",
            app.backend
        );
    }
}

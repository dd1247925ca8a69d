//! The real-time endpoint over real WebSockets: tickets, a booking's meeting
//! room with lobby and admission, chat with sequence numbers, resume after a
//! reconnect, and the protocol's answers to bad frames.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use kontakt_tests::{spawn_apps, TestApp};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use web::auth::SubjectKind;
use web::ws::Tickets;

/// How long a test waits for the server's next frame.
pub(crate) const FRAME_WITHIN: Duration = Duration::from_secs(10);

pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A fresh ticket for the holder of `token`.
pub(crate) async fn ticket(app: &TestApp, token: &str) -> String {
    let response = app.post("/api/ws/ticket", Some(token), &json!({})).await;
    assert_eq!(response.status(), 200, "{}: a ticket", app.backend);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["expires_in"], 30);
    body["ticket"].as_str().expect("a ticket").to_owned()
}

pub(crate) async fn connect(
    app: &TestApp,
    ticket: Option<&str>,
) -> Result<Socket, tungstenite::Error> {
    let base = app.address.replacen("http://", "ws://", 1);
    let url = match ticket {
        Some(t) => format!("{base}/ws?ticket={t}"),
        None => format!("{base}/ws"),
    };
    tokio_tungstenite::connect_async(url).await.map(|(s, _)| s)
}

pub(crate) fn refused_status(result: Result<Socket, tungstenite::Error>) -> u16 {
    match result {
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("expected a refusal, the socket opened"),
    }
}

/// A connected client that has read its `welcome`.
pub(crate) struct Client {
    pub(crate) socket: Socket,
    pub(crate) party: String,
}

impl Client {
    pub(crate) async fn open(app: &TestApp, token: &str) -> Client {
        let ticket = ticket(app, token).await;
        let socket = connect(app, Some(&ticket)).await.expect("the socket opens");
        let mut client = Client {
            socket,
            party: String::new(),
        };
        let welcome = client.until("welcome").await;
        client.party = welcome["party"].as_str().expect("a party").to_owned();
        client
    }

    pub(crate) async fn send(&mut self, mut frame: Value) {
        frame["v"] = json!(1);
        self.socket
            .send(Message::text(frame.to_string()))
            .await
            .expect("frame sent");
    }

    /// The next frame of any kind, within [`FRAME_WITHIN`].
    async fn next_message(&mut self) -> Message {
        tokio::time::timeout(FRAME_WITHIN, self.socket.next())
            .await
            .expect("a frame in time")
            .expect("the socket is open")
            .expect("a valid frame")
    }

    /// The next text frame.
    pub(crate) async fn next_frame(&mut self) -> Value {
        loop {
            if let Message::Text(text) = self.next_message().await {
                return serde_json::from_str(text.as_str()).expect("JSON");
            }
        }
    }

    /// Claims the waiting chat `room` as staff, and waits until it is ours.
    /// Waits until the hub has carried out everything this client sent,
    /// effects included (stored queue entries, audit, mail): the hub answers
    /// a ping only after them. Frames before the pong are skipped.
    pub(crate) async fn settle(&mut self) {
        self.frames_until_pong().await;
    }

    /// Every frame before the answer to a `ping` sent now: what the server
    /// had sent this client until then.
    pub(crate) async fn frames_until_pong(&mut self) -> Vec<Value> {
        self.send(json!({"type": "ping"})).await;
        let mut frames = Vec::new();
        loop {
            let frame = self.next_frame().await;
            if frame["type"] == "pong" {
                return frames;
            }
            frames.push(frame);
        }
    }

    pub(crate) async fn claim(&mut self, room: &str) -> Value {
        self.send(json!({"type": "queue.claim", "room": room}))
            .await;
        self.until("queue.assigned").await
    }

    /// Reads text frames until one of type `kind` comes, and returns it.
    pub(crate) async fn until(&mut self, kind: &str) -> Value {
        loop {
            if let Message::Text(text) = self.next_message().await {
                let frame: Value = serde_json::from_str(text.as_str()).expect("JSON");
                assert_eq!(frame["v"], 1, "{frame}");
                if frame["type"] == kind {
                    return frame;
                }
            }
        }
    }

    /// Reads text frames until one of the types in `kinds` comes.
    pub(crate) async fn until_any(&mut self, kinds: &[&str]) -> Value {
        loop {
            if let Message::Text(text) = self.next_message().await {
                let frame: Value = serde_json::from_str(text.as_str()).expect("JSON");
                if kinds.iter().any(|k| frame["type"] == *k) {
                    return frame;
                }
            }
        }
    }

    /// Reads until an `event` of `event_kind` in `room` comes.
    pub(crate) async fn until_event(&mut self, room: &str, event_kind: &str) -> Value {
        loop {
            let frame = self.until("event").await;
            if frame["room"] == room && frame["event"]["kind"] == event_kind {
                return frame;
            }
        }
    }
}

/// A booked meeting with a token for its resident and for its staff member.
pub(crate) struct Meeting {
    pub(crate) id: String,
    pub(crate) room: String,
    pub(crate) resident_token: String,
    pub(crate) staff_token: String,
    pub(crate) staff_email: booking::EmailAddress,
}

pub(crate) async fn book_meeting(app: &TestApp) -> Meeting {
    let anna = app.resident("anna@example.se").await;
    let resident_token = app.resident_token(&anna).await;
    let times = app.free_times("ekonomiskt-bistand", "2418", 14).await;
    let starts_at = times[0]["starts_at"].as_str().expect("a time");
    let booked = app
        .post(
            "/api/bookings",
            Some(&resident_token),
            &json!({"service": "ekonomiskt-bistand", "starts_at": starts_at}),
        )
        .await;
    assert_eq!(booked.status(), 201, "{}", app.backend);
    let booked: Value = booked.json().await.expect("json");
    let id = booked["booking"]["id"].as_str().expect("an id").to_owned();
    let opened = app
        .post(
            &format!("/api/meetings/{id}/open"),
            Some(&resident_token),
            &json!({}),
        )
        .await;
    assert_eq!(
        opened.status(),
        200,
        "{}: the resident opens the room",
        app.backend
    );
    let room = opened.json::<Value>().await.expect("json")["room"]
        .as_str()
        .expect("a room")
        .to_owned();
    assert_eq!(room, format!("booking:{id}"));
    let staff = app.booked_staff(&anna, &id).await;
    let staff_token = app.staff_token(staff.email.as_str()).await;
    // Opening is idempotent, and staff of the booking may do it too.
    let again = app
        .post(
            &format!("/api/meetings/{id}/open"),
            Some(&staff_token),
            &json!({}),
        )
        .await;
    assert_eq!(again.status(), 200, "{}: staff open the room", app.backend);
    Meeting {
        id,
        room,
        resident_token,
        staff_token,
        staff_email: staff.email,
    }
}

#[tokio::test]
async fn the_socket_needs_a_valid_unspent_ticket() {
    for app in spawn_apps().await {
        assert_eq!(
            refused_status(connect(&app, None).await),
            401,
            "{}: no ticket",
            app.backend
        );
        let forged = Tickets::new(b"not-the-server-secret-at-all-not-at-all").issue(
            "someone",
            SubjectKind::Resident,
            kontakt_tests::now(),
        );
        assert_eq!(
            refused_status(connect(&app, Some(&forged)).await),
            401,
            "{}: forged",
            app.backend
        );
        let anna = app.resident("anna@example.se").await;
        let session = app.resident_token(&anna).await;
        assert_eq!(
            refused_status(connect(&app, Some(&session)).await),
            401,
            "{}: a session token is not a ticket",
            app.backend
        );
        let ticket = ticket(&app, &session).await;
        let first = connect(&app, Some(&ticket))
            .await
            .expect("a fresh ticket works");
        assert_eq!(
            refused_status(connect(&app, Some(&ticket)).await),
            401,
            "{}: reused",
            app.backend
        );
        drop(first);
        let no_session = app.post("/api/ws/ticket", None, &json!({})).await;
        assert_eq!(no_session.status(), 401);

        // A page's cookie session must echo its CSRF value to get a ticket.
        let (cookie_token, claims) = app.resident_session(&anna).await;
        let cookie = format!("{}={cookie_token}", web::auth::SESSION_COOKIE);
        let without_csrf = reqwest::Client::new()
            .post(app.url("/api/ws/ticket"))
            .header("cookie", &cookie)
            .send()
            .await
            .expect("sent");
        assert_eq!(without_csrf.status(), 403, "{}", app.backend);
        let with_csrf = reqwest::Client::new()
            .post(app.url("/api/ws/ticket"))
            .header("cookie", &cookie)
            .header(web::auth::CSRF_HEADER, &claims.csrf)
            .send()
            .await
            .expect("sent");
        assert_eq!(with_csrf.status(), 200, "{}", app.backend);

        let openapi = app
            .get("/api/openapi.json", None)
            .await
            .text()
            .await
            .expect("text");
        assert!(openapi.contains("/api/ws/ticket"));
        assert!(openapi.contains("/api/meetings/{booking_id}/open"));
    }
}

#[tokio::test]
async fn a_resident_waits_in_the_lobby_until_staff_admit_and_then_chats() {
    for app in spawn_apps().await {
        let meeting = book_meeting(&app).await;
        let room = meeting.room.as_str();
        let mut staff = Client::open(&app, &meeting.staff_token).await;
        assert!(staff.party.starts_with("staff:"), "{}", staff.party);
        let mut resident = Client::open(&app, &meeting.resident_token).await;

        resident.send(json!({"type": "join", "room": room})).await;
        let joined = resident.until("joined").await;
        assert_eq!(joined["state"], "lobby", "{}: {joined}", app.backend);

        let knock = staff.until("lobby.knock").await;
        assert_eq!(knock["room"], room);
        assert_eq!(knock["participant"]["party"], resident.party.as_str());

        staff.send(json!({"type": "join", "room": room})).await;
        let joined = staff.until("joined").await;
        assert_eq!(joined["state"], "admitted", "{}: {joined}", app.backend);
        staff
            .send(json!({"type": "lobby.admit", "room": room, "party": resident.party}))
            .await;
        resident.until("lobby.admitted").await;

        resident
            .send(json!({"type": "chat.send", "room": room, "client_id": "c1", "text": "Hej!"}))
            .await;
        let stored = resident.until("chat.stored").await;
        let seq = stored["seq"].as_u64().expect("a seq");
        let chat = staff.until_event(room, "chat").await;
        assert_eq!(chat["seq"].as_u64(), Some(seq), "{}: {chat}", app.backend);
        assert_eq!(chat["event"]["text"], "Hej!");
        assert_eq!(chat["event"]["from"], resident.party.as_str());

        staff
            .send(json!({"type": "meeting.end", "room": room}))
            .await;
        let closed = resident.until("room.closed").await;
        assert_eq!(
            closed["reason"], "meeting_ended",
            "{}: {closed}",
            app.backend
        );
        // The hub answers a ping only after it has carried out everything
        // before it, including writing the booking's outcome.
        staff.send(json!({"type": "ping"})).await;
        staff.until("pong").await;
        let booking: Value = app
            .get(
                &format!("/api/bookings/{}", meeting.id),
                Some(&meeting.resident_token),
            )
            .await
            .json()
            .await
            .expect("json");
        assert_eq!(booking["status"], "completed", "{}: {booking}", app.backend);
        // An outcome is recorded once: a completed meeting never becomes a
        // no-show.
        let again = booking::bookings::record_outcome(
            &app.db,
            &booking::BookingId::parse(&meeting.id).unwrap(),
            booking::BookingStatus::NoShow,
            jiff::Timestamp::now(),
        )
        .await;
        assert!(
            matches!(again, Err(booking::Error::Conflict(_))),
            "{}: {again:?}",
            app.backend
        );
        let reopened = app
            .post(
                &format!("/api/meetings/{}/open", meeting.id),
                Some(&meeting.resident_token),
                &json!({}),
            )
            .await;
        assert_eq!(
            reopened.status(),
            409,
            "{}: an ended meeting stays closed",
            app.backend
        );
    }
}

/// A connected console of a Lycksele staff member, who may take Malå's
/// pre-assessment chats of financial aid under the two municipalities'
/// agreement.
async fn lycksele_console(app: &TestApp) -> Client {
    let lycksele = booking::accounts::all_staff(&app.db)
        .await
        .expect("staff")
        .into_iter()
        .find(|s| s.municipality.as_str() == "2481" && s.role == booking::Role::Staff)
        .expect("Lycksele staff");
    Client::open(app, &app.staff_token(lycksele.email.as_str()).await).await
}

#[tokio::test]
async fn a_chat_is_queued_for_the_municipalities_the_policy_allows() {
    for app in spawn_apps().await {
        // Malå's residents get the pre-assessment of financial aid from Malå
        // itself or, under their agreement, from Lycksele.
        let mut staff = lycksele_console(&app).await;
        let anna = app.resident("anna@example.se").await;
        let mut resident = Client::open(&app, &app.resident_token(&anna).await).await;

        resident
            .send(json!({"type": "queue.open", "service": "ekonomiskt-bistand"}))
            .await;
        let joined = resident.until("joined").await;
        let room = joined["room"].as_str().expect("a room").to_owned();
        assert!(room.starts_with("chat:"), "{}: {joined}", app.backend);
        let entry = staff.until("queue.entry").await;
        assert_eq!(
            entry["entry"]["room"],
            room.as_str(),
            "{}: {entry}",
            app.backend
        );
        assert_eq!(entry["entry"]["home_municipality"], "2418");

        resident.settle().await;
        let stored = booking::events::open_queue_entries(&app.db)
            .await
            .expect("query");
        assert_eq!(stored.len(), 1, "{}", app.backend);
        assert_eq!(stored[0].room, room);
        assert_eq!(stored[0].eligible_municipalities, "2418,2481");
        assert!(!stored[0].anonymous);

        resident
            .send(json!({"type": "queue.open", "service": "no-such-service"}))
            .await;
        let error = resident.until("error").await;
        assert_eq!(error["code"], "not_found", "{}: {error}", app.backend);
    }
}

#[tokio::test]
async fn a_reconnected_resident_resumes_what_was_said_meanwhile() {
    for app in spawn_apps().await {
        let meeting = book_meeting(&app).await;
        let room = meeting.room.as_str();
        let (mut staff, mut resident) = in_meeting(&app, &meeting).await;
        resident
            .send(json!({"type": "chat.send", "room": room, "client_id": "c1", "text": "Strax tillbaka"}))
            .await;
        let seen = resident.until("chat.stored").await["seq"]
            .as_u64()
            .expect("a seq");

        resident.socket.close(None).await.expect("closed");
        drop(resident);
        staff.until("participant.away").await;
        staff
            .send(
                json!({"type": "chat.send", "room": room, "client_id": "s1", "text": "Jag väntar"}),
            )
            .await;
        let missed = staff.until("chat.stored").await["seq"]
            .as_u64()
            .expect("a seq");
        assert!(missed > seen);

        let mut back = Client::open(&app, &meeting.resident_token).await;
        back.send(json!({"type": "join", "room": room})).await;
        let joined = back.until("joined").await;
        assert_eq!(
            joined["state"], "admitted",
            "{}: admitted stays admitted",
            app.backend
        );
        back.send(json!({"type": "resume", "room": room, "last_seq": seen}))
            .await;
        let replayed = back.until_event(room, "chat").await;
        assert_eq!(
            replayed["seq"].as_u64(),
            Some(missed),
            "{}: {replayed}",
            app.backend
        );
        assert_eq!(replayed["event"]["text"], "Jag väntar");
    }
}

/// Staff and the booking's resident in its meeting, the resident admitted.
async fn in_meeting(app: &TestApp, meeting: &Meeting) -> (Client, Client) {
    let room = meeting.room.as_str();
    let mut staff = Client::open(app, &meeting.staff_token).await;
    let mut resident = Client::open(app, &meeting.resident_token).await;
    resident.send(json!({"type": "join", "room": room})).await;
    staff.until("lobby.knock").await;
    staff.send(json!({"type": "join", "room": room})).await;
    staff
        .send(json!({"type": "lobby.admit", "room": room, "party": resident.party}))
        .await;
    resident.until("lobby.admitted").await;
    resident.until("turn.credentials").await;
    (staff, resident)
}

#[tokio::test]
async fn a_dropped_socket_is_away_and_back_within_the_grace_without_the_lobby() {
    for app in spawn_apps().await {
        let meeting = book_meeting(&app).await;
        let room = meeting.room.as_str();
        let (mut staff, mut resident) = in_meeting(&app, &meeting).await;
        let party = resident.party.clone();
        resident
            .send(json!({"type": "chat.send", "room": room, "client_id": "c1", "text": "Tunneln"}))
            .await;
        let seen = resident.until("chat.stored").await["seq"]
            .as_u64()
            .expect("a seq");

        // The socket drops without a `leave`: away, not gone.
        drop(resident);
        let away = staff.until("participant.away").await;
        assert_eq!(away["party"], party.as_str(), "{}: {away}", app.backend);
        assert_eq!(away["grace_secs"], 30, "{}: {away}", app.backend);
        staff
            .send(json!({"type": "chat.send", "room": room, "client_id": "s1", "text": "Hör du mig?"}))
            .await;
        let missed = staff.until("chat.stored").await["seq"]
            .as_u64()
            .expect("a seq");

        // Back within the grace with a new ticket: no lobby, fresh TURN
        // credentials, the missed message once, and the others told live.
        let mut back = Client::open(&app, &meeting.resident_token).await;
        back.send(json!({"type": "join", "room": room})).await;
        let joined = back.until("joined").await;
        assert_eq!(joined["state"], "admitted", "{}: {joined}", app.backend);
        let credentials = back.until("turn.credentials").await;
        assert!(
            credentials["credentials"]["password"].is_string(),
            "{}: {credentials}",
            app.backend
        );
        back.send(json!({"type": "resume", "room": room, "last_seq": seen}))
            .await;
        let replayed: Vec<Value> = back
            .frames_until_pong()
            .await
            .into_iter()
            .filter(|f| f["type"] == "event")
            .collect();
        assert_eq!(replayed.len(), 1, "{}: {replayed:?}", app.backend);
        assert_eq!(replayed[0]["seq"].as_u64(), Some(missed));
        assert_eq!(replayed[0]["event"]["text"], "Hör du mig?");
        let seen_by_staff = staff.frames_until_pong().await;
        let kinds: Vec<&str> = seen_by_staff
            .iter()
            .map(|f| {
                f["event"]["kind"]
                    .as_str()
                    .unwrap_or(f["type"].as_str().unwrap())
            })
            .collect();
        assert_eq!(
            kinds,
            ["participant.back"],
            "{}: no knock, no departure",
            app.backend
        );

        // Away again, and this time the grace runs out: the hub's timer,
        // run at an instant past the grace, records the departure.
        drop(back);
        staff.until("participant.away").await;
        app.hub
            .tick(std::time::Instant::now() + signaling::room::AWAY_GRACE + Duration::from_secs(1))
            .await;
        let left = staff.until_event(room, "participant_left").await;
        assert_eq!(
            left["event"]["party"],
            party.as_str(),
            "{}: {left}",
            app.backend
        );
    }
}

#[tokio::test]
async fn a_malformed_frame_is_answered_and_a_binary_frame_closes_with_1003() {
    for app in spawn_apps().await {
        let anna = app.resident("anna@example.se").await;
        let mut client = Client::open(&app, &app.resident_token(&anna).await).await;
        client
            .socket
            .send(Message::text("{not json"))
            .await
            .expect("sent");
        let error = client.until("error").await;
        assert_eq!(error["code"], "malformed", "{}: {error}", app.backend);
        client.send(json!({"type": "ping"})).await;
        client.until("pong").await;

        client
            .socket
            .send(Message::binary(vec![1u8, 2, 3]))
            .await
            .expect("sent");
        let code = loop {
            match client.next_message().await {
                Message::Close(Some(frame)) => break u16::from(frame.code),
                Message::Close(None) => panic!("{}: a close without a code", app.backend),
                _ => continue,
            }
        };
        assert_eq!(code, 1003, "{}", app.backend);
    }
}

/// The close code the server ends with after `frame`, which it must send as
/// a Close frame, not by dropping the connection.
async fn close_code_after(app: &TestApp, frame: Message) -> u16 {
    let anna = app.resident("anna@example.se").await;
    let mut client = Client::open(app, &app.resident_token(&anna).await).await;
    client.socket.send(frame).await.expect("sent");
    loop {
        let message = tokio::time::timeout(FRAME_WITHIN, client.socket.next())
            .await
            .expect("a frame in time");
        match message {
            Some(Ok(Message::Close(Some(frame)))) => return u16::from(frame.code),
            Some(Ok(Message::Close(None))) => panic!("{}: a close without a code", app.backend),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("{}: no close frame, the socket failed: {e}", app.backend),
            None => panic!("{}: no close frame, the socket just ended", app.backend),
        }
    }
}

#[tokio::test]
async fn an_oversized_frame_closes_with_1009_and_invalid_utf8_with_1007() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    let max = signaling::protocol::MAX_FRAME_BYTES;
    for app in spawn_apps().await {
        // Over the protocol's limit, under the socket's: the protocol's own
        // check closes.
        let over_protocol = Message::text("x".repeat(max + 1024));
        assert_eq!(close_code_after(&app, over_protocol).await, 1009);
        // Over the socket's limit, twice the protocol's: the library refuses
        // the frame before the protocol sees it.
        let over_socket = Message::text("x".repeat(max * 2 + 1024));
        assert_eq!(close_code_after(&app, over_socket).await, 1009);
        // The same size sent in fragments.
        let first = Frame::message("x".repeat(max), OpCode::Data(Data::Text), false);
        let anna = app.resident("anna@example.se").await;
        let mut client = Client::open(&app, &app.resident_token(&anna).await).await;
        for frame in [
            first,
            Frame::message("x".repeat(max), OpCode::Data(Data::Continue), false),
            Frame::message("x".repeat(1024), OpCode::Data(Data::Continue), true),
        ] {
            client
                .socket
                .send(Message::Frame(frame))
                .await
                .expect("sent");
        }
        let code = loop {
            match client.next_message().await {
                Message::Close(Some(frame)) => break u16::from(frame.code),
                Message::Close(None) => panic!("{}: a close without a code", app.backend),
                _ => continue,
            }
        };
        assert_eq!(code, 1009, "{}: fragments", app.backend);
        // A text frame that is not UTF-8.
        let not_utf8 = Frame::message(vec![b'"', 0xff, 0xfe, b'"'], OpCode::Data(Data::Text), true);
        assert_eq!(close_code_after(&app, Message::Frame(not_utf8)).await, 1007);
    }
}

/// A server that pings every 100 ms and gives a connection up after 400 ms
/// without a pong.
async fn impatient_app() -> TestApp {
    kontakt_tests::spawn_app_with(booking::testing::TestDb::sqlite().await, "sqlite", |s| {
        s.ws_ping_ms = 100;
        s.ws_pong_timeout_ms = 400;
    })
    .await
}

/// One frame as the server sends it: unmasked, so the header is the opcode,
/// the length and the payload.
async fn raw_frame(stream: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await.ok()?;
    let len = match head[1] & 0x7f {
        126 => u64::from(stream.read_u16().await.ok()?),
        127 => stream.read_u64().await.ok()?,
        n => u64::from(n),
    };
    let mut payload = vec![0u8; usize::try_from(len).ok()?];
    stream.read_exact(&mut payload).await.ok()?;
    Some((head[0] & 0x0f, payload))
}

#[tokio::test]
async fn a_connection_that_never_answers_a_ping_is_closed_with_1001() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = impatient_app().await;
    let anna = app.resident("anna@example.se").await;
    let ticket = ticket(&app, &app.resident_token(&anna).await).await;
    // A hand-made client: it upgrades, then only reads, so no pong is ever
    // sent, as from a peer whose network went away.
    let host = app.address.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&host).await.expect("connects");
    let request = format!(
        "GET /ws?ticket={ticket} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("sent");
    let mut response = Vec::new();
    while !response.ends_with(b"\r\n\r\n") {
        response.push(stream.read_u8().await.expect("the upgrade answer"));
    }
    assert!(
        response.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&response)
    );
    let (mut pings, mut close) = (0, None);
    while close.is_none() {
        let (opcode, payload) = tokio::time::timeout(FRAME_WITHIN, raw_frame(&mut stream))
            .await
            .expect("a frame in time")
            .expect("the socket stays open until the close frame");
        match opcode {
            0x9 => pings += 1,
            0x8 => close = Some(u16::from_be_bytes([payload[0], payload[1]])),
            _ => {}
        }
    }
    assert!(pings >= 1, "the server pinged first");
    assert_eq!(close, Some(1001));
}

#[tokio::test]
async fn a_connection_that_answers_pings_outlives_many_timeouts() {
    let app = impatient_app().await;
    let anna = app.resident("anna@example.se").await;
    let mut client = Client::open(&app, &app.resident_token(&anna).await).await;
    // The client library answers each ping as it reads it. Ten pings take a
    // second, more than twice the 400 ms the server waits for a pong.
    let mut pings = 0;
    while pings < 10 {
        match client.next_message().await {
            Message::Ping(_) => pings += 1,
            Message::Close(frame) => panic!("closed after {pings} pings: {frame:?}"),
            _ => {}
        }
    }
    client.send(json!({"type": "ping"})).await;
    client.until("pong").await;
}

/// A page fetched with the resident's session cookie, as a browser would.
async fn page_as(app: &TestApp, token: &str, path: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .get(app.url(path))
        .header("cookie", format!("{}={token}", web::auth::SESSION_COOKIE))
        .send()
        .await
        .expect("sent");
    let status = response.status().as_u16();
    (status, response.text().await.expect("a body"))
}

#[tokio::test]
async fn a_signed_in_residents_closed_chat_stays_on_my_pages_for_them_alone() {
    for app in spawn_apps().await {
        let mut staff = lycksele_console(&app).await;
        let anna = app.resident("anna@example.se").await;
        let anna_token = app.resident_token(&anna).await;
        let mut resident = Client::open(&app, &anna_token).await;
        resident
            .send(json!({"type": "queue.open", "service": "ekonomiskt-bistand"}))
            .await;
        let room = resident.until("joined").await["room"]
            .as_str()
            .expect("a room")
            .to_owned();
        staff.until("queue.entry").await;
        staff.claim(&room).await;
        resident
            .send(json!({"type": "chat.send", "room": room, "client_id": "r1", "text": "Jag har frågor om <hyran>"}))
            .await;
        resident.until("chat.stored").await;
        staff
            .send(json!({"type": "chat.send", "room": room, "client_id": "s1", "text": "Berätta mer"}))
            .await;
        staff.until("chat.stored").await;
        resident.until_event(&room, "chat").await;
        resident
            .send(json!({"type": "chat.close", "room": room}))
            .await;
        resident.until_event(&room, "ended").await;

        let link = format!("/my/chats/{}", room.replace(':', "%3A"));
        let (status, my_pages) = page_as(&app, &anna_token, "/my").await;
        assert_eq!(status, 200, "{}", app.backend);
        assert!(my_pages.contains(&link), "{}: {my_pages}", app.backend);
        let (status, transcript) = page_as(&app, &anna_token, &link).await;
        assert_eq!(status, 200, "{}", app.backend);
        let said = transcript
            .find("Jag har frågor om &lt;hyran&gt;")
            .expect("the resident's words, escaped");
        let answered = transcript.find("Berätta mer").expect("the answer");
        assert!(said < answered, "in the order they were said");
        assert!(!transcript.contains("<hyran>"), "escaped");

        // Another resident, and someone signed out, get nothing.
        let erik = app.resident("erik@example.se").await;
        let erik_token = app.resident_token(&erik).await;
        let (status, peek) = page_as(&app, &erik_token, &link).await;
        assert_eq!(status, 404, "{}", app.backend);
        assert!(!peek.contains("Berätta mer"));
        let (_, erik_pages) = page_as(&app, &erik_token, "/my").await;
        assert!(!erik_pages.contains(&link), "{}", app.backend);
        let (_, missing) = page_as(&app, &erik_token, "/my/chats/chat%3Ano-such").await;
        assert!(!missing.contains("Berätta mer"));
        let signed_out = app.get(&link, None).await;
        assert!(
            !signed_out
                .text()
                .await
                .expect("a body")
                .contains("Berätta mer"),
            "{}",
            app.backend
        );

        let audit = app.audit_about(&anna.id).await;
        let entries =
            |actor: &str, action: &str, outcome: &str| audit.count(actor, action, outcome);
        let anna_actor = format!("resident:{}", anna.id);
        let erik_actor = format!("resident:{}", erik.id);
        assert_eq!(entries(&anna_actor, "chat.read", "allowed"), 1, "{audit:?}");
        assert_eq!(entries(&anna_actor, "chat.list", "allowed"), 1, "{audit:?}");
        assert_eq!(entries(&erik_actor, "chat.read", "denied"), 1, "{audit:?}");
    }
}

#[tokio::test]
async fn a_knock_with_no_staff_in_the_room_mails_the_booked_staff_member_once() {
    for app in spawn_apps().await {
        let meeting = book_meeting(&app).await;
        let room = meeting.room.as_str();
        let knocks = || booking::outbox::count_for(&app.db, &meeting.staff_email, "knock");
        assert_eq!(knocks().await.expect("count"), 0);

        let mut resident = Client::open(&app, &meeting.resident_token).await;
        resident.send(json!({"type": "join", "room": room})).await;
        let status = resident.until("lobby.status").await;
        assert_eq!(status["staff_present"], false, "{}: {status}", app.backend);
        // The hub writes the mail after telling the resident where they
        // stand, off its lock, and answers the resident's next ping only
        // once it is written.
        resident.send(json!({"type": "ping"})).await;
        resident.until("pong").await;
        assert_eq!(knocks().await.expect("count"), 1, "{}", app.backend);
        let mail = booking::outbox::latest_for(&app.db, &meeting.staff_email, "knock")
            .await
            .expect("query");
        assert!(
            matches!(&mail, Some(booking::outbox::Message::Knock { booking_id, .. }) if booking_id.as_str() == meeting.id),
            "{mail:?}"
        );

        // Coming back to the waiting room soon after sends no second mail.
        resident.socket.close(None).await.expect("closed");
        drop(resident);
        let mut back = Client::open(&app, &meeting.resident_token).await;
        back.send(json!({"type": "join", "room": room})).await;
        back.until("lobby.status").await;
        back.send(json!({"type": "ping"})).await;
        back.until("pong").await;
        assert_eq!(knocks().await.expect("count"), 1, "{}", app.backend);
    }
}

#[tokio::test]
async fn the_join_link_opens_the_meeting_page_for_the_resident_and_eligible_staff_only() {
    for app in spawn_apps().await {
        let meeting = book_meeting(&app).await;
        let join = format!("/join/{}", meeting.id);
        let marker = format!("data-booking=\"{}\"", meeting.id);

        let (status, page) = page_as(&app, &meeting.resident_token, &join).await;
        assert_eq!(status, 200, "{}", app.backend);
        assert!(page.contains(&marker), "{}: {page}", app.backend);
        assert!(page.contains("data-role=\"resident\""));
        assert!(page.contains(web::assets::url("meeting.js")));
        assert!(
            !page.contains("id=\"lobby-list\"") && !page.contains("id=\"end-meeting\""),
            "a resident neither admits nor ends"
        );
        let (_, my_pages) = page_as(&app, &meeting.resident_token, "/my").await;
        assert!(
            my_pages.contains(&format!("href=\"{join}\"")),
            "My pages links to it"
        );

        let (status, page) = page_as(&app, &meeting.staff_token, &join).await;
        assert_eq!(status, 200, "{}", app.backend);
        assert!(page.contains("data-role=\"staff\""));
        assert!(page.contains("id=\"lobby-list\"") && page.contains("id=\"end-meeting\""));

        // Another resident, staff the policy keeps out, and nobody signed in
        // see nothing of it.
        let erik = app.resident("erik@example.se").await;
        let (status, page) = page_as(&app, &app.resident_token(&erik).await, &join).await;
        assert_eq!(status, 404, "{}", app.backend);
        assert!(!page.contains(&marker));
        let outsider = app
            .staff_token("handlaggare.helsingborg@kontakt.demo")
            .await;
        let (status, page) = page_as(&app, &outsider, &join).await;
        assert_eq!(status, 404, "{}", app.backend);
        assert!(!page.contains(&marker));
        let signed_out = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a client")
            .get(app.url(&join))
            .send()
            .await
            .expect("sent");
        assert!(signed_out.status().is_redirection(), "{}", app.backend);
        let to = signed_out.headers()["location"].to_str().expect("ascii");
        assert!(to.starts_with("/sign-in?next="), "{to}");

        let audit = booking::audit::recent(&app.db, None, 200)
            .await
            .expect("audit");
        let denied = |actor: &str| {
            audit
                .iter()
                .filter(|r| {
                    r.actor == actor && r.outcome == "denied" && r.subject.contains(&meeting.id)
                })
                .count()
        };
        assert!(denied(&format!("resident:{}", erik.id)) >= 1, "{audit:?}");
        assert!(
            audit.iter().any(|r| r.actor.starts_with("staff:")
                && r.outcome == "denied"
                && r.subject.contains(&meeting.id)),
            "{audit:?}"
        );

        // A cancelled booking has no meeting to join.
        let cancelled = app
            .post(
                &format!("/api/bookings/{}/cancel", meeting.id),
                Some(&meeting.resident_token),
                &json!({}),
            )
            .await;
        assert!(cancelled.status().is_success(), "{}", app.backend);
        let (status, page) = page_as(&app, &meeting.resident_token, &join).await;
        assert_eq!(status, 200);
        assert!(!page.contains(&marker), "no call for a cancelled booking");
        assert!(page.contains("status-cancelled"));

        let script = app.get(web::assets::url("meeting.js"), None).await;
        assert_eq!(script.status(), 200);
        assert!(script.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/javascript"));
    }
}

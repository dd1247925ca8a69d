//! Two `kontakt` nodes sharing rooms and the chat queue over NATS, over one
//! PostgreSQL database: a resident on one node meets staff on the other,
//! a chat opened on one is picked up on the other, and when the owning node
//! stops the other takes over and clients resume with nothing lost.
//!
//! These tests need PostgreSQL (`DATABASE_URL`) and NATS with JetStream
//! (`NATS_URL`); without them they print a notice and pass.

use std::collections::BTreeSet;

use booking::testing::TestDb;
use kontakt_tests::{spawn_node, TestApp};
use serde_json::{json, Value};

use crate::ws::Client;

/// Two nodes of one cluster. Node `a` starts first and owns the rooms and
/// the queue; fields drop in order, so the database goes last.
pub(crate) struct Cluster {
    pub(crate) a: TestApp,
    pub(crate) b: TestApp,
    database: TestDb,
}

/// Two nodes over one PostgreSQL database and NATS, or `None` (with a
/// notice) when either is not configured.
pub(crate) async fn cluster() -> Option<Cluster> {
    let Ok(nats) = std::env::var("NATS_URL") else {
        eprintln!("notice: NATS_URL is not set; skipping this two-node test");
        return None;
    };
    let database = TestDb::postgres().await?;
    // A cluster name of its own, so that tests running at once on the same
    // NATS server do not share an owner.
    let name = format!(
        "test{}n{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_nanos()
    );
    let settings = |s: &mut web::Settings| {
        s.nats_url = Some(nats.clone());
        s.cluster = name.clone();
    };
    let a = spawn_node(&database.url, "postgres", settings).await;
    let b = spawn_node(&database.url, "postgres", settings).await;
    Some(Cluster { a, b, database })
}

/// A booking of Anna's, its room opened on both nodes, with tokens.
struct Meeting {
    room: String,
    resident_token: String,
    staff_token: String,
}

async fn book_meeting(cluster: &Cluster) -> Meeting {
    let (a, b) = (&cluster.a, &cluster.b);
    let anna = a.resident("anna@example.se").await;
    let resident_token = a.resident_token(&anna).await;
    let times = a.free_times("ekonomiskt-bistand", "2418", 14).await;
    let starts_at = times[0]["starts_at"].as_str().expect("a time");
    let booked = a
        .post(
            "/api/bookings",
            Some(&resident_token),
            &json!({"service": "ekonomiskt-bistand", "starts_at": starts_at}),
        )
        .await;
    assert_eq!(booked.status(), 201);
    let booked: Value = booked.json().await.expect("json");
    let id = booked["booking"]["id"].as_str().expect("an id").to_owned();
    let staff = a.booked_staff(&anna, &id).await;
    let staff_token = b.staff_token(staff.email.as_str()).await;
    let path = format!("/api/meetings/{id}/open");
    let opened = a.post(&path, Some(&resident_token), &json!({})).await;
    assert_eq!(opened.status(), 200, "the resident opens the room on a");
    let opened = b.post(&path, Some(&staff_token), &json!({})).await;
    assert_eq!(opened.status(), 200, "staff open the room on b");
    Meeting {
        room: format!("booking:{id}"),
        resident_token,
        staff_token,
    }
}

/// The resident on node `a` knocks, staff on node `b` admit; returns both.
async fn meet(cluster: &Cluster, meeting: &Meeting) -> (Client, Client) {
    let room = meeting.room.as_str();
    let mut staff = Client::open(&cluster.b, &meeting.staff_token).await;
    let mut resident = Client::open(&cluster.a, &meeting.resident_token).await;
    resident.send(json!({"type": "join", "room": room})).await;
    let joined = resident.until("joined").await;
    assert_eq!(joined["state"], "lobby", "{joined}");
    let knock = staff.until("lobby.knock").await;
    assert_eq!(knock["participant"]["party"], resident.party.as_str());
    staff.send(json!({"type": "join", "room": room})).await;
    let joined = staff.until("joined").await;
    assert_eq!(joined["state"], "admitted", "{joined}");
    staff
        .send(json!({"type": "lobby.admit", "room": room, "party": resident.party}))
        .await;
    resident.until("lobby.admitted").await;
    (resident, staff)
}

/// Sends a chat message and returns the seq the owner stored it under.
async fn say(client: &mut Client, room: &str, client_id: &str, text: &str) -> u64 {
    client
        .send(json!({"type": "chat.send", "room": room, "client_id": client_id, "text": text}))
        .await;
    loop {
        let stored = client.until("chat.stored").await;
        if stored["client_id"] == client_id {
            return stored["seq"].as_u64().expect("a seq");
        }
    }
}

#[tokio::test]
async fn a_resident_on_one_node_meets_staff_on_another_when_nats_url_is_set() {
    let Some(cluster) = cluster().await else {
        return;
    };
    let meeting = book_meeting(&cluster).await;
    let room = meeting.room.as_str();
    let (mut resident, mut staff) = meet(&cluster, &meeting).await;

    let first = say(&mut resident, room, "r1", "Hej från nod a").await;
    let seen = staff.until_event(room, "chat").await;
    assert_eq!(seen["seq"].as_u64(), Some(first), "{seen}");
    assert_eq!(seen["event"]["text"], "Hej från nod a");

    let second = say(&mut staff, room, "s1", "Hej från nod b").await;
    assert!(second > first);
    let seen = resident.until_event(room, "chat").await;
    assert_eq!(seen["seq"].as_u64(), Some(second), "{seen}");
    assert_eq!(seen["event"]["from"], staff.party.as_str());
}

#[tokio::test]
async fn a_chat_opened_on_one_node_is_claimed_once_from_either_when_nats_url_is_set() {
    let Some(cluster) = cluster().await else {
        return;
    };
    let (a, b) = (&cluster.a, &cluster.b);
    // Both of Lycksele's social workers may take Malå's financial-aid chats.
    let lycksele: Vec<_> = booking::accounts::all_staff(&a.db)
        .await
        .expect("staff")
        .into_iter()
        .filter(|s| s.municipality.as_str() == "2481" && s.role == booking::Role::Staff)
        .collect();
    assert!(
        lycksele.len() >= 2,
        "two Lycksele social workers are seeded"
    );
    let mut on_b = Client::open(b, &b.staff_token(lycksele[0].email.as_str()).await).await;
    let mut on_a = Client::open(a, &a.staff_token(lycksele[1].email.as_str()).await).await;
    for console in [&mut on_b, &mut on_a] {
        console
            .send(json!({"type": "staff.availability", "available": true, "max_chats": 2}))
            .await;
    }
    let anna = a.resident("anna@example.se").await;
    let mut resident = Client::open(a, &a.resident_token(&anna).await).await;

    resident
        .send(json!({"type": "queue.open", "service": "ekonomiskt-bistand"}))
        .await;
    let joined = resident.until("joined").await;
    let room = joined["room"].as_str().expect("a room").to_owned();
    for console in [&mut on_b, &mut on_a] {
        let entry = console.until("queue.entry").await;
        assert_eq!(entry["entry"]["room"], room.as_str(), "{entry}");
    }

    // Both claim at once; the owner applies one claim first.
    let claim = json!({"type": "queue.claim", "room": room});
    on_b.send(claim.clone()).await;
    on_a.send(claim).await;
    let mut winners = Vec::new();
    for (name, console) in [("b", &mut on_b), ("a", &mut on_a)] {
        let answer = loop {
            let frame = console.until_any(&["queue.assigned", "error"]).await;
            if frame["type"] == "queue.assigned" || frame["room"] == room.as_str() {
                break frame;
            }
        };
        if answer["type"] == "queue.assigned" {
            winners.push(name);
        } else {
            assert_eq!(answer["code"], "already_taken", "{answer}");
        }
    }
    assert_eq!(winners.len(), 1, "exactly one claim wins: {winners:?}");
    let winner = if winners[0] == "b" {
        &mut on_b
    } else {
        &mut on_a
    };

    let asked = say(&mut resident, &room, "r1", "Jag behöver hjälp").await;
    let seen = winner.until_event(&room, "chat").await;
    assert_eq!(seen["seq"].as_u64(), Some(asked), "{seen}");
    let answered = say(winner, &room, "s1", "Jag hjälper dig").await;
    let seen = resident.until_event(&room, "chat").await;
    assert_eq!(seen["seq"].as_u64(), Some(answered), "{seen}");

    // Node b follows; it asks the owner who could take the chat over.
    let (holder, colleague) = if winners[0] == "b" {
        (&lycksele[0], &lycksele[1])
    } else {
        (&lycksele[1], &lycksele[0])
    };
    let path = format!("/api/staff/chats/{room}/colleagues");
    let asked = b
        .get(&path, Some(&b.staff_token(holder.email.as_str()).await))
        .await;
    assert_eq!(asked.status(), 200);
    let colleagues: Vec<Value> = asked.json().await.expect("json");
    let ids: Vec<&str> = colleagues
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [colleague.id.as_str()], "{colleagues:?}");
    let other = b
        .get(&path, Some(&b.staff_token(colleague.email.as_str()).await))
        .await;
    assert_eq!(other.status(), 404, "not their chat");
}

#[tokio::test]
async fn the_other_node_takes_over_when_the_owner_stops_when_nats_url_is_set() {
    let Some(cluster) = cluster().await else {
        return;
    };
    let meeting = book_meeting(&cluster).await;
    let room = meeting.room.as_str();
    let (mut resident, mut staff) = meet(&cluster, &meeting).await;
    let before = say(&mut resident, room, "r1", "Innan noden stannar").await;
    staff.until_event(room, "chat").await;

    // Node a owns the room. Its client goes, then the node stops.
    resident.socket.close(None).await.expect("closed");
    drop(resident);
    staff.until("participant.away").await;
    let Cluster { a, b, database } = cluster;
    drop(a);

    // Node b takes the lease and welcomes its own connections again: the
    // client's cue to join its rooms again.
    staff.until("welcome").await;
    staff.send(json!({"type": "join", "room": room})).await;
    let joined = staff.until("joined").await;
    assert_eq!(joined["state"], "admitted", "{joined}");
    assert!(joined["last_seq"].as_u64() >= Some(before), "{joined}");
    let during = say(&mut staff, room, "s1", "Jag väntar på nod b").await;
    assert!(during > before);

    // The resident comes back through node b, still admitted, and resumes
    // from the start: everything once, in order.
    let path = format!(
        "/api/meetings/{}/open",
        room.strip_prefix("booking:").expect("a booking room")
    );
    let opened = b
        .post(&path, Some(&meeting.resident_token), &json!({}))
        .await;
    assert_eq!(opened.status(), 200);
    let mut back = Client::open(&b, &meeting.resident_token).await;
    back.send(json!({"type": "join", "room": room})).await;
    let joined = back.until("joined").await;
    assert_eq!(joined["state"], "admitted", "{joined}");
    back.send(json!({"type": "resume", "room": room, "last_seq": 0}))
        .await;
    back.send(json!({"type": "ping"})).await;
    let mut seqs = Vec::new();
    let mut chats = Vec::new();
    loop {
        let frame = back.until_any(&["event", "pong"]).await;
        if frame["type"] == "pong" {
            break;
        }
        if frame["room"] == room {
            seqs.push(frame["seq"].as_u64().expect("a seq"));
            if frame["event"]["kind"] == "chat" {
                chats.push(frame["event"]["text"].as_str().expect("text").to_owned());
            }
        }
    }
    let unique: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(unique.len(), seqs.len(), "no seq twice: {seqs:?}");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
    assert!(seqs.contains(&before) && seqs.contains(&during), "{seqs:?}");
    assert_eq!(chats, ["Innan noden stannar", "Jag väntar på nod b"]);

    // A message resent after the failover is the same message.
    let again = say(&mut back, room, "r1", "Innan noden stannar").await;
    assert_eq!(again, before, "the store dedups across owners");
    drop((back, staff, b));
    drop(database);
}

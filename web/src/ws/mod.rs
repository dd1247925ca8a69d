//! The real-time endpoint: `POST /api/ws/ticket` hands out single-use
//! tickets, `GET /ws?ticket=...` upgrades to the `signaling` hub's protocol,
//! and `POST /api/meetings/{booking_id}/open` opens a booking's meeting room.
//!
//! The hub itself lives in `signaling`; this module builds identities from
//! the database, computes chat eligibility with `booking`'s policy, and runs
//! one socket loop per connection.

pub mod effects;
mod socket;
pub mod ticket;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use booking::bookings::{self, Booking};
use booking::Db;
use serde::{Deserialize, Serialize};
use signaling::hub::{Hub, HubSettings};
use signaling::identity::Identity;
use signaling::ids::{
    InvitationToken, MunicipalityCode, PartyId, ResidentId, RoomId, ServiceId, StaffId,
};
use signaling::protocol::{CannedResponse, Language};
use signaling::queue::QueueRules;
use signaling::room::{MeetingSetup, StaffAccess};
use utoipa::ToSchema;

pub use booking::events::{DbLease, DbStore};
pub use effects::{AppEffects, TurnIssuer};
pub use ticket::{
    AnonymousChat, GuestPass, TicketSubject, Tickets, CHAT_TOKEN_SECONDS, TICKET_SECONDS,
};

use crate::auth::{Session, SubjectKind};
use crate::error::{path_id, AppError, ErrorBody};
use crate::state::AppState;

/// How many messages may wait for one connection before the hub gives up
/// on it as too slow.
pub const CONNECTION_BUFFER: usize = 256;

/// How late a resident may come before the meeting counts as a no-show.
pub const NO_SHOW_GRACE: Duration = Duration::from_secs(15 * 60);

/// Builds the hub over the application's database and the configured bus,
/// restores the open chats, and starts its timer and bus listener. With
/// NATS, the hub joins `cluster`: the nodes of one cluster share rooms and
/// the queue, owned by one of them at a time. The caller aborts the returned
/// tasks on shutdown, then calls `Hub::leave_cluster`, before it closes the
/// pool.
pub async fn start_hub(
    db: &Db,
    queue: QueueRules,
    nats_url: Option<&str>,
    cluster: &str,
    turn: Option<TurnIssuer>,
) -> anyhow::Result<(Hub, Vec<tokio::task::JoinHandle<()>>)> {
    warn_of_unknown_municipalities(db, &queue).await?;
    let settings = HubSettings {
        queue,
        connection_buffer: CONNECTION_BUFFER,
    };
    let store = Arc::new(DbStore::new(db.clone()));
    let effects = Arc::new(AppEffects::new(db.clone(), turn));
    let Some(url) = nats_url else {
        let bus = signaling::bus::connect_bus(None)
            .await
            .context("connecting to the bus")?;
        let hub = Hub::new(settings, store, bus, effects);
        load_canned_responses(db, &hub).await?;
        let restored = hub.restore().await.context("restoring open chats")?;
        tracing::info!(restored, "signaling hub started");
        let timer = hub.spawn_timer();
        let listener = hub
            .spawn_bus_listener()
            .await
            .context("listening on the bus")?;
        return Ok((hub, vec![timer, listener]));
    };
    let nats = signaling::bus::NatsBus::connect(url)
        .await
        .context("connecting to NATS")?;
    let lease = DbLease::new(db.clone(), cluster);
    let hub = Hub::clustered(
        settings,
        store,
        Arc::new(nats),
        effects,
        cluster,
        Arc::new(lease),
    );
    load_canned_responses(db, &hub).await?;
    // The owner restores the open chats when it takes the lease.
    let mut tasks = hub
        .spawn_cluster()
        .await
        .context("joining the hub cluster")?;
    tracing::info!(
        cluster,
        owner = hub.is_owner().await,
        "signaling hub started"
    );
    tasks.push(hub.spawn_timer());
    Ok((hub, tasks))
}

/// Logs the queue rules set for municipalities the database does not know:
/// a typo in a code would otherwise pass unseen.
async fn warn_of_unknown_municipalities(db: &Db, queue: &QueueRules) -> anyhow::Result<()> {
    let known = booking::catalog::municipalities(db)
        .await
        .context("reading the municipalities")?;
    for code in queue.municipalities.keys() {
        if !known.iter().any(|m| m.code.as_str() == code.as_str()) {
            tracing::warn!(%code, "[queue.municipalities] names a municipality that is not in the database");
        }
    }
    Ok(())
}

/// Gives the hub the canned responses from the database.
async fn load_canned_responses(db: &Db, hub: &Hub) -> anyhow::Result<()> {
    let mut grouped: BTreeMap<(ServiceId, Language), Vec<CannedResponse>> = BTreeMap::new();
    for r in booking::chats::canned_responses(db)
        .await
        .context("reading canned responses")?
    {
        let service = ServiceId::parse(r.service.as_str())
            .map_err(|_| anyhow::anyhow!("{} is not a valid hub id", r.service))?;
        let language = Language::parse(r.language.code())
            .ok_or_else(|| anyhow::anyhow!("{} is not a hub language", r.language.code()))?;
        grouped
            .entry((service, language))
            .or_default()
            .push(CannedResponse {
                id: r.id,
                title: r.title,
                text: r.text,
            });
    }
    for ((service, language), responses) in grouped {
        hub.set_canned_responses(service, language, responses).await;
    }
    Ok(())
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/ws/ticket", post(issue_ticket))
        .route("/api/meetings/{booking_id}/open", post(open_meeting))
        .route("/ws", get(upgrade))
}

#[derive(Serialize, ToSchema)]
pub struct TicketDto {
    /// Pass as `/ws?ticket=...` within `expires_in` seconds; it works once.
    pub ticket: String,
    pub expires_in: i64,
}

/// A single-use ticket for opening the WebSocket at `/ws`: for a session,
/// for the holder of a token for one anonymous chat
/// (`POST /api/chats/anonymous`), whose socket may act in that chat only,
/// or for the holder of a guest link
/// (`POST /api/meetings/{booking_id}/guests`), whose socket may enter that
/// one meeting room only.
#[utoipa::path(post, path = "/api/ws/ticket", security(("bearer" = [])), responses((status = 200, body = TicketDto), (status = 401, body = ErrorBody), (status = 403, description = "A cookie session without its CSRF header", body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn issue_ticket(
    State(state): State<AppState>,
    session: Result<Session, AppError>,
    headers: HeaderMap,
) -> Result<Json<TicketDto>, AppError> {
    let now = crate::clock::now().as_second();
    let ticket = match session {
        Ok(session) => {
            // A session of an account deleted since sign-in gets no ticket.
            identity(&state.db, &session.claims.sub, session.claims.kind).await?;
            state
                .tickets
                .issue(&session.claims.sub, session.claims.kind, now)
        }
        Err(refusal) => {
            let token = bearer(&headers).ok_or(refusal)?;
            if let Some(chat) = state.tickets.verify_chat_token(token, now) {
                state.tickets.issue_anonymous(&chat, now)
            } else if let Some(guest) = state.tickets.verify_guest_link(token, now) {
                state.tickets.issue_guest(&guest, now)
            } else {
                return Err(AppError::Unauthorized);
            }
        }
    };
    Ok(Json(TicketDto {
        ticket,
        expires_in: TICKET_SECONDS,
    }))
}

/// The Bearer token of a request, if it has one.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

#[derive(Serialize, ToSchema)]
pub struct MeetingDto {
    /// The room to `join` over `/ws`, `booking:<id>`.
    pub room: String,
}

/// Opens the meeting room of a booking (or finds it open). For the resident
/// who booked it, and for staff the policy lets handle the booking.
#[utoipa::path(post, path = "/api/meetings/{booking_id}/open", security(("bearer" = [])), responses((status = 200, body = MeetingDto), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, description = "The booking is cancelled or over", body = ErrorBody)))]
#[tracing::instrument(skip(state, session), fields(sub = %session.claims.sub))]
pub async fn open_meeting(
    State(state): State<AppState>,
    session: Session,
    Path(booking_id): Path<String>,
) -> Result<Json<MeetingDto>, AppError> {
    let now = crate::clock::now();
    let booking = match session.claims.kind {
        SubjectKind::Resident => {
            let resident = crate::auth::resident_of(&state.db, &session.claims)
                .await?
                .ok_or(AppError::Unauthorized)?;
            bookings::for_resident_by_id(&state.db, &resident, &path_id(&booking_id)?, now).await?
        }
        SubjectKind::Staff => {
            let staff = crate::auth::staff_of(&state.db, &session.claims)
                .await?
                .ok_or(AppError::Unauthorized)?;
            bookings::for_staff(&state.db, &staff, &path_id(&booking_id)?, now)
                .await?
                .0
        }
    };
    if !booking.is_joinable(now) {
        return Err(AppError::Conflict(
            if booking.status == booking::BookingStatus::Booked {
                "the meeting has ended".to_owned()
            } else {
                format!("the booking is {}", booking.status.as_str())
            },
        ));
    }
    let setup = meeting_setup(&state.db, &state.hub, &booking).await?;
    let room = setup.room.to_string();
    state
        .hub
        .open_meeting(setup)
        .await
        .context("opening a meeting room")?;
    Ok(Json(MeetingDto { room }))
}

/// The socket's read buffer; see [`upgrade`].
const READ_BUFFER_BYTES: usize = 4 * 1024;

#[derive(Deserialize)]
pub struct UpgradeParams {
    ticket: Option<String>,
}

/// Upgrades to the real-time protocol, for the holder of a valid ticket
/// only: anything else is refused with 401 before the upgrade.
pub async fn upgrade(
    State(state): State<AppState>,
    Query(params): Query<UpgradeParams>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let now = crate::clock::now().as_second();
    let Some(subject) = params
        .ticket
        .as_deref()
        .and_then(|t| state.tickets.redeem(t, now))
    else {
        return AppError::Unauthorized.into_response();
    };
    let (identity, chat) = match subject {
        TicketSubject::Account { id, kind } => match identity(&state.db, &id, kind).await {
            Ok(identity) => (identity, None),
            Err(e) => return e.into_response(),
        },
        TicketSubject::Anonymous(chat) => match RoomId::parse(&chat.room) {
            Ok(conversation) => (Identity::Anonymous { conversation }, Some(chat)),
            Err(_) => return AppError::Unauthorized.into_response(),
        },
        TicketSubject::Guest(guest) => match (
            RoomId::parse(&guest.room),
            InvitationToken::parse(&guest.invitation),
        ) {
            (Ok(room), Ok(invitation)) => (Identity::Guest { room, invitation }, None),
            _ => return AppError::Unauthorized.into_response(),
        },
    };
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    let hub = state.hub.clone();
    let db = state.db.clone();
    let liveness = socket::Liveness {
        ping_every: Duration::from_millis(state.settings.ws_ping_ms.max(1)),
        pong_within: Duration::from_millis(state.settings.ws_pong_timeout_ms.max(1)),
    };
    upgrade
        // Frames up to twice the protocol's limit reach the protocol, which
        // closes with 1009; larger ones are cut off by the socket itself.
        .max_message_size(signaling::protocol::MAX_FRAME_BYTES * 2)
        // tungstenite allocates the read buffer up front, 128 KiB by
        // default: most of an idle connection's memory. Frames here are
        // small, and a larger one is read in several turns.
        .read_buffer_size(READ_BUFFER_BYTES)
        .on_upgrade(move |socket| socket::run(socket, hub, db, identity, chat, liveness))
}

/// The hub identity of a ticket's or session's subject, from the database.
async fn identity(db: &Db, id: &str, kind: SubjectKind) -> Result<Identity, AppError> {
    let bad = |what: &str| AppError::Internal(anyhow::anyhow!("{what} is not a valid hub id"));
    match kind {
        SubjectKind::Resident => {
            let resident = match ResidentId::parse(id) {
                Ok(id) => booking::accounts::resident_by_id(db, &id).await?,
                // Text that is no id is no account's.
                Err(_) => None,
            }
            .ok_or(AppError::Unauthorized)?;
            Ok(Identity::Resident {
                id: resident.id,
                home_municipality: MunicipalityCode::parse(resident.home.as_str())
                    .map_err(|_| bad("a municipality code"))?,
            })
        }
        SubjectKind::Staff => {
            let staff = match StaffId::parse(id) {
                Ok(id) => booking::accounts::staff_by_id(db, &id).await?,
                Err(_) => None,
            }
            .ok_or(AppError::Unauthorized)?;
            // The services whose chats they may take, "I don't know" too.
            let may_handle = staff
                .chat_services()
                .iter()
                .map(|s| ServiceId::parse(s.as_str()))
                .collect::<Result<BTreeSet<_>, _>>()
                .map_err(|_| bad("a service code"))?;
            Ok(Identity::Staff {
                id: staff.id,
                municipality: MunicipalityCode::parse(staff.municipality.as_str())
                    .map_err(|_| bad("a municipality code"))?,
                may_handle,
            })
        }
    }
}

/// The hub's setup of a booking's meeting room. Who may enter it comes
/// from `booking`'s one rule for who may handle the booking, so the room
/// lets in exactly the staff that may read the booking through the API.
async fn meeting_setup(db: &Db, hub: &Hub, booking: &Booking) -> Result<MeetingSetup, AppError> {
    let bad = |what: &str| AppError::Internal(anyhow::anyhow!("{what} is not a valid hub id"));
    let clock = hub.clock();
    let staff_access = StaffAccess::only(bookings::staff_who_may_handle(db, booking).await?);
    Ok(MeetingSetup {
        room: RoomId::parse(format!("booking:{}", booking.id)).map_err(|_| bad("a booking id"))?,
        booking: Some(booking.id.clone()),
        performing_municipality: MunicipalityCode::parse(booking.performed_by.as_str())
            .map_err(|_| bad("a municipality code"))?,
        staff_access,
        staff: Some(booking.staff_id.clone()),
        resident: PartyId::resident(&booking.resident_id),
        home_municipality: Some(
            MunicipalityCode::parse(booking.performed_for.as_str())
                .map_err(|_| bad("a municipality code"))?,
        ),
        starts_at: Some(clock.instant_at(booking.range.start().as_second())),
        no_show_grace: NO_SHOW_GRACE,
        pre_admitted: Vec::new(),
        clock,
    })
}

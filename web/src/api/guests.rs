//! Guest links: staff in a booking's meeting invite an interpreter or a
//! colleague. The room makes the single-use invitation over `/ws`
//! (`meeting.invite`, answered by `meeting.invited` with its token); this
//! endpoint turns it into a link to `/guest/{token}`, signed for that one
//! room and valid until a while after the meeting ends, and mails it when
//! asked. The link opens nothing but tickets for that room, and the room
//! lets it in once, into the waiting room, where staff admit the guest.

use axum::extract::{Path, State};
use axum::routing::post;
use axum::{Json, Router};
use booking::audit::Outcome;
use booking::bookings;
use booking::{BookingStatus, EmailAddress, Language};
use serde::{Deserialize, Serialize};
use signaling::ids::InvitationToken;
use utoipa::ToSchema;

use super::ApiJson;
use crate::auth::CurrentStaff;
use crate::clock::now;
use crate::error::{path_id, AppError, ErrorBody};
use crate::state::AppState;
use crate::ws::GuestPass;

/// How long after the meeting's end a guest link still works, for a
/// meeting that runs over.
pub const GUEST_LINK_MARGIN_SECS: i64 = 3600;

/// The languages an interpreter may be invited for, as ISO 639 codes; the
/// pages name each as `page.guest.language.<code>`.
pub const INTERPRETER_LANGUAGES: &[&str] = &["ar", "so", "ti", "fa", "uk", "en", "fi", "pl"];

pub fn router() -> Router<AppState> {
    Router::new().route("/api/meetings/{booking_id}/guests", post(guest_link))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GuestLinkRequest {
    /// The token of `meeting.invited`, which the room made for this guest.
    pub invitation: String,
    /// `interpreter` or `social_worker`, as in `meeting.invite`.
    pub role: String,
    /// For an interpreter, the language to interpret (see
    /// [`INTERPRETER_LANGUAGES`]).
    pub interpreting: Option<String>,
    /// Mail the link here too.
    pub email: Option<String>,
    /// The mail's language: sv (default), en, fi or ar.
    pub mail_language: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct GuestLinkDto {
    /// The link to give the guest.
    pub url: String,
    /// Until when it works (unix seconds, UTC).
    pub expires_at: i64,
    /// Whether it was mailed.
    pub mailed: bool,
}

/// A guest link to a booking's meeting room, for staff who may handle the
/// booking (everyone else gets 404, as for the booking). The invitation
/// is audit-logged as `meeting.guest_invite`.
#[utoipa::path(post, path = "/api/meetings/{booking_id}/guests", request_body = GuestLinkRequest, security(("bearer" = [])), responses(
    (status = 200, body = GuestLinkDto),
    (status = 401, body = ErrorBody),
    (status = 403, description = "Not staff", body = ErrorBody),
    (status = 404, body = ErrorBody),
    (status = 409, description = "The booking is cancelled or over", body = ErrorBody),
    (status = 422, body = ErrorBody),
))]
#[tracing::instrument(skip(state, staff, body), fields(staff = %staff.0.id))]
pub async fn guest_link(
    State(state): State<AppState>,
    staff: CurrentStaff,
    Path(booking_id): Path<String>,
    ApiJson(body): ApiJson<GuestLinkRequest>,
) -> Result<Json<GuestLinkDto>, AppError> {
    let now = now();
    let invitation = InvitationToken::parse(&body.invitation)
        .map_err(|_| AppError::Invalid("invitation: not a token of meeting.invited".into()))?;
    let interpreting = match (body.role.as_str(), body.interpreting.as_deref()) {
        ("interpreter", Some(code)) if INTERPRETER_LANGUAGES.contains(&code) => {
            Some(code.to_owned())
        }
        ("interpreter", _) => {
            return Err(AppError::Invalid(format!(
                "interpreting: one of {}",
                INTERPRETER_LANGUAGES.join(", ")
            )))
        }
        ("social_worker", None) => None,
        ("social_worker", Some(_)) => {
            return Err(AppError::Invalid(
                "interpreting: only for an interpreter".into(),
            ))
        }
        _ => {
            return Err(AppError::Invalid(
                "role: interpreter or social_worker".into(),
            ))
        }
    };
    let email = body.email.as_deref().map(EmailAddress::parse).transpose()?;
    let mail_language = body
        .mail_language
        .as_deref()
        .map(Language::parse)
        .transpose()?
        .unwrap_or_default();
    // The one rule for who may handle the booking, audited as a read.
    let (booking, _) =
        bookings::for_staff(&state.db, &staff.0, &path_id(&booking_id)?, now).await?;
    let ends_at = booking.range.end().as_second();
    let expires_at = ends_at + GUEST_LINK_MARGIN_SECS;
    if booking.status != BookingStatus::Booked || expires_at <= now.as_second() {
        return Err(AppError::Conflict(format!(
            "the booking is {}",
            if booking.status == BookingStatus::Booked {
                "over"
            } else {
                booking.status.as_str()
            }
        )));
    }
    let pass = GuestPass {
        room: format!("booking:{}", booking.id),
        invitation: invitation.to_string(),
        role: body.role,
        language: interpreting,
        starts_at: booking.range.start().as_second(),
        ends_at,
    };
    let token = state
        .tickets
        .issue_guest_link(&pass, now.as_second(), expires_at);
    bookings::audit_meeting_access(
        &state.db,
        &staff.0.id,
        &booking.id,
        "meeting.guest_invite",
        Outcome::Allowed,
        now,
    )
    .await?;
    if let Some(email) = &email {
        booking::outbox::guest_invitation(
            &state.db,
            email,
            mail_language,
            &token,
            pass.starts_at,
            pass.ends_at,
            now.as_second(),
        )
        .await?;
    }
    let base = state.settings.public_url.trim_end_matches('/');
    Ok(Json(GuestLinkDto {
        url: format!("{base}/guest/{token}"),
        expires_at,
        mailed: email.is_some(),
    }))
}

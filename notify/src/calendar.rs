//! Calendar invitations (RFC 5545 objects carried by iTIP, RFC 5546) so that a
//! booking lands in the resident's calendar, moves with it and disappears when
//! it is cancelled.
//!
//! Every invitation for one booking has the same `UID`, derived from the
//! booking id; the booking's `sequence` orders the versions. Like the mail
//! around it, an invitation says only "meeting with the social services",
//! and a discreet one not even that: its title is the neutral one the
//! resident chose, and its organizer carries a neutral name.

use booking::BookingId;
use chrono::{DateTime, Utc};
use icalendar::{Calendar, Component, Event, EventLike, EventStatus, Property};
use jiff::Timestamp;

use crate::render::{Link, Words};
use crate::Settings;

/// The iTIP method of an invitation (RFC 5546 §1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CalendarMethod {
    /// A new or changed event: calendars add or update it.
    Request,
    /// A cancelled event: calendars remove it.
    Cancel,
}

impl CalendarMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            CalendarMethod::Request => "REQUEST",
            CalendarMethod::Cancel => "CANCEL",
        }
    }
}

/// An `.ics` attachment and the method it carries, which also goes into the
/// attachment's `Content-Type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invitation {
    pub method: CalendarMethod,
    pub uid: String,
    pub ics: String,
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn request(
    booking_id: &BookingId,
    starts_at: i64,
    ends_at: i64,
    sequence: i64,
    links: &[Link],
    words: &Words<'_>,
    settings: &Settings,
    stamp: Timestamp,
) -> Invitation {
    build(
        CalendarMethod::Request,
        booking_id,
        starts_at,
        ends_at,
        sequence,
        links,
        words,
        settings,
        stamp,
    )
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn cancel(
    booking_id: &BookingId,
    starts_at: i64,
    ends_at: i64,
    sequence: i64,
    links: &[Link],
    words: &Words<'_>,
    settings: &Settings,
    stamp: Timestamp,
) -> Invitation {
    build(
        CalendarMethod::Cancel,
        booking_id,
        starts_at,
        ends_at,
        sequence,
        links,
        words,
        settings,
        stamp,
    )
}

/// The `UID` of every invitation for a booking.
pub fn event_uid(booking_id: &BookingId, settings: &Settings) -> String {
    format!(
        "booking-{booking_id}@{}",
        crate::mail_domain(&settings.from)
    )
}

#[allow(clippy::too_many_arguments)]
fn build(
    method: CalendarMethod,
    booking_id: &BookingId,
    starts_at: i64,
    ends_at: i64,
    sequence: i64,
    links: &[Link],
    words: &Words<'_>,
    settings: &Settings,
    stamp: Timestamp,
) -> Invitation {
    let uid = event_uid(booking_id, settings);
    let mut description = words.description();
    for link in links {
        description.push_str(&format!("\n{}: {}", link.label, link.url));
    }
    let mut event = Event::new();
    event
        .uid(&uid)
        .timestamp(utc(stamp.as_second()))
        .starts(utc(starts_at))
        .ends(utc(ends_at))
        .sequence(u32::try_from(sequence).unwrap_or(0))
        .summary(&words.summary())
        .description(&description);
    let mut organizer = Property::new(
        "ORGANIZER",
        format!("mailto:{}", crate::mail_address(&settings.from)),
    );
    if let Some(name) = words.organizer_name() {
        organizer.add_parameter("CN", &name);
    }
    event.append_property(organizer);
    match method {
        CalendarMethod::Request => {
            event.status(EventStatus::Confirmed);
            if let Some(join) = links.first() {
                event.location(&join.url).url(&join.url);
            }
        }
        CalendarMethod::Cancel => {
            event.status(EventStatus::Cancelled);
        }
    }
    let mut calendar = Calendar::empty();
    calendar
        .append_property(("VERSION", "2.0"))
        .append_property(("PRODID", "-//Kontakt//notify//EN"))
        .append_property(("CALSCALE", "GREGORIAN"))
        .append_property(("METHOD", method.as_str()))
        .push(event.done());
    Invitation {
        method,
        uid,
        ics: calendar.done().to_string(),
    }
}

fn utc(unix: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(unix, 0).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::render;
    use booking::outbox::Message;
    use booking::Language;

    fn check(message: Message, method: &str, sequence: &str, status: &str) {
        let settings = Settings::new("https://kontakt.example.se");
        let mail = render(&message, Language::Sv, &settings);
        let invitation = mail
            .invitation
            .expect("a booking change carries an invitation");
        let ics = invitation.ics;
        let unfolded = ics.replace("\r\n ", "");
        for line in [
            "BEGIN:VCALENDAR",
            &format!("METHOD:{method}"),
            "UID:booking-b-7@kontakt.localhost",
            &format!("SEQUENCE:{sequence}"),
            &format!("STATUS:{status}"),
            "DTSTART:20241203T090000Z",
            "DTEND:20241203T094500Z",
            "SUMMARY:Möte med socialtjänsten",
            "ORGANIZER:mailto:no-reply@kontakt.localhost",
            "END:VCALENDAR",
        ] {
            assert!(
                unfolded.lines().any(|l| l == line),
                "missing {line:?} in\n{ics}"
            );
        }
        assert_eq!(invitation.method.as_str(), method);
    }

    #[test]
    fn booking_requests_reschedule_bumps_sequence_and_cancel_cancels() {
        let (start, end) = (1_733_216_400, 1_733_216_400 + 2700);
        check(
            Message::BookingConfirmed {
                booking_id: BookingId::parse("b-7").unwrap(),
                starts_at: start,
                ends_at: end,
                sequence: 0,
                manage_token: "t".into(),
            },
            "REQUEST",
            "0",
            "CONFIRMED",
        );
        check(
            Message::BookingRescheduled {
                booking_id: BookingId::parse("b-7").unwrap(),
                starts_at: start,
                ends_at: end,
                previous_starts_at: start - 86_400,
                sequence: 1,
                manage_token: "t".into(),
            },
            "REQUEST",
            "1",
            "CONFIRMED",
        );
        check(
            Message::BookingCancelled {
                booking_id: BookingId::parse("b-7").unwrap(),
                starts_at: start,
                ends_at: end,
                sequence: 2,
            },
            "CANCEL",
            "2",
            "CANCELLED",
        );
    }

    #[test]
    fn other_messages_carry_no_invitation() {
        let settings = Settings::new("https://kontakt.example.se");
        assert!(render(&Message::NoteShared, Language::En, &settings)
            .invitation
            .is_none());
    }
}

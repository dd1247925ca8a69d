//! No mail may reveal what a contact is about or who handles it: every
//! template, in every language, with its calendar invitation and headers, is
//! checked against the sensitive fields of a seeded booking.

use std::time::SystemTime;

use booking::outbox::Message;
use booking::{EmailAddress, Language};
use notify::transport::{build_email, message_id};
use notify::{render, Settings};

/// What the demo seed holds that a mail must never show: service names,
/// municipalities that perform meetings, staff names, chat text and notes.
const SENSITIVE: &[&str] = &[
    "Ekonomiskt bistånd",
    "bistånd",
    "Missbruk och beroende",
    "missbruk",
    "beroende",
    "Våld i nära relationer",
    "våld",
    "Stöd till anhöriga",
    "anhörig",
    "Barn och familj",
    "ekonomiskt-bistand",
    "missbruk-beroende",
    "Dorotea",
    "Malå",
    "Norsjö",
    "Sorsele",
    "Storuman",
    "Vilhelmina",
    "Åsele",
    "Lycksele",
    "Helsingborg",
    "Karin Lindqvist",
    "Lindqvist",
    "Ahmed Hassan",
    "Jag behöver hjälp med hyran",
    "Uppföljning av ansökan om försörjningsstöd",
    "försörjningsstöd",
];

/// Every message kind, built from a seeded booking the way `booking` builds
/// them: only ids, times and tokens cross into the outbox.
fn every_message() -> Vec<Message> {
    let start = 1_733_216_400;
    let end = start + 2700;
    vec![
        Message::SignInLink {
            token: "sign-in-token".into(),
            expires_at: start,
        },
        Message::BookingConfirmed {
            booking_id: "0b7c".into(),
            starts_at: start,
            ends_at: end,
            sequence: 0,
            manage_token: "manage".into(),
        },
        Message::BookingRescheduled {
            booking_id: "0b7c".into(),
            starts_at: start + 86_400,
            ends_at: end + 86_400,
            previous_starts_at: start,
            sequence: 1,
            manage_token: "manage".into(),
        },
        Message::BookingCancelled {
            booking_id: "0b7c".into(),
            starts_at: start,
            ends_at: end,
            sequence: 2,
        },
        Message::Reminder {
            booking_id: "0b7c".into(),
            starts_at: start,
            ends_at: end,
            minutes_before: 1440,
            manage_token: "manage".into(),
        },
        Message::Reminder {
            booking_id: "0b7c".into(),
            starts_at: start,
            ends_at: end,
            minutes_before: 60,
            manage_token: "manage".into(),
        },
        Message::ChatPickedUp {
            conversation_id: "c-1".into(),
        },
        Message::NoteShared,
        Message::Knock {
            booking_id: "0b7c".into(),
            starts_at: start,
        },
    ]
}

#[test]
fn no_mail_in_any_language_names_a_service_municipality_staff_member_chat_or_note() {
    let settings = Settings::new("https://kontakt.example.se");
    let from = settings.from.parse().unwrap();
    let to = EmailAddress::parse("resident@example.se").unwrap();
    let mut checked = 0;
    for message in every_message() {
        for language in Language::ALL {
            let mail = render(&message, language, &settings);
            let email = build_email(
                &mail,
                &from,
                &to,
                &message_id("row", &settings),
                SystemTime::now(),
            )
            .unwrap();
            let mut texts = vec![
                ("subject", mail.subject.clone()),
                ("text", mail.text.clone()),
                ("html", mail.html.clone()),
                (
                    "formatted",
                    String::from_utf8_lossy(&email.formatted()).into_owned(),
                ),
            ];
            if let Some(invitation) = &mail.invitation {
                texts.push(("ics", invitation.ics.replace("\r\n ", "")));
            }
            for (part, text) in &texts {
                let lower = text.to_lowercase();
                for word in SENSITIVE {
                    assert!(
                        !lower.contains(&word.to_lowercase()),
                        "{} in {}: the {part} contains {word:?}:\n{text}",
                        message.kind(),
                        language.code()
                    );
                }
            }
            // What a mail does say: the social services and My pages.
            assert!(!mail.subject.is_empty() && !mail.text.is_empty());
            checked += 1;
        }
    }
    assert_eq!(checked, 9 * 4);
}

/// The check above is only worth something if it would notice a leak.
#[test]
fn the_secrecy_check_notices_a_leak() {
    let leaked = "Ditt möte om Ekonomiskt bistånd i Dorotea".to_lowercase();
    let hits: Vec<&&str> = SENSITIVE
        .iter()
        .filter(|word| leaked.contains(&word.to_lowercase()))
        .collect();
    assert!(hits.len() >= 2, "{hits:?}");
}

#[test]
fn booking_mails_point_to_my_pages() {
    let settings = Settings::new("https://kontakt.example.se");
    for message in every_message() {
        if message.booking_id().is_none() || matches!(message, Message::Knock { .. }) {
            continue;
        }
        for language in Language::ALL {
            let mail = render(&message, language, &settings);
            assert!(
                mail.links
                    .iter()
                    .any(|l| l.url == "https://kontakt.example.se/my"),
                "{} in {}",
                message.kind(),
                language.code()
            );
        }
    }
}

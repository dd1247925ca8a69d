//! No mail may reveal what a contact is about or who handles it: every
//! template, in every language, with its calendar invitation and headers, is
//! checked against the sensitive fields of a seeded booking. In discreet
//! mode (a discreet service, or a resident who asked for discreet mail) the
//! mail must not even name the social services, in any language.

use std::time::SystemTime;

use booking::outbox::{Message, NeutralTitle};
use booking::{BookingId, EmailAddress, Language, RoomId};
use lettre::message::Mailbox;
use notify::transport::{build_email, message_id};
use notify::{render, render_discreet, RenderedMail, Settings};

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
            booking_id: BookingId::parse("0b7c").unwrap(),
            starts_at: start,
            ends_at: end,
            sequence: 0,
            manage_token: "manage".into(),
        },
        Message::BookingRescheduled {
            booking_id: BookingId::parse("0b7c").unwrap(),
            starts_at: start + 86_400,
            ends_at: end + 86_400,
            previous_starts_at: start,
            sequence: 1,
            manage_token: "manage".into(),
        },
        Message::BookingCancelled {
            booking_id: BookingId::parse("0b7c").unwrap(),
            starts_at: start,
            ends_at: end,
            sequence: 2,
        },
        Message::Reminder {
            booking_id: BookingId::parse("0b7c").unwrap(),
            starts_at: start,
            ends_at: end,
            minutes_before: 1440,
            manage_token: "manage".into(),
        },
        Message::Reminder {
            booking_id: BookingId::parse("0b7c").unwrap(),
            starts_at: start,
            ends_at: end,
            minutes_before: 60,
            manage_token: "manage".into(),
        },
        Message::ChatPickedUp {
            conversation_id: RoomId::parse("c-1").unwrap(),
        },
        Message::NoteShared,
        Message::Knock {
            booking_id: BookingId::parse("0b7c").unwrap(),
            starts_at: start,
        },
        Message::OfflineMessageReceived,
        Message::GuestInvitation {
            token: "guest".into(),
            starts_at: start,
            ends_at: end,
        },
    ]
}

/// The words for the social services in each language, which a discreet
/// mail must not contain (lower case, and short enough to catch inflected
/// forms).
const SOCIAL_SERVICES: &[&str] = &[
    "socialtjänst",
    "socialsekreterare",
    "social services",
    "social worker",
    "sosiaalipalvel",
    "sosiaalitoim",
    "sosiaalityöntekijä",
    "الخدمات الاجتماعية",
    "الأخصائي الاجتماعي",
];

/// Every readable text of a rendered mail: subject, both parts, the
/// invitation, and the whole MIME message with every header as sent.
fn texts(mail: &RenderedMail, settings: &Settings) -> Vec<(&'static str, String)> {
    let configured: Mailbox = settings.from.parse().unwrap();
    let from = match &mail.sender_name {
        Some(name) => Mailbox::new(Some(name.clone()), configured.email),
        None => configured,
    };
    let to = EmailAddress::parse("resident@example.se").unwrap();
    let email = build_email(
        mail,
        &from,
        &to,
        &message_id("row", settings),
        SystemTime::now(),
    )
    .unwrap();
    let mut texts = vec![
        ("subject", mail.subject.clone()),
        ("text", mail.text.clone()),
        ("html", mail.html.clone()),
        ("from", from.to_string()),
        (
            "formatted",
            String::from_utf8_lossy(&email.formatted()).into_owned(),
        ),
    ];
    if let Some(invitation) = &mail.invitation {
        texts.push(("ics", invitation.ics.replace("\r\n ", "")));
    }
    texts
}

/// Asserts that no text of `mail` contains any of `words`.
fn check_absent(mail: &RenderedMail, settings: &Settings, words: &[&str], what: &str) {
    for (part, text) in texts(mail, settings) {
        let lower = text.to_lowercase();
        for word in words {
            assert!(
                !lower.contains(&word.to_lowercase()),
                "{what}: the {part} contains {word:?}:\n{text}"
            );
        }
    }
}

#[test]
fn no_mail_in_any_language_names_a_service_municipality_staff_member_chat_or_note() {
    let settings = Settings::new("https://kontakt.example.se");
    let mut checked = 0;
    for message in every_message() {
        for language in Language::ALL {
            let mail = render(&message, language, &settings);
            let what = format!("{} in {}", message.kind(), language.code());
            check_absent(&mail, &settings, SENSITIVE, &what);
            // What a mail does say: the social services and My pages.
            assert!(!mail.subject.is_empty() && !mail.text.is_empty());
            checked += 1;
        }
    }
    assert_eq!(
        checked,
        11 * 4,
        "every kind of mail, the guest invitation included, in every language"
    );
}

/// Discreet mode: under every neutral title, in every language, no mail
/// names the social services, the service, a municipality or a staff member,
/// even when the configured sender's name does.
#[test]
fn no_discreet_mail_in_any_language_names_the_social_services() {
    let mut settings = Settings::new("https://kontakt.example.se");
    settings.from = "Socialtjänsten Dorotea <no-reply@kontakt.localhost>".into();
    let forbidden: Vec<&str> = SENSITIVE.iter().chain(SOCIAL_SERVICES).copied().collect();
    let mut checked = 0;
    for message in every_message() {
        if matches!(message, Message::Knock { .. }) {
            // Knocks go to staff, never discreet.
            continue;
        }
        for language in Language::ALL {
            for title in NeutralTitle::ALL {
                let mail = render_discreet(&message, language, title, &settings);
                let what = format!("{} in {} as {title:?}", message.kind(), language.code());
                check_absent(&mail, &settings, &forbidden, &what);
                assert!(!mail.subject.is_empty() && !mail.text.is_empty());
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 10 * 4 * 3);
}

/// A guest link goes to an interpreter or a colleague, who learns only that
/// there is a meeting and when: not even that it is with the social
/// services, although the mail is not discreet.
#[test]
fn a_guest_invitation_names_nothing_but_the_time_and_the_link() {
    let settings = Settings::new("https://kontakt.example.se");
    let forbidden: Vec<&str> = SENSITIVE.iter().chain(SOCIAL_SERVICES).copied().collect();
    let message = every_message()
        .into_iter()
        .find(|m| matches!(m, Message::GuestInvitation { .. }))
        .expect("a guest invitation");
    for language in Language::ALL {
        let mail = render(&message, language, &settings);
        check_absent(&mail, &settings, &forbidden, language.code());
        let urls: Vec<&str> = mail.links.iter().map(|l| l.url.as_str()).collect();
        assert_eq!(urls, ["https://kontakt.example.se/guest/guest"]);
        assert!(mail.invitation.is_none(), "no calendar entry");
    }
}

/// The discreet check is only worth something if an ordinary mail, which
/// does name the social services, fails it in every language.
#[test]
fn the_discreet_check_notices_the_social_services() {
    let settings = Settings::new("https://kontakt.example.se");
    let message = &every_message()[1];
    for language in Language::ALL {
        let mail = render(message, language, &settings);
        let named = texts(&mail, &settings).iter().any(|(_, text)| {
            let lower = text.to_lowercase();
            SOCIAL_SERVICES.iter().any(|w| lower.contains(w))
        });
        assert!(named, "{}: {}", language.code(), mail.text);
    }
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

//! Templates: one [`Message`] in one language becomes a subject, a plain-text
//! part, an HTML part, the links they carry and, for bookings, a calendar
//! invitation.
//!
//! Secrecy shapes every template: a mail names only "a meeting with the social
//! services", its time and its links. What the meeting is about, who holds it
//! and for which municipality stay on "My pages", behind a sign-in. The
//! [`Message`] variants carry nothing else, and every word comes from
//! `locales/*.yml`.
//!
//! A discreet mail (see `booking::bookings::discretion`) goes further: it
//! does not name the social services at all, in the subject, the sender's
//! name, the body or the calendar entry. It speaks of the neutral title the
//! resident chose ("Meeting", "Appointment", "Call") and its words come from
//! the `discreet.` keys.

use booking::outbox::{Message, NeutralTitle};
use booking::{BookingId, Language};
use jiff::tz::TimeZone;
use jiff::Timestamp;
use maud::{html, DOCTYPE};
use rust_i18n::t;

use crate::calendar::{self, Invitation};
use crate::{percent_encode, Settings};

/// The zone every time in a mail is shown in, and named.
pub const DISPLAY_ZONE: &str = "Europe/Stockholm";

/// Path of "My pages", where everything a mail leaves out can be read.
pub const MY_PAGES_PATH: &str = "/my";

/// A mail ready to be wrapped in MIME and sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedMail {
    pub language: Language,
    pub subject: String,
    pub text: String,
    pub html: String,
    /// The links of the mail, in the order they appear in both parts.
    pub links: Vec<Link>,
    /// A calendar invitation for booking changes.
    pub invitation: Option<Invitation>,
    /// The sender's display name to use instead of the configured one: a
    /// neutral name for a discreet mail, since the configured name may well
    /// be "Socialtjänsten".
    pub sender_name: Option<String>,
}

/// A labelled link of a mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub label: String,
    pub url: String,
}

/// Renders `message` in `language`, stamping a calendar invitation with the
/// current time.
pub fn render(message: &Message, language: Language, settings: &Settings) -> RenderedMail {
    render_stamped(message, language, None, settings, Timestamp::now())
}

/// Renders `message` as a discreet mail under the neutral `title`: nothing
/// in it names the social services.
pub fn render_discreet(
    message: &Message,
    language: Language,
    title: NeutralTitle,
    settings: &Settings,
) -> RenderedMail {
    render_stamped(message, language, Some(title), settings, Timestamp::now())
}

/// Renders `message`, using `stamp` as the invitation's `DTSTAMP`. The worker
/// passes the outbox row's creation time, so a retried mail is byte for byte
/// the same mail.
pub(crate) fn render_stamped(
    message: &Message,
    language: Language,
    discreet: Option<NeutralTitle>,
    settings: &Settings,
    stamp: Timestamp,
) -> RenderedMail {
    let lang = language.code();
    // The words of a mail: the ordinary key, or its discreet counterpart.
    let words = Words { lang, discreet };
    let base = settings.base_url();
    let my_pages = Link {
        label: tr("link.my_pages", lang),
        url: format!("{base}{MY_PAGES_PATH}"),
    };
    let join = |booking_id: &BookingId| Link {
        label: tr("link.join", lang),
        url: format!("{base}/join/{}", percent_encode(booking_id.as_str())),
    };
    // A resident who moved a booking while signed in had no token to give:
    // only its hash is stored. The link in the first mail still works, and
    // "My pages" manages the booking, so such a mail leaves the link out
    // rather than point at `/b/` with nothing after it.
    let with_manage = |links: [Link; 2], token: &str| -> Vec<Link> {
        let [join, my_pages] = links;
        let manage = (!token.is_empty()).then(|| Link {
            label: tr("link.manage", lang),
            url: format!("{base}/b/{}", percent_encode(token)),
        });
        std::iter::once(join)
            .chain(manage)
            .chain(std::iter::once(my_pages))
            .collect()
    };
    let mut invitation = None;
    let (subject, paragraphs, links) = match message {
        // Never sent as it is: the worker first turns it into a sign-in
        // link or drops it. Rendered without a link, should it ever be.
        Message::SignInRequest { .. } => (tr("sign_in.subject", lang), Vec::new(), Vec::new()),
        Message::SignInLink { token, expires_at } => (
            tr("sign_in.subject", lang),
            vec![t!(
                "sign_in.body",
                locale = lang,
                time = point_time(*expires_at, lang)
            )
            .into_owned()],
            vec![Link {
                label: tr("link.sign_in", lang),
                url: format!(
                    "{base}/auth/resident/callback?token={}",
                    percent_encode(token)
                ),
            }],
        ),
        Message::BookingConfirmed {
            booking_id,
            starts_at,
            ends_at,
            sequence,
            manage_token,
        } => {
            let links = with_manage([join(booking_id), my_pages], manage_token);
            invitation = Some(calendar::request(
                booking_id, *starts_at, *ends_at, *sequence, &links, &words, settings, stamp,
            ));
            (
                words.subject("booked"),
                vec![
                    words
                        .body("booked.body")
                        .replace("%{time}", &range_time(*starts_at, *ends_at, lang)),
                    tr("booked.join_hint", lang),
                    tr("mail.more", lang),
                ],
                links,
            )
        }
        Message::BookingRescheduled {
            booking_id,
            starts_at,
            ends_at,
            previous_starts_at,
            sequence,
            manage_token,
        } => {
            let links = with_manage([join(booking_id), my_pages], manage_token);
            invitation = Some(calendar::request(
                booking_id, *starts_at, *ends_at, *sequence, &links, &words, settings, stamp,
            ));
            (
                words.subject("moved"),
                vec![
                    words
                        .body("moved.body")
                        .replace("%{previous}", &point_time(*previous_starts_at, lang))
                        .replace("%{time}", &range_time(*starts_at, *ends_at, lang)),
                    tr("booked.join_hint", lang),
                    tr("mail.more", lang),
                ],
                links,
            )
        }
        Message::BookingCancelled {
            booking_id,
            starts_at,
            ends_at,
            sequence,
        } => {
            let links = vec![my_pages];
            invitation = Some(calendar::cancel(
                booking_id, *starts_at, *ends_at, *sequence, &links, &words, settings, stamp,
            ));
            (
                words.subject("cancelled"),
                vec![
                    words
                        .body("cancelled.body")
                        .replace("%{time}", &range_time(*starts_at, *ends_at, lang)),
                    tr("cancelled.rebook", lang),
                ],
                links,
            )
        }
        Message::Reminder {
            booking_id,
            starts_at,
            ends_at,
            minutes_before: _,
            manage_token,
        } => (
            words.subject("reminder"),
            vec![
                words
                    .body("reminder.body")
                    .replace("%{time}", &range_time(*starts_at, *ends_at, lang)),
                tr("reminder.prepare", lang),
                tr("mail.more", lang),
            ],
            with_manage([join(booking_id), my_pages], manage_token),
        ),
        Message::ChatPickedUp { conversation_id: _ } => (
            tr("chat.subject", lang),
            vec![words.body("chat.body")],
            vec![my_pages],
        ),
        Message::NoteShared => (
            tr("note.subject", lang),
            vec![words.body("note.body")],
            vec![my_pages],
        ),
        // The sender may have no account: no link to "My pages".
        Message::OfflineMessageReceived => (
            tr("offline.subject", lang),
            vec![words.body("offline.body")],
            Vec::new(),
        ),
        // A guest learns the time and gets the link, nothing more: not the
        // service, not the social services, not who else takes part.
        Message::GuestInvitation {
            token,
            starts_at,
            ends_at,
        } => (
            tr("guest.subject", lang),
            vec![t!(
                "guest.body",
                locale = lang,
                time = range_time(*starts_at, *ends_at, lang)
            )
            .into_owned()],
            vec![Link {
                label: tr("link.guest", lang),
                url: format!("{base}/guest/{}", percent_encode(token)),
            }],
        ),
        Message::Knock {
            booking_id: _,
            starts_at,
        } => (
            tr("knock.subject", lang),
            vec![t!(
                "knock.body",
                locale = lang,
                time = point_time(*starts_at, lang)
            )
            .into_owned()],
            vec![Link {
                label: tr("link.staff", lang),
                url: format!("{base}/staff"),
            }],
        ),
    };
    let footer = tr("mail.footer", lang);
    RenderedMail {
        language,
        text: text_part(&paragraphs, &links, &footer),
        html: html_part(language, &subject, &paragraphs, &links, &footer),
        subject,
        links,
        invitation,
        sender_name: discreet.map(|_| tr("discreet.sender", lang)),
    }
}

/// Picks a mail's words: a discreet mail takes the `discreet.` counterpart
/// of each key that would name the social services.
pub(crate) struct Words<'a> {
    pub(crate) lang: &'a str,
    pub(crate) discreet: Option<NeutralTitle>,
}

impl Words<'_> {
    /// The subject of a booking mail of `kind` (`booked`, `moved`,
    /// `cancelled`, `reminder`); a discreet one names only the title.
    fn subject(&self, kind: &str) -> String {
        match self.discreet {
            Some(title) => tr(
                &format!("discreet.subject.{kind}.{}", title.as_str()),
                self.lang,
            ),
            None => tr(&format!("{kind}.subject"), self.lang),
        }
    }

    /// The text of `key`, placeholders left for the caller to fill.
    fn body(&self, key: &str) -> String {
        match self.discreet {
            Some(_) => tr(&format!("discreet.{key}"), self.lang),
            None => tr(key, self.lang),
        }
    }

    /// The calendar entry's title.
    pub(crate) fn summary(&self) -> String {
        match self.discreet {
            Some(title) => tr(&format!("discreet.title.{}", title.as_str()), self.lang),
            None => tr("calendar.summary", self.lang),
        }
    }

    /// The calendar entry's description, before its links.
    pub(crate) fn description(&self) -> String {
        self.body("calendar.description")
    }

    /// The organizer's common name in a calendar entry, if any.
    pub(crate) fn organizer_name(&self) -> Option<String> {
        self.discreet.map(|_| tr("discreet.sender", self.lang))
    }
}

/// A meeting's span, e.g. "tisdag 3 december 2024 kl. 10:00–10:45 (svensk
/// tid)". The zone is named in plain words, not by its technical id; Arabic
/// writes the span in words ("من الساعة … إلى الساعة …"), since a dash
/// between two numbers is reordered in right-to-left text.
pub(crate) fn range_time(starts_at: i64, ends_at: i64, lang: &str) -> String {
    let start = local(starts_at);
    let end = local(ends_at);
    t!(
        "time.range",
        locale = lang,
        weekday = tr(
            &format!("weekday.{}", start.weekday().to_monday_one_offset()),
            lang
        ),
        day = start.day(),
        month = tr(&format!("month.{}", start.month()), lang),
        year = start.year(),
        start = clock(&start, lang),
        end = clock(&end, lang)
    )
    .into_owned()
}

/// One moment, e.g. "tisdag 3 december 2024 kl. 10:00 (svensk tid)".
pub(crate) fn point_time(at: i64, lang: &str) -> String {
    let time = local(at);
    t!(
        "time.point",
        locale = lang,
        weekday = tr(
            &format!("weekday.{}", time.weekday().to_monday_one_offset()),
            lang
        ),
        day = time.day(),
        month = tr(&format!("month.{}", time.month()), lang),
        year = time.year(),
        time = clock(&time, lang)
    )
    .into_owned()
}

fn tr(key: &str, lang: &str) -> String {
    t!(key, locale = lang).into_owned()
}

fn local(unix: i64) -> jiff::Zoned {
    // Times come from the database as whole seconds; one out of jiff's range
    // would be a bug upstream, and the epoch is a visible, harmless stand-in.
    let ts = Timestamp::from_second(unix).unwrap_or(Timestamp::UNIX_EPOCH);
    ts.to_zoned(stockholm())
}

fn stockholm() -> TimeZone {
    // The bundled tzdb (see Cargo.toml) always has this zone; UTC is only a
    // fallback should that ever change.
    TimeZone::get(DISPLAY_ZONE).unwrap_or(TimeZone::UTC)
}

fn clock(time: &jiff::Zoned, lang: &str) -> String {
    t!(
        "time.clock",
        locale = lang,
        hour = format!("{:02}", time.hour()),
        minute = format!("{:02}", time.minute())
    )
    .into_owned()
}

fn text_part(paragraphs: &[String], links: &[Link], footer: &str) -> String {
    let mut out = String::new();
    for paragraph in paragraphs {
        out.push_str(paragraph);
        out.push_str("\n\n");
    }
    for link in links {
        out.push_str(&link.label);
        out.push_str(":\n");
        out.push_str(&link.url);
        out.push_str("\n\n");
    }
    out.push_str("-- \n");
    out.push_str(footer);
    out.push('\n');
    out
}

/// The HTML part, through maud, which escapes every text and attribute it
/// embeds, as it does for web's pages.
fn html_part(
    language: Language,
    subject: &str,
    paragraphs: &[String],
    links: &[Link],
    footer: &str,
) -> String {
    let dir = if language.is_rtl() { "rtl" } else { "ltr" };
    html! {
        (DOCTYPE)
        html lang=(language.code()) dir=(dir) {
            head {
                meta charset="utf-8";
                title { (subject) }
            }
            body dir=(dir) style="font-family: sans-serif; line-height: 1.5;" {
                @for paragraph in paragraphs {
                    p { (paragraph) }
                }
                @for link in links {
                    p { a href=(link.url) { (link.label) } }
                }
                hr;
                p style="color: #555; font-size: smaller;" { (footer) }
            }
        }
    }
    .into_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings::new("https://kontakt.example.se/")
    }

    // 2024-12-03 10:00 in Stockholm (CET, UTC+1) and a summer time.
    const WINTER: i64 = 1_733_216_400;
    const SUMMER: i64 = 1_719_392_400;

    fn booked() -> Message {
        Message::BookingConfirmed {
            booking_id: BookingId::parse("b-1").unwrap(),
            starts_at: WINTER,
            ends_at: WINTER + 45 * 60,
            sequence: 0,
            manage_token: "tok/en+1".into(),
        }
    }

    #[test]
    fn times_are_shown_in_stockholm_with_the_zone_named() {
        assert_eq!(
            range_time(WINTER, WINTER + 2700, "sv"),
            "tisdag 3 december 2024 kl. 10:00–10:45 (svensk tid)"
        );
        assert_eq!(
            point_time(WINTER, "en"),
            "Tuesday 3 December 2024 at 10:00 (Swedish time)"
        );
        assert_eq!(
            point_time(WINTER, "fi"),
            "tiistai 3. joulukuuta 2024 klo 10.00 (Ruotsin aikaa)"
        );
        // A dash between two numbers reorders in right-to-left text, so
        // Arabic says "from ... to ...".
        assert_eq!(
            range_time(WINTER, WINTER + 2700, "ar"),
            "الثلاثاء 3 ديسمبر 2024، من الساعة 10:00 إلى الساعة 10:45 (بتوقيت السويد)"
        );
        for lang in ["sv", "en", "fi", "ar"] {
            assert!(
                !range_time(WINTER, WINTER + 2700, lang).contains("Europe/"),
                "{lang} names the zone by its technical id"
            );
        }
        // 2024-06-26 09:00 UTC is 11:00 in Stockholm summer time (UTC+2).
        assert!(point_time(SUMMER, "sv").contains("kl. 11:00"));
    }

    #[test]
    fn daylight_saving_changes_move_the_local_clock() {
        // 2024-03-31 00:30 UTC is 01:30 CET; one hour later clocks jump to
        // 03:30 CEST. 2024-10-27 00:30 UTC is 02:30 CEST, an hour later 02:30
        // CET again.
        assert!(point_time(1_711_845_000, "sv").contains("kl. 01:30"));
        assert!(point_time(1_711_845_000 + 3600, "sv").contains("kl. 03:30"));
        assert!(point_time(1_729_989_000, "sv").contains("kl. 02:30"));
        assert!(point_time(1_729_989_000 + 3600, "sv").contains("kl. 02:30"));
    }

    #[test]
    fn links_are_built_from_the_public_url_and_encoded() {
        let mail = render(&booked(), Language::En, &settings());
        let urls: Vec<&str> = mail.links.iter().map(|l| l.url.as_str()).collect();
        assert_eq!(
            urls,
            [
                "https://kontakt.example.se/join/b-1",
                "https://kontakt.example.se/b/tok%2Fen%2B1",
                "https://kontakt.example.se/my",
            ]
        );
        for url in urls {
            assert!(mail.text.contains(url), "text part lacks {url}");
            assert!(
                mail.html.contains(&format!("href=\"{url}\"")),
                "html lacks {url}"
            );
        }
    }

    #[test]
    fn a_mail_without_a_manage_token_leaves_the_manage_link_out() {
        let moved = Message::BookingRescheduled {
            booking_id: BookingId::parse("b-1").unwrap(),
            starts_at: WINTER,
            ends_at: WINTER + 45 * 60,
            previous_starts_at: SUMMER,
            sequence: 1,
            manage_token: String::new(),
        };
        let reminder = Message::Reminder {
            booking_id: BookingId::parse("b-1").unwrap(),
            starts_at: WINTER,
            ends_at: WINTER + 45 * 60,
            minutes_before: 60,
            manage_token: String::new(),
        };
        for message in [moved, reminder] {
            let mail = render(&message, Language::Sv, &settings());
            let urls: Vec<&str> = mail.links.iter().map(|l| l.url.as_str()).collect();
            assert_eq!(
                urls,
                [
                    "https://kontakt.example.se/join/b-1",
                    "https://kontakt.example.se/my",
                ],
                "{message:?}"
            );
            assert!(!mail.text.contains("/b/"), "{}", mail.text);
            assert!(!mail.html.contains("/b/"), "{}", mail.html);
            let invitation = mail.invitation.map(|i| i.ics).unwrap_or_default();
            assert!(!invitation.contains("/b/"), "{invitation}");
        }
    }

    #[test]
    fn arabic_html_runs_right_to_left_and_others_left_to_right() {
        let ar = render(&booked(), Language::Ar, &settings());
        assert!(
            ar.html.contains("<html lang=\"ar\" dir=\"rtl\">"),
            "{}",
            ar.html
        );
        let sv = render(&booked(), Language::Sv, &settings());
        assert!(sv.html.contains("<html lang=\"sv\" dir=\"ltr\">"));
        assert_ne!(ar.subject, sv.subject);
    }

    #[test]
    fn a_discreet_mail_names_only_its_neutral_title() {
        let social_services = [
            "socialtjänst",
            "social services",
            "sosiaalipalvel",
            "الخدمات الاجتماعية",
        ];
        let cancelled = Message::BookingCancelled {
            booking_id: BookingId::parse("b-1").unwrap(),
            starts_at: WINTER,
            ends_at: WINTER + 2700,
            sequence: 1,
        };
        for message in [booked(), cancelled] {
            for language in Language::ALL {
                let ordinary = render(&message, language, &settings());
                assert_eq!(ordinary.sender_name, None);
                for title in NeutralTitle::ALL {
                    let mail = render_discreet(&message, language, title, &settings());
                    let ics = mail.invitation.as_ref().unwrap().ics.replace("\r\n ", "");
                    let all = format!("{}\n{}\n{}\n{ics}", mail.subject, mail.text, mail.html)
                        .to_lowercase();
                    for words in social_services {
                        assert!(!all.contains(words), "{language:?} {title:?}: {all}");
                    }
                    let summary = tr(
                        &format!("discreet.title.{}", title.as_str()),
                        language.code(),
                    );
                    assert!(
                        ics.lines().any(|l| l == format!("SUMMARY:{summary}")),
                        "{ics}"
                    );
                    let sender = mail.sender_name.expect("a neutral sender name");
                    assert!(
                        ics.contains(&format!("ORGANIZER;CN={sender}:mailto:")),
                        "{ics}"
                    );
                    assert_ne!(mail.subject, ordinary.subject);
                }
            }
        }
    }

    #[test]
    fn html_escapes_what_it_embeds() {
        let mut s = settings();
        s.public_url = "https://x.se/\"><script>".into();
        let mail = render(&Message::NoteShared, Language::Sv, &s);
        assert!(!mail.html.contains("<script>"), "{}", mail.html);
        let links = [Link {
            label: "a<b>&\"c'".into(),
            url: "https://x.se/?a=\"b\"&c=<d>".into(),
        }];
        let html = html_part(Language::Sv, "<s>", &["<p>&".into()], &links, "<f>");
        assert!(html.contains("<title>&lt;s&gt;</title>"), "{html}");
        assert!(html.contains("<p>&lt;p&gt;&amp;</p>"), "{html}");
        assert!(
            html.contains("href=\"https://x.se/?a=&quot;b&quot;&amp;c=&lt;d&gt;\""),
            "{html}"
        );
        assert!(html.contains(">a&lt;b&gt;&amp;&quot;c'</a>"), "{html}");
        assert!(html.contains("&lt;f&gt;"), "{html}");
    }

    #[test]
    fn every_key_exists_in_every_locale() {
        let keys = |lang: &str| -> std::collections::BTreeSet<String> {
            let path = format!("{}/locales/{lang}.yml", env!("CARGO_MANIFEST_DIR"));
            std::fs::read_to_string(&path)
                .unwrap()
                .lines()
                .filter(|l| !l.starts_with('#') && !l.starts_with(' ') && l.contains(':'))
                .map(|l| l.split(':').next().unwrap().trim().to_owned())
                .collect()
        };
        let sv = keys("sv");
        assert!(sv.len() > 40, "sv.yml looks truncated: {sv:?}");
        for lang in ["en", "fi", "ar"] {
            assert_eq!(keys(lang), sv, "{lang}.yml and sv.yml differ in keys");
        }
    }
}

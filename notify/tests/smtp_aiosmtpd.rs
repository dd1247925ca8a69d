//! The worker against a real SMTP server: Debian's `python3-aiosmtpd`, run by
//! `smtp_server.py` on a free loopback port with a Maildir. Without aiosmtpd
//! these tests print a notice and pass, unless `CI` is set: then they fail.
//! Each runs on SQLite, and on PostgreSQL when `DATABASE_URL` is set.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use booking::outbox::delivery;
use booking::outbox::{Message, NeutralTitle};
use booking::{BookingId, Db, Language};
use common::*;
use notify::mailbox::{self, StoredMail};
use notify::{Settings, Worker};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const WAIT: Duration = Duration::from_secs(30);

/// A running `smtp_server.py`.
struct SmtpServer {
    child: Child,
    port: u16,
    maildir: PathBuf,
}

impl SmtpServer {
    async fn start(
        python: &Path,
        port: u16,
        maildir: &Path,
        reject: &[&str],
        delay_ms: u64,
    ) -> SmtpServer {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/smtp_server.py");
        let mut command = Command::new(python);
        command
            .arg(script)
            .arg("--port")
            .arg(port.to_string())
            .arg("--maildir")
            .arg(maildir)
            .arg("--delay-ms")
            .arg(delay_ms.to_string())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        for address in reject {
            command.arg("--reject").arg(address);
        }
        let mut child = command.spawn().expect("start smtp_server.py");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        tokio::time::timeout(WAIT, BufReader::new(stdout).read_line(&mut line))
            .await
            .expect("smtp_server.py did not get ready")
            .unwrap();
        assert_eq!(line.trim(), "ready", "smtp_server.py said {line:?}");
        SmtpServer {
            child,
            port,
            maildir: maildir.to_path_buf(),
        }
    }

    async fn stop(mut self) {
        self.child.kill().await.unwrap();
    }

    fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Every mail delivered so far, in no particular order.
    fn mails(&self) -> Vec<StoredMail> {
        read_maildir(&self.maildir)
    }

    /// Waits until at least `n` mails are delivered, and returns them.
    async fn wait_for(&self, n: usize) -> Vec<StoredMail> {
        eventually(&format!("{n} mails in the Maildir"), WAIT, || {
            let mails = self.mails();
            async move { (mails.len() >= n).then_some(mails) }
        })
        .await
    }
}

fn read_maildir(maildir: &Path) -> Vec<StoredMail> {
    let Ok(entries) = std::fs::read_dir(maildir.join("new")) else {
        return Vec::new();
    };
    entries
        .map(|entry| {
            let path = entry.unwrap().path();
            let raw = std::fs::read(&path).unwrap();
            mailbox::parse(&path.file_name().unwrap().to_string_lossy(), &raw)
                .expect("a parsable mail")
        })
        .collect()
}

/// The Python with aiosmtpd, or `None` (after a notice) when there is none
/// and `CI` is not set.
fn python_with_aiosmtpd() -> Option<PathBuf> {
    // Debian's package installs for the system Python, which a pyenv or venv
    // `python3` earlier on PATH does not see.
    for candidate in ["/usr/bin/python3", "python3"] {
        let found = std::process::Command::new(candidate)
            .args(["-c", "import aiosmtpd"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if found {
            return Some(PathBuf::from(candidate));
        }
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI is set but python3-aiosmtpd is missing: apt-get install -y python3-aiosmtpd"
    );
    eprintln!("notice: python3-aiosmtpd is not installed; skipping the SMTP tests (apt-get install -y python3-aiosmtpd)");
    None
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn smtp_settings(url: &str) -> Settings {
    let mut settings = Settings::new("https://kontakt.example.se");
    settings.smtp_url = Some(url.to_owned());
    settings.smtp_timeout_secs = 10;
    settings
}

fn by_message_id(mails: &[StoredMail]) -> HashMap<String, Vec<&StoredMail>> {
    let mut map: HashMap<String, Vec<&StoredMail>> = HashMap::new();
    for mail in mails {
        map.entry(
            mail.message_id
                .clone()
                .expect("every mail has a Message-ID"),
        )
        .or_default()
        .push(mail);
    }
    map
}

fn expected_message_id(row_id: &str) -> String {
    format!("<outbox.{row_id}@kontakt.localhost>")
}

#[tokio::test]
async fn delivered_mails_have_headers_both_parts_the_invitation_and_the_language() {
    let Some(python) = python_with_aiosmtpd() else {
        return;
    };
    each_database(|db, name| {
        let python = python.clone();
        async move {
            let dir = tempfile::tempdir().unwrap();
            let server = SmtpServer::start(&python, free_port(), dir.path(), &[], 0).await;
            let worker = Worker::new(db.clone(), smtp_settings(&server.url())).unwrap();
            let t = now();
            let start = 1_733_216_400; // Tuesday 3 December 2024, 10:00 in Stockholm.
            let confirmed = put(
                &db,
                "sv@example.se",
                Language::Sv,
                &booked("b9", start, 0),
                t,
            )
            .await;
            let moved = Message::BookingRescheduled {
                booking_id: BookingId::parse("b9").unwrap(),
                starts_at: start + 86_400,
                ends_at: start + 86_400 + 2700,
                previous_starts_at: start,
                sequence: 1,
                manage_token: "manage-b9".into(),
            };
            let moved = put(&db, "en@example.se", Language::En, &moved, t).await;
            let cancelled = Message::BookingCancelled {
                booking_id: BookingId::parse("b9").unwrap(),
                starts_at: start + 86_400,
                ends_at: start + 86_400 + 2700,
                sequence: 2,
            };
            let cancelled = put(&db, "ar@example.se", Language::Ar, &cancelled, t).await;
            let sign_in = Message::SignInLink {
                token: "tok".into(),
                expires_at: start,
            };
            let sign_in = put(&db, "fi@example.se", Language::Fi, &sign_in, t).await;

            let report = worker.run_once(at(t)).await.unwrap();
            assert_eq!(
                report.sent,
                4,
                "{name}: {report:?} {:?}",
                row_state(&db, &confirmed).await
            );
            let mails = server.wait_for(4).await;
            let mails = by_message_id(&mails);
            let mail = |row: &str| {
                let found = &mails[&expected_message_id(row)];
                assert_eq!(found.len(), 1, "{name}: one mail per row");
                found[0]
            };

            let sv = mail(&confirmed);
            assert_eq!(sv.to, "sv@example.se");
            assert_eq!(sv.from, "no-reply@kontakt.localhost");
            assert_eq!(sv.subject, "Din tid hos socialtjänsten är bokad");
            assert_eq!(sv.language.as_deref(), Some("sv"));
            assert!(sv.date.is_some());
            assert!(
                sv.text
                    .contains("tisdag 3 december 2024 kl. 10:00–10:45 (svensk tid)"),
                "{}",
                sv.text
            );
            assert!(sv.html.contains("<html lang=\"sv\" dir=\"ltr\">"));
            assert!(sv
                .html
                .contains("href=\"https://kontakt.example.se/join/b9\""));
            assert!(sv
                .links
                .contains(&"https://kontakt.example.se/b/manage-b9".to_owned()));
            let ics = sv.calendar.as_ref().expect("invitation");
            assert_eq!(ics.method.as_deref(), Some("REQUEST"));
            let unfolded = ics.ics.replace("\r\n ", "");
            for line in [
                "METHOD:REQUEST",
                "UID:booking-b9@kontakt.localhost",
                "SEQUENCE:0",
                "DTSTART:20241203T090000Z",
            ] {
                assert!(
                    unfolded.lines().any(|l| l == line),
                    "{name}: {line} missing in {unfolded}"
                );
            }

            let en = mail(&moved);
            assert_eq!(en.language.as_deref(), Some("en"));
            assert_eq!(
                en.subject,
                "Your appointment with social services has moved"
            );
            let ics = en.calendar.as_ref().unwrap().ics.replace("\r\n ", "");
            assert!(
                ics.contains("METHOD:REQUEST") && ics.contains("SEQUENCE:1"),
                "{ics}"
            );
            assert!(
                ics.contains("UID:booking-b9@kontakt.localhost"),
                "the same event moves"
            );

            let ar = mail(&cancelled);
            assert_eq!(ar.language.as_deref(), Some("ar"));
            assert!(ar.html.contains("dir=\"rtl\""));
            assert!(ar.text.contains("الخدمات الاجتماعية"));
            let calendar = ar.calendar.as_ref().unwrap();
            assert_eq!(calendar.method.as_deref(), Some("CANCEL"));
            let ics = calendar.ics.replace("\r\n ", "");
            assert!(
                ics.contains("METHOD:CANCEL")
                    && ics.contains("STATUS:CANCELLED")
                    && ics.contains("SEQUENCE:2"),
                "{ics}"
            );

            let fi = mail(&sign_in);
            assert_eq!(fi.subject, "Kirjautumislinkkisi");
            assert_eq!(
                fi.links,
                ["https://kontakt.example.se/auth/resident/callback?token=tok"]
            );
            assert!(fi.calendar.is_none());
            server.stop().await;
        }
    })
    .await;
}

/// Every decoded text of a raw mail: each header's value, each text and
/// HTML part and each attachment, as a reader or a lock screen would see
/// them after decoding.
fn decoded_texts(raw: &[u8]) -> Vec<String> {
    use mail_parser::{MessageParser, MimeHeaders};
    let message = MessageParser::default()
        .parse(raw)
        .expect("a parsable mail");
    let mut texts: Vec<String> = message
        .headers()
        .iter()
        .map(|h| format!("{}: {:?}", h.name(), h.value()))
        .collect();
    for part in message.parts.iter() {
        for header in part.headers() {
            texts.push(format!("{}: {:?}", header.name(), header.value()));
        }
        if let Some(text) = part.text_contents() {
            texts.push(text.to_owned());
        } else {
            texts.push(String::from_utf8_lossy(part.contents()).into_owned());
        }
        if let Some(name) = part.attachment_name() {
            texts.push(name.to_owned());
        }
    }
    texts
}

/// Discreet mode on a real SMTP server: confirmations, moves, cancellations
/// and reminders in all four languages under every neutral title arrive
/// without a word for the social services, the service, a municipality or
/// the staff member, in any header, part or attachment, even though the
/// configured sender's name says "Socialtjänsten".
#[tokio::test]
async fn discreet_mail_names_no_social_services_in_any_language() {
    let Some(python) = python_with_aiosmtpd() else {
        return;
    };
    each_database(|db, name| {
        let python = python.clone();
        async move {
            let dir = tempfile::tempdir().unwrap();
            let server = SmtpServer::start(&python, free_port(), dir.path(), &[], 0).await;
            let mut settings = smtp_settings(&server.url());
            settings.from = "Socialtjänsten Dorotea <no-reply@kontakt.localhost>".into();
            let worker = Worker::new(db.clone(), settings).unwrap();
            let t = now();
            let start = t + 3 * 86_400;
            let mut rows = Vec::new();
            for language in Language::ALL {
                for (i, title) in NeutralTitle::ALL.into_iter().enumerate() {
                    let booking = BookingId::parse(format!("d-{}-{i}", language.code())).unwrap();
                    let to = format!("{}-{i}@example.se", language.code());
                    let messages = [
                        booked(booking.as_str(), start, 0),
                        Message::BookingRescheduled {
                            booking_id: booking.clone(),
                            starts_at: start + 3600,
                            ends_at: start + 3600 + 2700,
                            previous_starts_at: start,
                            sequence: 1,
                            manage_token: "manage".into(),
                        },
                        Message::Reminder {
                            booking_id: booking.clone(),
                            starts_at: start + 3600,
                            ends_at: start + 3600 + 2700,
                            minutes_before: 60,
                            manage_token: "manage".into(),
                        },
                        Message::BookingCancelled {
                            booking_id: booking.clone(),
                            starts_at: start + 3600,
                            ends_at: start + 3600 + 2700,
                            sequence: 2,
                        },
                    ];
                    for message in &messages {
                        rows.push(put_discreet(&db, &to, language, message, Some(title), t).await);
                    }
                }
            }
            let mut sent = 0;
            while sent < rows.len() {
                let report = worker.run_once(at(t)).await.unwrap();
                assert!(report.sent > 0, "{name}: {report:?}");
                sent += report.sent;
            }
            server.wait_for(rows.len()).await;
            let forbidden = [
                "socialtjänst",
                "socialsekreterare",
                "social services",
                "sosiaalipalvel",
                "sosiaalitoim",
                "الخدمات الاجتماعية",
                "dorotea",
                "våld",
                "missbruk",
            ];
            let entries: Vec<_> = std::fs::read_dir(dir.path().join("new"))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            assert_eq!(entries.len(), rows.len(), "{name}");
            let mut with_calendar = 0;
            for path in entries {
                let raw = std::fs::read(&path).unwrap();
                let texts = decoded_texts(&raw);
                for text in &texts {
                    let lower = text.to_lowercase();
                    for word in forbidden {
                        assert!(
                            !lower.contains(word),
                            "{name}: {} contains {word:?}: {text}",
                            path.display()
                        );
                    }
                }
                let parsed = mailbox::parse("m", &raw).unwrap();
                if let Some(calendar) = &parsed.calendar {
                    with_calendar += 1;
                    assert!(calendar.ics.contains("ORGANIZER;CN="), "{}", calendar.ics);
                }
            }
            // Confirmations, moves and cancellations carry an invitation.
            assert_eq!(with_calendar, 3 * 4 * 3, "{name}");
            server.stop().await;
        }
    })
    .await;
}

#[tokio::test]
async fn mail_waits_out_an_outage_and_arrives_once() {
    let Some(python) = python_with_aiosmtpd() else {
        return;
    };
    each_database(|db, name| {
        let python = python.clone();
        async move {
            let dir = tempfile::tempdir().unwrap();
            let port = free_port();
            let server = SmtpServer::start(&python, port, dir.path(), &[], 0).await;
            let mut settings = smtp_settings(&server.url());
            settings.retry_base_secs = 30;
            let worker = Worker::new(db.clone(), settings).unwrap();
            let t = now();
            // One mail goes through, warming the connection pool.
            put(
                &db,
                "warm@example.se",
                Language::Sv,
                &Message::NoteShared,
                t,
            )
            .await;
            assert_eq!(worker.run_once(at(t)).await.unwrap().sent, 1);
            server.wait_for(1).await;
            server.stop().await;

            let mut rows = Vec::new();
            for i in 0..5 {
                rows.push(
                    put(
                        &db,
                        &format!("o{i}@example.se"),
                        Language::Sv,
                        &Message::NoteShared,
                        t,
                    )
                    .await,
                );
            }
            let report = worker.run_once(at(t)).await.unwrap();
            assert_eq!(
                (report.claimed, report.retrying),
                (5, 5),
                "{name}: {report:?}"
            );
            let report = worker.run_once(at(t + 60)).await.unwrap();
            assert_eq!(report.retrying, 5, "{name}: still down: {report:?}");
            assert_eq!(read_maildir(dir.path()).len(), 1);

            let server = SmtpServer::start(&python, port, dir.path(), &[], 0).await;
            // The second backoff ends within 120 s of the second try.
            let report = worker.run_once(at(t + 60 + 120)).await.unwrap();
            assert_eq!(report.sent, 5, "{name}: {report:?}");
            let mails = server.wait_for(6).await;
            assert_eq!(worker.run_once(at(t + 10_000)).await.unwrap().claimed, 0);
            let mails = by_message_id(&mails);
            assert_eq!(mails.len(), 6, "{name}");
            for row in &rows {
                assert_eq!(
                    mails[&expected_message_id(row)].len(),
                    1,
                    "{name}: no duplicates"
                );
                assert_eq!(row_state(&db, row).await.0, "sent");
            }
            server.stop().await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_worker_killed_mid_batch_loses_nothing() {
    let Some(python) = python_with_aiosmtpd() else {
        return;
    };
    each_database(|db: Db, name| {
        let python = python.clone();
        async move {
            let dir = tempfile::tempdir().unwrap();
            // Each mail takes 100 ms, so the batch is surely under way when
            // the worker is killed.
            let server = SmtpServer::start(&python, free_port(), dir.path(), &[], 100).await;
            let mut settings = smtp_settings(&server.url());
            settings.batch_size = 12;
            settings.concurrency = 1;
            settings.lease_secs = 300;
            let t = now();
            let mut rows = Vec::new();
            for i in 0..12 {
                rows.push(
                    put(
                        &db,
                        &format!("k{i}@example.se"),
                        Language::En,
                        &Message::NoteShared,
                        t - 1,
                    )
                    .await,
                );
            }
            let doomed = Worker::new(db.clone(), settings.clone()).unwrap();
            let running = tokio::spawn(async move { doomed.run(std::future::pending()).await });
            server.wait_for(3).await;
            running.abort();
            assert!(running.await.unwrap_err().is_cancelled());
            let before = server.mails().len();
            assert!(
                before < 12,
                "{name}: the kill came too late to test anything"
            );

            // The dead worker's rows are leased; once the lease expires
            // another worker takes them over.
            let rescuer = Worker::new(db.clone(), settings).unwrap();
            assert_eq!(
                rescuer.run_once(at(now())).await.unwrap().claimed,
                0,
                "{name}: leases hold"
            );
            let report = rescuer.run_once(at(now() + 301)).await.unwrap();
            assert!(report.sent >= 12 - before - 1, "{name}: {report:?}");
            assert_eq!(count_status(&db, "sent").await, 12, "{name}");

            let mails = server.wait_for(12).await;
            let mails = by_message_id(&mails);
            let mut duplicated = 0;
            for row in &rows {
                let copies = mails.get(&expected_message_id(row)).map_or(0, Vec::len);
                assert!(copies >= 1, "{name}: row {row} was lost");
                duplicated += copies - 1;
            }
            // Only the one mail in flight at the kill may arrive twice, and
            // then with the same Message-ID.
            assert!(duplicated <= 1, "{name}: {duplicated} duplicates");
            server.stop().await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_rejected_recipient_is_parked_with_the_reason() {
    let Some(python) = python_with_aiosmtpd() else {
        return;
    };
    each_database(|db, name| {
        let python = python.clone();
        async move {
            let dir = tempfile::tempdir().unwrap();
            let server =
                SmtpServer::start(&python, free_port(), dir.path(), &["nobody@example.se"], 0)
                    .await;
            let worker = Worker::new(db.clone(), smtp_settings(&server.url())).unwrap();
            let t = now();
            let rejected = put(
                &db,
                "nobody@example.se",
                Language::Sv,
                &Message::NoteShared,
                t,
            )
            .await;
            let accepted = put(
                &db,
                "somebody@example.se",
                Language::Sv,
                &Message::NoteShared,
                t,
            )
            .await;

            let report = worker.run_once(at(t)).await.unwrap();
            assert_eq!((report.sent, report.failed), (1, 1), "{name}: {report:?}");
            let (status, attempts, error) = row_state(&db, &rejected).await;
            assert_eq!(
                (status.as_str(), attempts),
                ("failed", 1),
                "{name}: a 5xx is not retried"
            );
            let error = error.unwrap();
            assert!(error.contains("550"), "{name}: {error}");
            assert_eq!(row_state(&db, &accepted).await.0, "sent");

            let failed = delivery::list_failed(&db, 10).await.unwrap();
            assert_eq!(failed.len(), 1);
            assert_eq!(failed[0].recipient, "nobody@example.se");
            assert!(failed[0]
                .last_error
                .as_deref()
                .unwrap()
                .contains("mailbox unavailable"));
            let mails = server.wait_for(1).await;
            assert_eq!(mails[0].to, "somebody@example.se");
            server.stop().await;
        }
    })
    .await;
}

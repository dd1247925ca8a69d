//! Reading mail back: the `.eml` files of the file transport for the demo page
//! `/dev/mail`, so that a newcomer without a mail server can click a sign-in
//! link, and any raw RFC 5322 mail for tests.
//!
//! The web crate serves the page (in demo mode only) and translates its own
//! labels; this module only parses.

use std::path::Path;

use mail_parser::{MessageParser, MimeHeaders};

/// One mail as the dev page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMail {
    /// The file name without `.eml`: the outbox row id for mail written by the
    /// worker. Pass it to [`read`].
    pub id: String,
    pub message_id: Option<String>,
    pub from: String,
    pub to: String,
    pub subject: String,
    pub date: Option<jiff::Timestamp>,
    /// `Content-Language`, e.g. `sv`.
    pub language: Option<String>,
    pub text: String,
    /// The HTML part as sent. Show it in a sandboxed frame: it is a mail.
    pub html: String,
    /// Every `http(s)://` link of the text part, in order.
    pub links: Vec<String>,
    /// The calendar attachment, if any.
    pub calendar: Option<CalendarPart>,
}

/// An `.ics` attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalendarPart {
    /// The `method` parameter of its content type, e.g. `REQUEST`.
    pub method: Option<String>,
    pub ics: String,
}

/// The mails in `dir`, newest first. A missing folder is an empty mailbox;
/// files that do not parse are left out.
pub fn list(dir: &Path) -> std::io::Result<Vec<StoredMail>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut mails = Vec::new();
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let Some(id) = eml_stem(&path) else { continue };
        let modified = entry.metadata()?.modified().ok();
        let raw = std::fs::read(&path)?;
        if let Some(mail) = parse(&id, &raw) {
            mails.push((mail, modified));
        }
    }
    // The Date header has whole seconds; the file time breaks ties.
    mails.sort_by(|(a, a_mod), (b, b_mod)| (b.date, b_mod, &b.id).cmp(&(a.date, a_mod, &a.id)));
    Ok(mails.into_iter().map(|(mail, _)| mail).collect())
}

/// The mail `{id}.eml` in `dir`, if there is one. Ids that could name a file
/// outside `dir` find nothing.
pub fn read(dir: &Path, id: &str) -> std::io::Result<Option<StoredMail>> {
    let safe = !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !safe {
        return Ok(None);
    }
    match std::fs::read(dir.join(format!("{id}.eml"))) {
        Ok(raw) => Ok(parse(id, &raw)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

/// Parses one raw mail; `id` is whatever the caller names it by.
pub fn parse(id: &str, raw: &[u8]) -> Option<StoredMail> {
    let message = MessageParser::default().parse(raw)?;
    let address = |addr: Option<&mail_parser::Address<'_>>| {
        addr.and_then(|a| a.first())
            .and_then(|a| a.address())
            .unwrap_or_default()
            .to_owned()
    };
    let text = message
        .body_text(0)
        .map(|t| t.into_owned())
        .unwrap_or_default();
    let calendar = message.attachments().find_map(|part| {
        let content_type = part.content_type()?;
        let is_calendar = content_type.ctype().eq_ignore_ascii_case("text")
            && content_type
                .subtype()
                .is_some_and(|s| s.eq_ignore_ascii_case("calendar"));
        is_calendar.then(|| CalendarPart {
            method: content_type.attribute("method").map(str::to_owned),
            ics: String::from_utf8_lossy(part.contents()).into_owned(),
        })
    });
    Some(StoredMail {
        id: id.to_owned(),
        message_id: message.message_id().map(|m| format!("<{m}>")),
        from: address(message.from()),
        to: address(message.to()),
        subject: message.subject().unwrap_or_default().to_owned(),
        date: message
            .date()
            .and_then(|d| jiff::Timestamp::from_second(d.to_timestamp()).ok()),
        language: message
            .header_raw("Content-Language")
            .map(|v| v.trim().to_owned()),
        links: links_in(&text),
        html: message
            .body_html(0)
            .map(|h| h.into_owned())
            .unwrap_or_default(),
        text,
        calendar,
    })
}

fn eml_stem(path: &Path) -> Option<String> {
    if path.extension()? != "eml" {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    (!stem.starts_with('.')).then(|| stem.to_owned())
}

fn links_in(text: &str) -> Vec<String> {
    text.split_whitespace()
        .filter(|word| word.starts_with("https://") || word.starts_with("http://"))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_cannot_leave_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        for id in ["../secret", "a/b", "", ".hidden", "x.eml"] {
            assert_eq!(read(dir.path(), id).unwrap(), None, "{id}");
        }
    }

    #[test]
    fn a_missing_folder_is_an_empty_mailbox() {
        let dir = tempfile::tempdir().unwrap();
        assert!(list(&dir.path().join("nothing")).unwrap().is_empty());
    }

    #[test]
    fn links_are_taken_from_the_text() {
        assert_eq!(
            links_in("Logga in:\nhttps://k.se/a?token=x\n\nMina sidor:\nhttp://k.se/my\n"),
            ["https://k.se/a?token=x", "http://k.se/my"]
        );
    }
}

//! The caller's language: `?lang=`, then the `lang` cookie, then
//! `Accept-Language`, then Swedish.

use axum::extract::Request;
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;

pub use booking::Language as Locale;

tokio::task_local! {
    static LOCALE: Locale;
}

/// The language of the request being handled, Swedish outside a request.
pub fn current_locale() -> Locale {
    LOCALE.try_with(|l| *l).unwrap_or_default()
}

/// Middleware: works out the caller's language and runs the rest of the
/// request with it.
pub async fn negotiate(request: Request, next: Next) -> Response {
    let locale = from_request(&request);
    LOCALE.scope(locale, next.run(request)).await
}

fn from_request(request: &Request) -> Locale {
    if let Some(query) = request.uri().query() {
        for pair in query.split('&') {
            if let Some(value) = pair.strip_prefix("lang=") {
                if let Ok(l) = Locale::parse(value) {
                    return l;
                }
            }
        }
    }
    let headers = request.headers();
    for cookie in headers.get_all(header::COOKIE) {
        let Ok(cookie) = cookie.to_str() else {
            continue;
        };
        for part in cookie.split(';') {
            if let Some(value) = part.trim().strip_prefix("lang=") {
                if let Ok(l) = Locale::parse(value) {
                    return l;
                }
            }
        }
    }
    headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
        .and_then(accept_language)
        .unwrap_or_default()
}

/// The first language of an `Accept-Language` header that Kontakt speaks,
/// by quality.
fn accept_language(header: &str) -> Option<Locale> {
    let mut choices: Vec<(f32, Locale)> = header
        .split(',')
        .filter_map(|part| {
            let mut bits = part.trim().split(';');
            let tag = bits.next()?.trim();
            let primary = tag.split('-').next()?.to_ascii_lowercase();
            let q = bits
                .find_map(|b| {
                    b.trim()
                        .strip_prefix("q=")
                        .and_then(|q| q.parse::<f32>().ok())
                })
                .unwrap_or(1.0);
            Locale::parse(&primary).ok().map(|l| (q, l))
        })
        .collect();
    choices.sort_by(|a, b| b.0.total_cmp(&a.0));
    choices.first().map(|(_, l)| *l)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GLOSSARY: &str = include_str!("../../docs/glossary.md");
    const LOCALES: [(&str, &str); 4] = [
        ("sv", include_str!("../locales/sv.yml")),
        ("en", include_str!("../locales/en.yml")),
        ("fi", include_str!("../locales/fi.yml")),
        ("ar", include_str!("../locales/ar.yml")),
    ];

    /// One glossary term: its name and, per language, the lower-case stems
    /// that count as using it.
    struct Term {
        name: String,
        forms: Vec<(String, Vec<String>)>,
    }

    impl Term {
        fn stems(&self, lang: &str) -> &[String] {
            self.forms
                .iter()
                .find(|(l, _)| l == lang)
                .map(|(_, stems)| stems.as_slice())
                .unwrap_or_else(|| panic!("the glossary has no {lang} column"))
        }

        fn used_in(&self, lang: &str, text: &str) -> bool {
            let text = text.to_lowercase();
            self.stems(lang).iter().any(|stem| text.contains(stem))
        }
    }

    /// The rows of the Markdown table under `heading` in the glossary,
    /// header first, cells trimmed.
    fn table(heading: &str) -> Vec<Vec<String>> {
        let (_, after) = GLOSSARY
            .split_once(heading)
            .unwrap_or_else(|| panic!("docs/glossary.md lacks {heading:?}"));
        after
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .filter(|l| !l.starts_with("|---"))
            .map(|l| {
                l.trim()
                    .trim_matches('|')
                    .split('|')
                    .map(|c| c.trim().to_owned())
                    .collect()
            })
            .collect()
    }

    /// The terms of the glossary's matching table.
    fn terms() -> Vec<Term> {
        let rows = table("## Forms the check matches");
        let header = &rows[0];
        assert_eq!(header[0], "term");
        rows[1..]
            .iter()
            .map(|row| Term {
                name: row[0].clone(),
                forms: header[1..]
                    .iter()
                    .zip(&row[1..])
                    .map(|(lang, cell)| {
                        let stems = cell.split('/').map(|s| s.trim().to_lowercase()).collect();
                        (lang.clone(), stems)
                    })
                    .collect(),
            })
            .collect()
    }

    /// The `key: "value"` pairs of a locale file.
    fn strings(text: &str) -> Vec<(&str, &str)> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with('_') && !l.trim().is_empty())
            .map(|l| {
                let (key, value) = l.split_once(':').expect("key: value");
                (key.trim(), value.trim().trim_matches('"'))
            })
            .collect()
    }

    #[test]
    fn the_glossary_has_its_terms_in_every_language() {
        let terms = terms();
        assert!(
            (15..=20).contains(&terms.len()),
            "the glossary should hold 15 to 20 terms, not {}",
            terms.len()
        );
        for required in [
            "socialtjänsten",
            "socialsekreterare",
            "hemkommun",
            "utförande kommun",
            "ärende",
            "förhandsbedömning",
            "utredning",
            "möte",
            "väntrum",
            "Mina sidor",
            "invånare",
            "chatt",
            "anhöriga",
        ] {
            assert!(
                terms.iter().any(|t| t.name == required),
                "the glossary lacks {required}"
            );
        }
        // Each term's written form in the first table is one the check
        // recognises, so that the two tables cannot drift apart.
        let written = table("## Terms");
        let header = &written[0];
        for row in &written[1..] {
            let term = terms
                .iter()
                .find(|t| t.name == row[0])
                .unwrap_or_else(|| panic!("{} has no matching forms", row[0]));
            for (lang, form) in header.iter().zip(row).take(4) {
                assert!(
                    term.used_in(lang, form),
                    "{lang} {form:?} escapes its own stems"
                );
            }
        }
    }

    /// The mail's words, which live in `notify` and follow the same glossary.
    const MAIL_LOCALES: [(&str, &str); 4] = [
        ("sv", include_str!("../../notify/locales/sv.yml")),
        ("en", include_str!("../../notify/locales/en.yml")),
        ("fi", include_str!("../../notify/locales/fi.yml")),
        ("ar", include_str!("../../notify/locales/ar.yml")),
    ];

    /// Where a glossary term's Swedish form appears in a Swedish string,
    /// the same key in every other language uses that language's form: for
    /// the pages' locale files and the mail's.
    #[test]
    fn every_locale_follows_the_glossary() {
        let terms = terms();
        let mut problems = Vec::new();
        for (set, locales) in [("web", &LOCALES), ("notify", &MAIL_LOCALES)] {
            let sv = strings(locales[0].1);
            assert!(sv.len() > 40, "{set} sv.yml looks truncated");
            for (lang, text) in &locales[1..] {
                let other = strings(text);
                for (key, sv_text) in &sv {
                    let Some((_, translated)) = other.iter().find(|(k, _)| k == key) else {
                        problems.push(format!("{set} {lang} lacks {key}"));
                        continue;
                    };
                    for term in terms.iter().filter(|t| t.used_in("sv", sv_text)) {
                        if !term.used_in(lang, translated) {
                            problems.push(format!(
                                "{set} {lang} {key}: {translated:?} does not say {:?} for {}",
                                term.stems(lang),
                                term.name
                            ));
                        }
                    }
                }
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    /// The check above would notice a drifted term.
    #[test]
    fn the_glossary_check_notices_a_drifted_term() {
        let terms = terms();
        let home = terms.iter().find(|t| t.name == "hemkommun").unwrap();
        assert!(home.used_in("sv", "Endast hemkommunen"));
        assert!(home.used_in("ar", "بلدية السكن فقط"));
        assert!(!home.used_in("ar", "البلدية فقط"));
        let relatives = terms.iter().find(|t| t.name == "anhöriga").unwrap();
        assert!(!relatives.used_in("en", "Support for family carers"));
    }

    #[test]
    fn accept_language_picks_the_best_spoken_language() {
        assert_eq!(accept_language("fi-FI,fi;q=0.9,en;q=0.8"), Some(Locale::Fi));
        assert_eq!(accept_language("de-DE,en;q=0.5,ar;q=0.7"), Some(Locale::Ar));
        assert_eq!(accept_language("de-DE"), None);
        assert_eq!(accept_language(""), None);
    }
}

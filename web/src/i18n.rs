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

    #[test]
    fn accept_language_picks_the_best_spoken_language() {
        assert_eq!(accept_language("fi-FI,fi;q=0.9,en;q=0.8"), Some(Locale::Fi));
        assert_eq!(accept_language("de-DE,en;q=0.5,ar;q=0.7"), Some(Locale::Ar));
        assert_eq!(accept_language("de-DE"), None);
        assert_eq!(accept_language(""), None);
    }
}

//! The hardening headers of every response, set in one layer around the whole
//! router, so that pages, the API, errors, 404s, static assets and the
//! WebSocket upgrade all carry them and no handler can forget them.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

/// The Content-Security-Policy of every response.
///
/// Scripts come only from this origin's files (`/assets/*.js`), never from
/// inline `<script>` or event handler attributes, so markup that slipped
/// through escaping cannot run. Styles may be inline: the scheduler's bars
/// take their width from a `style` attribute and the demo mailbox shows mail
/// styled inline, and a style cannot run code. Nobody may frame a page
/// (clickjacking), a `<base>` element cannot redirect relative links, and
/// forms post only here. `connect-src` follows `default-src`, whose `'self'`
/// covers the WebSocket at `/ws` too.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; object-src 'none'; base-uri 'none'; \
     frame-ancestors 'none'; form-action 'self'";

/// `Strict-Transport-Security` for a site served over https: a year, the
/// usual minimum for browsers' preload lists.
pub const STRICT_TRANSPORT_SECURITY: &str = "max-age=31536000";

/// `Permissions-Policy` of the pages that hold a video call: this origin may
/// use the camera and the microphone, no frame or other origin may.
pub const PERMISSIONS_CALL: &str = "camera=(self), microphone=(self)";

/// `Permissions-Policy` of every other response: no camera, no microphone,
/// so that no script on an ordinary page can ask for them.
pub const PERMISSIONS_NONE: &str = "camera=(), microphone=()";

/// Whether the page at `path` holds a video call: a booking's meeting
/// (`/join/{booking}`), an ad-hoc meeting (`/meeting/adhoc/{id}`) and a
/// guest's (`/guest/{token}`).
pub fn holds_a_call(path: &str) -> bool {
    ["/join/", "/meeting/adhoc/", "/guest/"]
        .iter()
        .any(|prefix| {
            path.strip_prefix(prefix)
                .is_some_and(|rest| !rest.is_empty())
        })
}

/// Which headers this deployment sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecurityHeaders {
    /// Whether to send `Strict-Transport-Security`.
    hsts: bool,
}

impl SecurityHeaders {
    /// The headers for a site reached at `public_url`: HSTS only over https,
    /// because a browser told to use https for a host that serves only http
    /// could not reach it any more.
    pub fn for_public_url(public_url: &str) -> SecurityHeaders {
        let scheme = public_url.trim().get(..8).unwrap_or_default();
        SecurityHeaders {
            hsts: scheme.eq_ignore_ascii_case("https://"),
        }
    }

    /// Sets the headers on a response's `headers`.
    ///
    /// `Cache-Control: no-store` goes on every response that has no caching
    /// of its own: pages and API answers can hold a resident's data, and the
    /// sign-in and redeem answers hold session tokens, none of which may
    /// stay in a shared computer's or a proxy's cache. Only the static
    /// assets, which hold nothing personal, set their own.
    ///
    /// `Referrer-Policy: no-referrer`, because one-time tokens travel in
    /// addresses (`/b/{token}`, the sign-in callback, the join link) and
    /// would otherwise leave in the `Referer` of the next request.
    ///
    /// `Permissions-Policy` allows the camera and microphone on the pages
    /// that hold a call ([`holds_a_call`]) and denies them everywhere else.
    pub fn apply(self, path: &str, headers: &mut HeaderMap) {
        headers.insert(
            "permissions-policy",
            HeaderValue::from_static(if holds_a_call(path) {
                PERMISSIONS_CALL
            } else {
                PERMISSIONS_NONE
            }),
        );
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        );
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        if !headers.contains_key(header::CACHE_CONTROL) {
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
        if self.hsts {
            headers.insert(
                header::STRICT_TRANSPORT_SECURITY,
                HeaderValue::from_static(STRICT_TRANSPORT_SECURITY),
            );
        }
    }
}

/// The middleware: runs the request, then sets the headers on whatever came
/// back.
pub async fn set(State(policy): State<SecurityHeaders>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    let mut response = next.run(request).await;
    policy.apply(&path, response.headers_mut());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(public_url: &str, headers: &mut HeaderMap) {
        SecurityHeaders::for_public_url(public_url).apply("/", headers);
    }

    #[test]
    fn camera_and_microphone_only_on_the_pages_of_a_call() {
        for (path, call) in [
            ("/join/b1", true),
            ("/meeting/adhoc/a1", true),
            ("/guest/eyJ.x.y", true),
            ("/join/", false),
            ("/guest", false),
            ("/", false),
            ("/my", false),
            ("/staff/console", false),
            ("/api/meetings/b1/open", false),
            ("/chat/ekonomiskt-bistand", false),
        ] {
            let mut headers = HeaderMap::new();
            SecurityHeaders::for_public_url("http://127.0.0.1").apply(path, &mut headers);
            let expected = if call {
                PERMISSIONS_CALL
            } else {
                PERMISSIONS_NONE
            };
            assert_eq!(headers["permissions-policy"], expected, "{path}");
        }
    }

    #[test]
    fn hsts_only_for_an_https_public_address() {
        for (url, hsts) in [
            ("https://kontakt.example.se", true),
            ("HTTPS://kontakt.example.se/", true),
            ("http://127.0.0.1:8080", false),
            ("", false),
        ] {
            let mut headers = HeaderMap::new();
            applied(url, &mut headers);
            assert_eq!(
                headers.contains_key(header::STRICT_TRANSPORT_SECURITY),
                hsts,
                "{url}"
            );
        }
    }

    #[test]
    fn caching_is_refused_unless_the_response_chose_its_own() {
        let mut headers = HeaderMap::new();
        applied("http://127.0.0.1:8080", &mut headers);
        assert_eq!(headers[header::CACHE_CONTROL], "no-store");

        let mut asset = HeaderMap::new();
        asset.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=3600"),
        );
        applied("http://127.0.0.1:8080", &mut asset);
        assert_eq!(asset[header::CACHE_CONTROL], "public, max-age=3600");
    }

    #[test]
    fn the_policy_allows_no_inline_script_and_no_framing() {
        let directives: Vec<&str> = CONTENT_SECURITY_POLICY.split(';').map(str::trim).collect();
        assert!(directives.contains(&"script-src 'self'"), "{directives:?}");
        assert!(directives.contains(&"frame-ancestors 'none'"));
        assert!(directives.contains(&"base-uri 'none'"));
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe-eval"));
        let script = directives
            .iter()
            .find(|d| d.starts_with("script-src"))
            .unwrap();
        assert!(!script.contains("unsafe-inline"));
    }
}

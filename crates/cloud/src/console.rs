//! The web console: the files under `web/` (plain ES modules, no build
//! step), embedded in the binary. Every console route answers the same
//! shell page; its script reads the path and draws the page from the API.
//! Served with a strict Content-Security-Policy: scripts and styles only
//! from this origin, no inline script, no framing.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// The console's files: name, content type, bytes.
const FILES: &[(&str, &str, &str)] = &[
    ("app.js", "text/javascript; charset=utf-8", include_str!("../../../web/app.js")),
    ("api.js", "text/javascript; charset=utf-8", include_str!("../../../web/api.js")),
    ("dom.js", "text/javascript; charset=utf-8", include_str!("../../../web/dom.js")),
    ("i18n.js", "text/javascript; charset=utf-8", include_str!("../../../web/i18n.js")),
    ("player.js", "text/javascript; charset=utf-8", include_str!("../../../web/player.js")),
    ("playback.js", "text/javascript; charset=utf-8", include_str!("../../../web/playback.js")),
    ("timeline.js", "text/javascript; charset=utf-8", include_str!("../../../web/timeline.js")),
    ("app.css", "text/css; charset=utf-8", include_str!("../../../web/app.css")),
    ("icon.svg", "image/svg+xml", include_str!("../../../web/icon.svg")),
];

const SHELL: &str = include_str!("../../../web/index.html");

/// What a console page may load: its own scripts, styles, pictures and
/// video (blob: for Media Source), and its own API and WebSockets.
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     media-src 'self' blob:; connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

fn secured(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    // A new binary may bring new files: always revalidate (they are small).
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// Any console route: the shell.
pub(crate) async fn page() -> Response {
    secured(([(header::CONTENT_TYPE, "text/html; charset=utf-8")], SHELL).into_response())
}

/// `/ui/{file}`.
pub(crate) async fn file(Path(name): Path<String>) -> Response {
    match FILES.iter().find(|f| f.0 == name) {
        Some((_, ct, body)) => secured(([(header::CONTENT_TYPE, *ct)], *body).into_response()),
        None => secured((StatusCode::NOT_FOUND, "no such console file").into_response()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_module_the_console_imports_is_served() {
        for (_, _, body) in super::FILES {
            for line in body.lines().filter(|l| l.starts_with("import ")) {
                let file = line.rsplit("\"./").next().unwrap().trim_end_matches("\";");
                assert!(super::FILES.iter().any(|f| f.0 == file), "{file} is imported but not embedded");
            }
        }
        assert!(super::SHELL.contains("/ui/app.js") && !super::SHELL.contains("<script>"), "no inline script");
    }
}

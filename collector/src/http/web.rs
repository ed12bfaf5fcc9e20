//! The web UI's static assets, compiled into the binary (it works air-gapped; no build step
//! at run time). `GET /` is the page; every other asset is served under a name carrying a
//! hash of its content (`/assets/app.3f2a…js`), cached for a year, so a new build is never
//! mixed with a cached old one. The page holds no data: it reads the same `/v1/…` API as
//! any client, with the token the user typed (kept in `sessionStorage`, sent only as the
//! `Authorization` header), so its numbers are the API's by construction.
//!
//! Every response carries a strict `Content-Security-Policy` (no inline script or style,
//! nothing from another origin), `X-Content-Type-Options: nosniff`, no referrer and no
//! framing.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest as _, Sha256};
use std::sync::LazyLock;

/// The policy: scripts, styles, images and API calls from this origin only.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

struct Asset {
    /// Name as written in the page template (`app.js`).
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../web/app.js"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../web/style.css"),
    },
    // Without it, every page load is a 404 for `/favicon.ico` in the browser's console.
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../../web/favicon.svg"),
    },
    Asset {
        name: "uPlot.iife.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../web/vendor/uplot/uPlot.iife.min.js"),
    },
    Asset {
        name: "uPlot.min.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../web/vendor/uplot/uPlot.min.css"),
    },
];

const PAGE_TEMPLATE: &str = include_str!("../../web/index.html");

/// `app.js` → `app.<first 16 hex of its SHA-256>.js`.
fn hashed_name(a: &Asset) -> String {
    let h = hex::encode(&Sha256::digest(a.body)[..8]);
    match a.name.rsplit_once('.') {
        Some((stem, ext)) => format!("{stem}.{h}.{ext}"),
        None => format!("{}.{h}", a.name),
    }
}

/// The page with each `{{name}}` replaced by the asset's hashed path, and the hashed names.
static BUILT: LazyLock<(String, Vec<String>)> = LazyLock::new(|| {
    let mut page = PAGE_TEMPLATE.to_string();
    let mut names = Vec::with_capacity(ASSETS.len());
    for a in ASSETS {
        let n = hashed_name(a);
        page = page.replace(&format!("{{{{{}}}}}", a.name), &format!("/assets/{n}"));
        names.push(n);
    }
    (page, names)
});

fn secure(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

/// Where the page template takes `serve --ui-idle` (seconds).
const UI_IDLE_MARK: &str = "__UI_IDLE_SECS__";

/// `GET /`: the page (revalidated on every load, as it names the current assets), with
/// the idle sign-out time.
pub async fn page(axum::extract::State(st): axum::extract::State<super::AppState>) -> Response {
    secure(
        (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            BUILT
                .0
                .replace(UI_IDLE_MARK, &st.ui_idle_secs.max(1).to_string()),
        )
            .into_response(),
    )
}

/// `GET /assets/{name}`: a hashed asset, immutable.
pub async fn asset(Path(name): Path<String>) -> Response {
    let found = ASSETS
        .iter()
        .zip(BUILT.1.iter())
        .find(|(_, hashed)| **hashed == name);
    match found {
        Some((a, _)) => secure(
            (
                [
                    (header::CONTENT_TYPE, a.content_type),
                    (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
                ],
                a.body,
            )
                .into_response(),
        ),
        None => secure(
            (
                StatusCode::NOT_FOUND,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "no such asset",
            )
                .into_response(),
        ),
    }
}

/// The hashed path of a built-in asset (`style.css` → `/assets/style.<hash>.css`).
fn asset_path(name: &str) -> Option<String> {
    ASSETS
        .iter()
        .zip(BUILT.1.iter())
        .find(|(a, _)| a.name == name)
        .map(|(_, hashed)| format!("/assets/{hashed}"))
}

fn status_view(st: &super::AppState) -> crate::status::page::StatusView {
    crate::status::page::StatusView {
        components: st.status.components(),
        incidents: st.status.incidents(),
        now: st.store.clock().now(),
        deployment: st.deployment.clone(),
    }
}

/// `GET /status`: the public status page (no token). HTML, or JSON for a client that
/// accepts `application/json`. Served from memory: it never waits on the store.
pub async fn status_page(
    axum::extract::State(st): axum::extract::State<super::AppState>,
    headers: axum::http::HeaderMap,
) -> Response {
    let view = status_view(&st);
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json"));
    let r = if wants_json {
        (
            [(header::CACHE_CONTROL, "no-cache")],
            axum::Json(crate::status::page::json(&view)),
        )
            .into_response()
    } else {
        (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            crate::status::page::html(&view, asset_path("style.css").as_deref()),
        )
            .into_response()
    };
    secure(r)
}

/// `GET /status.atom`: the incidents as an Atom feed (no token).
pub async fn status_feed(
    axum::extract::State(st): axum::extract::State<super::AppState>,
) -> Response {
    let view = status_view(&st);
    secure(
        (
            [
                (header::CONTENT_TYPE, "application/atom+xml; charset=utf-8"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            crate::status::page::atom(&view),
        )
            .into_response(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_every_asset_by_its_hash_and_nothing_inline() {
        let (page, names) = &*BUILT;
        for n in names {
            assert!(
                page.contains(&format!("/assets/{n}")),
                "{n} not in the page"
            );
        }
        assert!(!page.contains("{{"), "an unreplaced placeholder: {page}");
        assert_eq!(page.matches(UI_IDLE_MARK).count(), 1, "{page}");
        // The CSP forbids inline script and style: the page must have none.
        assert!(
            !page.contains("<script>") && !page.contains("style="),
            "{page}"
        );
        assert!(!page.contains("onclick") && !page.contains("javascript:"));
        // The browser asks for `/favicon.ico` (a 404) unless the page names an icon.
        assert!(page.contains("rel=\"icon\" type=\"image/svg+xml\" href=\"/assets/favicon."));
    }
}

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

/// `GET /`: the page (revalidated on every load, as it names the current assets).
pub async fn page() -> Response {
    secure(
        (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            BUILT.0.clone(),
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

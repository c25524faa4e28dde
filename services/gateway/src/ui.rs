//! The web dashboard at `/ui`: static assets embedded in the binary (it must work on an
//! air-gapped machine: no CDN, no build step), talking to the public HTTP API like any
//! other client. And [`same_origin`], the check that keeps browsers on other sites from
//! using the API's mutating routes on a visitor's behalf.
//!
//! `/ui` redirects to `/ui/` (the page), whose assets are relative (`assets/app.js`), and
//! whose script finds the API relative to itself: a proxy may mount the gateway under a
//! path prefix. The page's asset URLs carry `?v=<digest of every asset>`: such a request
//! is cached for a year (`immutable`), the page itself is revalidated every time
//! (`no-cache` with an `ETag`), so a new gateway's assets are picked up at once.

use std::sync::LazyLock;

use axum::Router;
use axum::extract::{Path, RawQuery, Request};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use axum::routing::get;
use sha2::Digest as _;

use crate::AppState;
use crate::error::ApiError;

/// An embedded file and its content type.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const INDEX_HTML: &str = include_str!("../ui/index.html");

/// The page's assets, served at `/ui/assets/<name>`.
const ASSETS: &[Asset] = &[
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../ui/assets/app.js"),
    },
    Asset {
        name: "schema.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../ui/assets/schema.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../ui/assets/app.css"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../ui/assets/favicon.svg"),
    },
];

/// Where `index.html` names the asset version.
const VERSION_MARK: &str = "__ASSET_VERSION__";

/// The page may load its own scripts, styles and images (results are shown as `data:`
/// images, large ones offered as `blob:` downloads) and talk to its own origin; nothing
/// inline runs, so even a rendering mistake could not execute a payload's markup.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

/// A digest of every asset (16 hex digits): the `v` of their URLs and the page's `ETag`.
static VERSION: LazyLock<String> = LazyLock::new(|| {
    let mut digest = sha2::Sha256::new();
    digest.update(INDEX_HTML.as_bytes());
    for asset in ASSETS {
        digest.update(asset.name.as_bytes());
        digest.update((asset.body.len() as u64).to_le_bytes());
        digest.update(asset.body);
    }
    jetjobs::hex(&digest.finalize()[..8])
});

/// The page, with its asset URLs versioned.
static PAGE: LazyLock<String> = LazyLock::new(|| INDEX_HTML.replace(VERSION_MARK, &VERSION));

/// `/ui`, `/ui/` and `/ui/assets/{name}`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ui", get(redirect))
        .route("/ui/", get(index))
        .route("/ui/assets/{name}", get(asset))
}

/// `/ui` → `/ui/`, relative, so a path prefix added by a proxy stays.
async fn redirect() -> Response {
    (
        StatusCode::PERMANENT_REDIRECT,
        [(header::LOCATION, HeaderValue::from_static("ui/"))],
    )
        .into_response()
}

async fn index(headers: HeaderMap) -> Response {
    let etag = format!("\"{}\"", *VERSION);
    let mut response = if fresh(&headers, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            )],
            PAGE.as_str(),
        )
            .into_response()
    };
    let out = response.headers_mut();
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    insert_etag(out, &etag);
    out.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    security_headers(out);
    response
}

async fn asset(
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return ApiError::not_found("no such dashboard asset").into_response();
    };
    let etag = format!("\"{}-{}\"", *VERSION, asset.name);
    // Only the URL the page names is immutable: an old or missing `v` revalidates.
    let versioned = query
        .as_deref()
        .and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("v=")))
        .is_some_and(|v| v == VERSION.as_str());
    let mut response = if fresh(&headers, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.body,
        )
            .into_response()
    };
    let out = response.headers_mut();
    out.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if versioned {
            "public, max-age=31536000, immutable"
        } else {
            "no-cache"
        }),
    );
    insert_etag(out, &etag);
    security_headers(out);
    response
}

/// True if the client's `If-None-Match` names `etag` (or is `*`).
fn fresh(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == etag || tag == "*")
}

fn insert_etag(headers: &mut HeaderMap, etag: &str) {
    if let Ok(value) = HeaderValue::from_str(etag) {
        headers.insert(header::ETAG, value);
    }
}

fn security_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

/// Refuses, with a problem+json `403`, what a browser sends on behalf of another site:
/// a request that can change something (any method but `GET`, `HEAD` and `OPTIONS`) or a
/// WebSocket handshake (browsers let any page open one, and the socket streams every
/// job's snapshot) whose `Origin` is not this gateway, or, without an `Origin`, that the
/// browser marks `Sec-Fetch-Site: cross-site` (or `same-site`: another origin still).
/// "This gateway" is the request's `Host` (or `X-Forwarded-Host`, as a proxy in front
/// sets it; a cross-site page cannot set that header without a CORS preflight, which
/// the gateway does not grant). Clients that are not browsers send neither header and
/// pass, so the API is unchanged for them; the dashboard's buttons pass as same-origin.
///
/// And the API's answers are inert in a browser (`/v1/...`: `Content-Security-Policy:
/// sandbox`, `X-Content-Type-Options: nosniff`): a blob is served with the content type
/// its uploader chose, and an HTML upload opened from this origin would otherwise run as
/// the dashboard's own page, same-origin check passed.
pub async fn same_origin(request: Request, next: Next) -> Response {
    if let Err(detail) = check_origin(request.method(), request.headers(), request.uri()) {
        return ApiError::new(StatusCode::FORBIDDEN, "cross-origin", detail).into_response();
    }
    let api = request.uri().path().starts_with("/v1/");
    let mut response = next.run(request).await;
    if api {
        let headers = response.headers_mut();
        headers
            .entry(header::CONTENT_SECURITY_POLICY)
            .or_insert(HeaderValue::from_static(API_CSP));
        headers
            .entry(header::X_CONTENT_TYPE_OPTIONS)
            .or_insert(HeaderValue::from_static("nosniff"));
    }
    response
}

/// What an API answer may do when a browser renders it: nothing (no script, no
/// subresource, an opaque origin).
const API_CSP: &str = "sandbox; default-src 'none'; frame-ancestors 'none'";

fn check_origin(method: &Method, headers: &HeaderMap, uri: &axum::http::Uri) -> Result<(), String> {
    let websocket = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if safe && !websocket {
        return Ok(());
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        let site = headers
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if site.eq_ignore_ascii_case("cross-site") || site.eq_ignore_ascii_case("same-site") {
            return Err(format!(
                "a {site} request from a browser may not use this route (Sec-Fetch-Site: {site})"
            ));
        }
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default().trim();
    let refused = || {
        format!(
            "a request from another origin ({origin:?}) may not use this route: only this gateway's own pages may"
        )
    };
    let Some((scheme, authority)) = parse_origin(origin) else {
        return Err(refused());
    };
    let authority = normalize(&authority, &scheme);
    let forwarded = headers
        .get("x-forwarded-host")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next());
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| uri.authority().map(|a| a.as_str().to_string()));
    let matches = host
        .as_deref()
        .into_iter()
        .chain(forwarded)
        .any(|candidate| normalize(candidate.trim(), &scheme) == authority);
    if matches { Ok(()) } else { Err(refused()) }
}

/// `scheme://authority` of a serialized origin (lower-cased), or `None` (also for
/// `null`, which sandboxed frames and some redirects send).
fn parse_origin(origin: &str) -> Option<(String, String)> {
    let (scheme, rest) = origin.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if !matches!(scheme.as_str(), "http" | "https") || rest.is_empty() || rest.contains('/') {
        return None;
    }
    Some((scheme, rest.to_ascii_lowercase()))
}

/// `host[:port]`, lower-cased, without the scheme's default port.
fn normalize(authority: &str, scheme: &str) -> String {
    let authority = authority.to_ascii_lowercase();
    let default = if scheme == "https" { ":443" } else { ":80" };
    match authority.strip_suffix(default) {
        Some(bare) => bare.to_string(),
        None => authority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(method: Method, pairs: &[(&str, &str)]) -> Result<(), String> {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        check_origin(&method, &headers, &axum::http::Uri::from_static("/v1/jobs"))
    }

    #[test]
    fn clients_that_are_not_browsers_pass() {
        assert!(check(Method::POST, &[("host", "127.0.0.1:8080")]).is_ok());
        assert!(check(Method::DELETE, &[]).is_ok());
        assert!(check(Method::GET, &[("upgrade", "websocket")]).is_ok());
    }

    #[test]
    fn reads_pass_from_anywhere() {
        for method in [Method::GET, Method::HEAD, Method::OPTIONS] {
            let evil = [("host", "gw:8080"), ("origin", "https://evil.example")];
            assert!(check(method, &evil).is_ok());
        }
    }

    #[test]
    fn same_origin_passes() {
        for (origin, host) in [
            ("http://127.0.0.1:8080", "127.0.0.1:8080"),
            ("http://Jobs.Example.com", "jobs.example.com"),
            ("http://jobs.example.com", "jobs.example.com:80"),
            ("https://jobs.example.com:443", "jobs.example.com"),
            ("http://[::1]:8080", "[::1]:8080"),
            // A proxy in front terminating TLS: the Host has no scheme to compare (and
            // one port cannot serve two origins that differ only by scheme).
            ("https://127.0.0.1:8080", "127.0.0.1:8080"),
        ] {
            let pairs = [("host", host), ("origin", origin)];
            assert!(check(Method::POST, &pairs).is_ok(), "{origin} {host}");
        }
        let proxied = [
            ("host", "10.0.0.5:8080"),
            ("x-forwarded-host", "jobs.example.com"),
            ("origin", "https://jobs.example.com"),
        ];
        assert!(check(Method::DELETE, &proxied).is_ok());
        let fetch = [("host", "gw"), ("sec-fetch-site", "same-origin")];
        assert!(check(Method::POST, &fetch).is_ok());
        let typed = [("host", "gw"), ("sec-fetch-site", "none")];
        assert!(check(Method::POST, &typed).is_ok());
    }

    #[test]
    fn other_origins_are_refused() {
        for origin in [
            "https://evil.example",
            "http://127.0.0.1:8081",
            "http://127.0.0.1:8080.evil.example",
            "null",
            "",
            "file://",
            "http://127.0.0.1:8080/path",
        ] {
            let pairs = [("host", "127.0.0.1:8080"), ("origin", origin)];
            for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
                assert!(check(method, &pairs).is_err(), "{origin}");
            }
        }
        let ws = [
            ("host", "127.0.0.1:8080"),
            ("origin", "https://evil.example"),
            ("upgrade", "websocket"),
        ];
        assert!(check(Method::GET, &ws).is_err());
        for site in ["cross-site", "same-site", "Cross-Site"] {
            let pairs = [("host", "gw"), ("sec-fetch-site", site)];
            assert!(check(Method::POST, &pairs).is_err(), "{site}");
        }
    }

    #[test]
    fn assets_have_content_types_and_the_page_names_them_versioned() {
        for asset in ASSETS {
            assert!(
                PAGE.contains(&format!("assets/{}?v={}", asset.name, *VERSION))
                    || asset.name == "schema.js",
                "{} not named in index.html",
                asset.name
            );
            assert!(!asset.content_type.is_empty());
        }
        assert!(!PAGE.contains(VERSION_MARK));
        assert_eq!(VERSION.len(), 16);
    }

    #[test]
    fn if_none_match() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("W/\"a\", \"b\""),
        );
        assert!(fresh(&headers, "\"b\""));
        assert!(fresh(&headers, "\"a\""));
        assert!(!fresh(&headers, "\"c\""));
    }
}

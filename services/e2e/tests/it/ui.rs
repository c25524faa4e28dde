//! The dashboard at `/ui`: its embedded assets with their content types and cache
//! headers, `JETJOBS_UI=off` removing its routes, and the same-origin check that keeps
//! other sites' pages from using the API through a visitor's browser. (The dashboard
//! itself is tested in a real browser by `deploy/ui-tests/run.sh`.)

use reqwest::StatusCode;
use reqwest::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH, LOCATION,
};
use serde_json::{Value, json};

use crate::helpers::{Options, System, assert_problem};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

fn header(response: &reqwest::Response, name: reqwest::header::HeaderName) -> &str {
    response
        .headers()
        .get(&name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .expect("ASCII")
}

/// The `assets/<name>?v=<version>` URLs the page names.
fn asset_urls(page: &str) -> Vec<String> {
    page.match_indices("assets/")
        .filter_map(|(at, _)| {
            let rest = &page[at..];
            let end = rest.find('"')?;
            Some(rest[..end].to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_is_served_from_the_binary_with_types_and_cache_headers() {
    let system = System::start().await;
    let http = client();

    let redirect = http.get(system.url("/ui")).send().await.expect("GET /ui");
    assert_eq!(redirect.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(header(&redirect, LOCATION), "ui/");

    let page = http.get(system.url("/ui/")).send().await.expect("GET /ui/");
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(header(&page, CONTENT_TYPE), "text/html; charset=utf-8");
    assert_eq!(header(&page, CACHE_CONTROL), "no-cache");
    let csp = header(&page, CONTENT_SECURITY_POLICY).to_string();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(
        header(&page, reqwest::header::X_CONTENT_TYPE_OPTIONS),
        "nosniff"
    );
    let etag = header(&page, ETAG).to_string();
    let html = page.text().await.expect("page");
    assert!(
        !html.contains("__ASSET_VERSION__"),
        "the page names versioned assets"
    );
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "nothing from elsewhere (no CDN)"
    );

    let again = http
        .get(system.url("/ui/"))
        .header(IF_NONE_MATCH, &etag)
        .send()
        .await
        .expect("GET /ui/ again");
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);

    let urls = asset_urls(&html);
    let expected = [
        ("app.js", "text/javascript; charset=utf-8"),
        ("schema.js", "text/javascript; charset=utf-8"),
        ("app.css", "text/css; charset=utf-8"),
        ("favicon.svg", "image/svg+xml"),
    ];
    for (name, content_type) in expected {
        let url = urls
            .iter()
            .find(|u| u.starts_with(&format!("assets/{name}?v=")))
            .unwrap_or_else(|| panic!("the page does not name {name}: {urls:?}"));
        let versioned = http
            .get(system.url(&format!("/ui/{url}")))
            .send()
            .await
            .expect("asset");
        assert_eq!(versioned.status(), StatusCode::OK, "{url}");
        assert_eq!(header(&versioned, CONTENT_TYPE), content_type, "{url}");
        assert_eq!(
            header(&versioned, CACHE_CONTROL),
            "public, max-age=31536000, immutable",
            "{url}"
        );
        let tag = header(&versioned, ETAG).to_string();
        assert!(!versioned.bytes().await.expect("body").is_empty());
        let unversioned = http
            .get(system.url(&format!("/ui/assets/{name}")))
            .send()
            .await
            .expect("asset");
        assert_eq!(unversioned.status(), StatusCode::OK);
        assert_eq!(header(&unversioned, CACHE_CONTROL), "no-cache", "{name}");
        let revalidated = http
            .get(system.url(&format!("/ui/assets/{name}")))
            .header(IF_NONE_MATCH, &tag)
            .send()
            .await
            .expect("asset");
        assert_eq!(revalidated.status(), StatusCode::NOT_MODIFIED, "{name}");
    }
    let head = http
        .head(system.url("/ui/assets/app.js"))
        .send()
        .await
        .expect("HEAD");
    assert_eq!(head.status(), StatusCode::OK);

    for missing in [
        "/ui/assets/nope.js",
        "/ui/assets/..%2Fui.rs",
        "/ui/index.html",
    ] {
        let response = http.get(system.url(missing)).send().await.expect("GET");
        assert_problem(response, StatusCode::NOT_FOUND).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_off_removes_the_routes_and_leaves_the_api() {
    let system = System::start_with(Options {
        gateway: |config| config.ui = false,
        ..Options::default()
    })
    .await;
    let http = client();
    for path in ["/ui", "/ui/", "/ui/assets/app.js", "/ui/assets/app.css"] {
        let response = http.get(system.url(path)).send().await.expect("GET");
        assert_problem(response, StatusCode::NOT_FOUND).await;
    }
    let job = system.submit("noop", json!({})).await;
    assert_eq!(job["kind"], "noop");
    // The same-origin check guards the API whether or not the dashboard is there.
    let cross = http
        .post(system.url("/v1/jobs"))
        .header("origin", "https://evil.example")
        .json(&json!({"kind": "noop"}))
        .send()
        .await
        .expect("POST");
    assert_problem(cross, StatusCode::FORBIDDEN).await;
}

/// How many jobs the listing shows.
async fn job_count(system: &System) -> usize {
    let page: Value = system
        .http
        .get(system.url("/v1/jobs?limit=1000"))
        .send()
        .await
        .expect("GET /v1/jobs")
        .json()
        .await
        .expect("JSON");
    page["jobs"].as_array().expect("jobs").len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_on_other_sites_cannot_change_anything() {
    let system = System::start().await;
    let http = client();
    let host = system.base.trim_start_matches("http://").to_string();
    let own = system.base.clone();
    let body = json!({"kind": "sleep", "payload": {"ms": 60000}});

    // A form or fetch from another site: refused before anything happens.
    let other_host = own.replace("127.0.0.1", "localhost");
    for (name, value) in [
        ("origin", "https://evil.example"),
        ("origin", "null"),
        ("origin", other_host.as_str()),
        ("sec-fetch-site", "cross-site"),
    ] {
        let response = http
            .post(system.url("/v1/jobs"))
            .header(name, value)
            .json(&body)
            .send()
            .await
            .expect("POST");
        let problem = assert_problem(response, StatusCode::FORBIDDEN).await;
        assert_eq!(problem["type"], "/problems/cross-origin", "{name}: {value}");
    }
    assert_eq!(job_count(&system).await, 0, "no refused request made a job");

    // The dashboard's own requests (same origin), and clients that are not browsers.
    let own_page = http
        .post(system.url("/v1/jobs"))
        .header("origin", &own)
        .header("sec-fetch-site", "same-origin")
        .json(&body)
        .send()
        .await
        .expect("POST");
    assert_eq!(own_page.status(), StatusCode::ACCEPTED);
    let job: Value = own_page.json().await.expect("job");
    let id = job["id"].as_str().expect("id").to_string();
    let curl = http
        .post(system.url("/v1/jobs"))
        .json(&json!({"kind": "noop"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(curl.status(), StatusCode::ACCEPTED);

    // Reads are not guarded (the browser keeps other sites from reading the answers).
    let read = http
        .get(system.url(&format!("/v1/jobs/{id}")))
        .header("origin", "https://evil.example")
        .send()
        .await
        .expect("GET");
    assert_eq!(read.status(), StatusCode::OK);

    // Cancelling from another site is refused; the job still runs.
    let cancel = http
        .delete(system.url(&format!("/v1/jobs/{id}")))
        .header("origin", "https://evil.example")
        .send()
        .await
        .expect("DELETE");
    assert_problem(cancel, StatusCode::FORBIDDEN).await;
    let (_, snapshot) = system.get_job(&id).await;
    assert_ne!(snapshot["state"], "cancelled");

    // A WebSocket handshake from another site: browsers allow it, the gateway does not.
    let handshake = |origin: Option<&str>| {
        let mut request = http
            .get(system.url("/v1/ws"))
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("host", &host);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send()
    };
    let foreign = handshake(Some("https://evil.example"))
        .await
        .expect("GET /v1/ws");
    assert_problem(foreign, StatusCode::FORBIDDEN).await;
    let own_socket = handshake(Some(&own)).await.expect("GET /v1/ws");
    assert_eq!(own_socket.status(), StatusCode::SWITCHING_PROTOCOLS);
    let tool = handshake(None).await.expect("GET /v1/ws");
    assert_eq!(tool.status(), StatusCode::SWITCHING_PROTOCOLS);

    // An HTML upload opened from the gateway's origin runs nothing (it would otherwise be
    // a page of the dashboard's origin, past the same-origin check).
    let upload: Value = http
        .post(system.url("/v1/blobs"))
        .header(CONTENT_TYPE, "text/html")
        .body("<script>fetch('/v1/jobs', {method: 'POST'})</script>")
        .send()
        .await
        .expect("POST /v1/blobs")
        .json()
        .await
        .expect("JSON");
    let blob = http
        .get(system.url(&format!("/v1/blobs/{}", upload["id"].as_str().expect("id"))))
        .send()
        .await
        .expect("GET blob");
    assert_eq!(blob.status(), StatusCode::OK);
    assert_eq!(header(&blob, CONTENT_TYPE), "text/html");
    assert!(header(&blob, CONTENT_SECURITY_POLICY).starts_with("sandbox;"));
    assert_eq!(
        header(&blob, reqwest::header::X_CONTENT_TYPE_OPTIONS),
        "nosniff"
    );

    // The page's own cancel button: same origin.
    let cancel = http
        .delete(system.url(&format!("/v1/jobs/{id}")))
        .header("origin", &own)
        .send()
        .await
        .expect("DELETE");
    assert_eq!(cancel.status(), StatusCode::OK);
}

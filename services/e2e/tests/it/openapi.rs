//! The OpenAPI contract: `/openapi.json` names every route the gateway serves (the list
//! comes from the router itself, `jetjobs_gateway::routes`), every route it names is
//! served, the submit body is `oneOf` the registered kinds, and `/docs` is served from
//! the binary.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::System;

/// The routes that are not in the document, and why. Nothing else may be left out.
const EXCLUDED: &[&str] = &[
    // The web dashboard (`/ui` and its assets): HTML for people, a client of the API.
    "/ui",
    // Swagger UI (`/docs`, `/docs/` and its assets): the page that shows /openapi.json.
    "/docs",
];

const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

async fn document(system: &System) -> Value {
    let response = system
        .http
        .get(system.url("/openapi.json"))
        .send()
        .await
        .expect("GET /openapi.json");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json")),
        "{:?}",
        response.headers()
    );
    response.json().await.expect("JSON")
}

/// `(path, method)` of every operation of a document.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in METHODS {
            if item.get(method).is_some() {
                out.insert((path.clone(), method.to_string()));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_in_the_spec() {
    let system = System::start().await;
    let config = jetjobs_gateway::Config::local(&system.nats.url());
    // The very function the gateway builds its router with: each route registered there
    // is either an annotated handler (so in the document) or named as undocumented.
    let (_router, api, undocumented) =
        jetjobs_gateway::routes(&config, system.nats.client().await).split();
    for route in &undocumented {
        assert!(
            EXCLUDED.contains(&route.path),
            "{} is served but not in the OpenAPI document ({}); annotate its handler \
             with #[utoipa::path] and register it with .routes(routes!(…))",
            route.path,
            route.why
        );
    }
    let registered = operations(&api);
    let served_doc = document(&system).await;
    let served = operations(&served_doc);
    assert_eq!(registered, served, "/openapi.json and the router disagree");
    for needed in [
        ("/v1/jobs", "post"),
        ("/v1/jobs/{id}", "get"),
        ("/v1/jobs/{id}", "delete"),
        ("/openapi.json", "get"),
    ] {
        assert!(
            served.contains(&(needed.0.to_string(), needed.1.to_string())),
            "{needed:?}"
        );
    }

    // And every operation of the document is routed: whatever it answers to a dummy
    // request, it is not the router's fallback (404 "no such endpoint") nor a 405.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    for (path, method) in &served {
        let concrete = path
            .replace("{id}", "0193a5b2-0000-7000-8000-000000000000")
            .replace("{name}", "no-such-schedule")
            .replace("{kind}", "noop");
        let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
        let response = client
            .request(method.clone(), system.url(&concrete))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {concrete}: {e}"));
        let status = response.status();
        // Streams (SSE) answer with headers at once; the body is not read.
        let body: Value = if status == StatusCode::OK {
            Value::Null
        } else {
            response.json().await.unwrap_or(Value::Null)
        };
        assert_ne!(
            status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {concrete}"
        );
        assert!(
            !(status == StatusCode::NOT_FOUND && body["detail"] == "no such endpoint"),
            "{method} {concrete} is in the document but not routed"
        );
    }
}

/// Every `"$ref": "#/…"` of the document resolves inside it.
fn check_refs(doc: &Value, value: &Value) {
    match value {
        Value::Object(object) => {
            for (key, inner) in object {
                if key == "$ref" {
                    let target = inner.as_str().expect("a $ref is a string");
                    let pointer = target.strip_prefix('#').expect("a local $ref");
                    assert!(doc.pointer(pointer).is_some(), "dangling $ref {target}");
                } else {
                    check_refs(doc, inner);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| check_refs(doc, v)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_json_is_3_1_with_the_kinds_as_one_of() {
    let system = System::start().await;
    let doc = document(&system).await;
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1.")),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["title"], "jetjobs");
    check_refs(&doc, &doc);

    // The submit body: one schema per registered kind, discriminated by `kind`, each
    // with the payload schema its processor registered.
    let submit = &doc["components"]["schemas"]["SubmitBody"];
    assert_eq!(submit["discriminator"]["propertyName"], "kind", "{submit}");
    let one_of: BTreeSet<&str> = submit["oneOf"]
        .as_array()
        .expect("oneOf")
        .iter()
        .map(|r| r["$ref"].as_str().expect("$ref"))
        .collect();
    let kinds: Value = system
        .http
        .get(system.url("/v1/kinds"))
        .send()
        .await
        .expect("GET /v1/kinds")
        .json()
        .await
        .expect("kinds");
    let kinds = kinds["kinds"].as_array().expect("kinds");
    assert_eq!(kinds.len(), 5, "{kinds:?}");
    assert_eq!(one_of.len(), kinds.len(), "{one_of:?}");
    for kind in kinds {
        let name = kind["kind"].as_str().expect("kind");
        let reference = format!("#/components/schemas/SubmitBody.{name}");
        assert!(one_of.contains(reference.as_str()), "{name}: {one_of:?}");
        assert_eq!(submit["discriminator"]["mapping"][name], reference.as_str());
        let variant = &doc["components"]["schemas"][format!("SubmitBody.{name}")];
        assert_eq!(variant["properties"]["kind"]["const"], name, "{variant}");
        assert_eq!(variant["additionalProperties"], false, "{variant}");
        let payload = &variant["properties"]["payload"];
        let registered = &kind["payload_schema"];
        // The same schema, but for `$schema` and local definitions moved to components.
        for key in ["type", "required", "properties"] {
            if registered.get(key).is_some() && key != "properties" {
                assert_eq!(payload[key], registered[key], "{name}.{key}");
            }
        }
        assert!(payload.get("$schema").is_none(), "{payload}");
        assert!(payload.get("$defs").is_none(), "{payload}");
    }
    // `sleep` needs `ms`: its payload may not be left out.
    let sleep = &doc["components"]["schemas"]["SubmitBody.sleep"];
    assert!(
        sleep["required"]
            .as_array()
            .expect("required")
            .contains(&Value::from("payload")),
        "{sleep}"
    );

    // Errors: every /v1 operation documents its 503 as problem+json with Retry-After.
    for (path, item) in doc["paths"].as_object().expect("paths") {
        if !path.starts_with("/v1/") {
            continue;
        }
        for method in METHODS {
            let Some(operation) = item.get(method) else {
                continue;
            };
            let unavailable = &operation["responses"]["503"];
            assert!(
                unavailable["content"]["application/problem+json"]["schema"]["$ref"]
                    == "#/components/schemas/Problem",
                "{method} {path}: {unavailable}"
            );
            assert!(
                unavailable["headers"]["Retry-After"].is_object(),
                "{method} {path}"
            );
            assert!(
                operation["operationId"].is_string(),
                "{method} {path} has no operationId"
            );
        }
    }
    // The headers that matter are documented where they are sent.
    let submit_op = &doc["paths"]["/v1/jobs"]["post"];
    let accepted = &submit_op["responses"]["202"];
    for header in ["Location", "Preference-Applied"] {
        assert!(accepted["headers"][header].is_object(), "{header}");
    }
    assert!(accepted["links"]["getJob"].is_object(), "{accepted}");
    let params: BTreeSet<&str> = submit_op["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .map(|p| p["name"].as_str().expect("name"))
        .collect();
    assert!(
        params.contains("Idempotency-Key") && params.contains("Prefer"),
        "{params:?}"
    );
    assert!(
        doc["paths"]["/v1/jobs/{id}"]["get"]["responses"]["200"]["headers"]["ETag"].is_object()
    );
    assert!(doc["paths"]["/v1/jobs"]["get"]["responses"]["200"]["headers"]["Link"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_are_served_from_the_binary() {
    let system = System::start().await;
    let page = system
        .http
        .get(system.url("/docs/"))
        .send()
        .await
        .expect("GET /docs/");
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.expect("HTML");
    assert!(html.contains("swagger-ui"), "{html}");
    // Its assets come from the binary, not a CDN.
    assert!(!html.contains("https://"), "{html}");
    for asset in [
        "/docs/swagger-ui.css",
        "/docs/swagger-ui-bundle.js",
        "/docs/swagger-initializer.js",
    ] {
        let response = system
            .http
            .get(system.url(asset))
            .send()
            .await
            .expect("asset");
        assert_eq!(response.status(), StatusCode::OK, "{asset}");
        let body = response.text().await.expect("asset body");
        assert!(body.len() > 100, "{asset}");
        if asset.ends_with("initializer.js") {
            assert!(body.contains("/openapi.json"), "{body}");
        }
    }
}

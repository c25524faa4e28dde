//! The API's OpenAPI 3.1 contract, generated from the code: `GET /openapi.json`, and
//! Swagger UI at `/docs` (embedded in the binary: it works air-gapped).
//!
//! Every route is registered through [`Routes`]: an annotated handler
//! (`#[utoipa::path(...)]`) with `.routes(routes!(handler))`, which serves it and puts it
//! in the document at once, so a route cannot exist without its spec. The few routes that
//! are not API (the dashboard's page, the docs UI's assets) go through
//! [`Routes::undocumented`], which names them and says why; the e2e test
//! `openapi::every_route_is_in_the_spec` lists them as its only exclusions.
//!
//! The document is static except for one part: the submit body. Job kinds and their
//! payload schemas are registered at runtime by processors (KV `job_kinds`), so
//! `/openapi.json` fills `SubmitBody` in when it is asked for: `oneOf` one schema per
//! registered kind (`SubmitBody.<kind>`, discriminated by `kind`), each with that kind's
//! payload schema.

use std::sync::Arc;

use axum::Extension;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse as _, Response};
use serde::Serialize;
use serde_json::{Map, Value, json};
use utoipa::openapi::OpenApi;
use utoipa::{OpenApi as _, ToSchema};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};

use crate::AppState;
use crate::error::PROBLEM_JSON;

/// The static part of the document: info, tags, and the shared components.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "jetjobs",
        description = "Durable background jobs behind an HTTP API, on NATS JetStream.\n\n\
            Submit a job (`POST /v1/jobs`, `202 Accepted` with a `Location`), then poll it, \
            long-poll it (`?wait=N`), wait for it (`Prefer: wait=N`), or stream its changes \
            (SSE, WebSocket). Every error is `application/problem+json` (RFC 9457).\n\n\
            The submit body's schema (`SubmitBody`) is built from the job kinds the running \
            processors have registered, with each kind's payload schema.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    tags(
        (name = "jobs", description = "Submit, read, wait for, cancel and retry jobs."),
        (name = "events", description = "Streams of job changes: Server-Sent Events and WebSocket."),
        (name = "blobs", description = "Large inputs and results (Object Store `job_blobs`)."),
        (name = "schedules", description = "Recurring schedules (cron or interval)."),
        (name = "kinds", description = "Registered job kinds, their payload schemas and limits."),
        (name = "operations", description = "Health, readiness, metrics and this document."),
    ),
    components(schemas(Problem, PayloadError))
)]
struct ApiDoc;

/// An RFC 9457 problem: what every error answer is (`application/problem+json`).
#[derive(Serialize, ToSchema)]
#[schema(example = json!({
    "type": "/problems/unknown-kind", "title": "Unprocessable Entity", "status": 422,
    "detail": "unknown kind \"transcode\"; registered kinds: hash, noop, sleep",
    "kinds": ["hash", "noop", "sleep"]
}))]
pub struct Problem {
    /// `/problems/<slug>`: what went wrong, for programs.
    #[serde(rename = "type")]
    pub problem_type: String,
    /// The status's reason phrase.
    pub title: String,
    pub status: u16,
    /// What went wrong, for people.
    pub detail: String,
    /// A `503` after which the job may be queued: retry with `PUT /v1/jobs/{job_id}` and
    /// the same body (also in the `Jetjobs-Job-Id` header).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<uuid::Uuid>,
    /// `unknown-kind`: the registered kinds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kinds: Option<Vec<String>>,
    /// `invalid-payload`: where the payload does not fit its kind's schema.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<PayloadError>>,
    /// The request field the problem is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// A `409` about a job's state: the state it is in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<jetjobs::JobState>,
    /// `full` when the job queue is full.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
}

/// One place where a payload does not fit its kind's schema.
#[derive(Serialize, ToSchema)]
pub struct PayloadError {
    /// A JSON pointer into the request body (`/payload/ms`).
    pub pointer: String,
    pub detail: String,
}

/// A route that is not part of the API contract.
#[derive(Clone, Debug)]
pub struct Undocumented {
    /// The path, or the prefix of the paths, it serves.
    pub path: &'static str,
    pub why: &'static str,
}

/// The gateway's routes, each either in the OpenAPI document or named as undocumented.
pub struct Routes {
    api: OpenApiRouter<AppState>,
    undocumented: Vec<Undocumented>,
}

impl Default for Routes {
    fn default() -> Self {
        Self::new()
    }
}

impl Routes {
    pub fn new() -> Self {
        Self {
            api: OpenApiRouter::with_openapi(ApiDoc::openapi()),
            undocumented: Vec::new(),
        }
    }

    /// Handlers of one path, annotated with `#[utoipa::path]`: `routes!(get_it, put_it)`.
    pub fn routes(self, handlers: UtoipaMethodRouter<AppState>) -> Self {
        Self {
            api: self.api.routes(handlers),
            ..self
        }
    }

    /// Routes that are not API, served by `router`: named, with the reason.
    pub fn undocumented(
        mut self,
        path: &'static str,
        why: &'static str,
        router: Router<AppState>,
    ) -> Self {
        self.undocumented.push(Undocumented { path, why });
        Self {
            api: self.api.merge(OpenApiRouter::from(router)),
            ..self
        }
    }

    pub fn merge(mut self, other: Routes) -> Self {
        self.undocumented.extend(other.undocumented);
        Self {
            api: self.api.merge(other.api),
            ..self
        }
    }

    /// Applies layers (`route_layer`, `layer`) to the routes so far.
    pub fn with(
        self,
        apply: impl FnOnce(OpenApiRouter<AppState>) -> OpenApiRouter<AppState>,
    ) -> Self {
        Self {
            api: apply(self.api),
            ..self
        }
    }

    /// The router, the finished document (as JSON), and the undocumented routes.
    pub fn split(self) -> (Router<AppState>, Value, Vec<Undocumented>) {
        let (router, api) = self.api.split_for_parts();
        (router, finish(&api), self.undocumented)
    }
}

/// What every operation shares, added once here rather than on each handler: the errors
/// any `/v1` route can answer (NATS unreachable, a timeout, a bug), those of any JSON
/// body, and the kind name's rule (a derived schema of a newtype cannot carry it).
/// (As JSON: utoipa's types do not read back every schema they write.)
fn finish(api: &OpenApi) -> Value {
    let mut doc = serde_json::to_value(api).unwrap_or_else(|e| {
        tracing::error!(error = %e, "Cannot encode the OpenAPI document.");
        json!({})
    });
    patch(&mut doc);
    doc
}

fn problem_response(description: &str, retry_after: bool) -> Value {
    let mut response = json!({
        "description": description,
        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    });
    if retry_after {
        response["headers"] = json!({
            "Retry-After": {
                "description": "Seconds to wait before retrying.",
                "schema": {"type": "integer", "minimum": 0},
            },
            "Jetjobs-Job-Id": {
                "description": "The job this answer concerns, which may be queued \
                    (also `job_id` in the body): retry with `PUT /v1/jobs/{id}` and the same body.",
                "schema": {"type": "string", "format": "uuid"},
            },
        });
    }
    response
}

/// One Server-Sent Event, as a `text/event-stream` response's schema describes each.
fn sse_event() -> Value {
    json!({
        "type": "object",
        "description": "One Server-Sent Event. `snapshot` events carry a job's snapshot \
            (`JobSnapshot`) as `data` and its KV revision as `id`; `stats` events carry the \
            `GET /v1/stats` document.",
        "required": ["data"],
        "properties": {
            "event": {"type": "string", "examples": ["snapshot", "stats"]},
            "id": {"type": "string", "description": "The KV revision (snapshots): resume with `Last-Event-ID`."},
            "data": {"type": "string", "contentMediaType": "application/json"},
            "retry": {"type": "integer"},
        },
    })
}

/// A query, header or path parameter is text on the wire: it can be absent, never `null`.
fn no_null(schema: &mut Value) {
    if let Some(types) = schema.get_mut("type").and_then(Value::as_array_mut) {
        types.retain(|t| t != "null");
        if types.len() == 1 {
            let only = types[0].clone();
            schema["type"] = only;
        }
    }
    if let Some(Value::Array(one_of)) = schema.get_mut("oneOf") {
        one_of.retain(|s| s.get("type").is_none_or(|t| t != "null"));
        if one_of.len() == 1 {
            let only = one_of.remove(0);
            *schema = only;
        }
    }
}

fn patch(doc: &mut Value) {
    if let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        schemas.insert("SseEvent".to_string(), sse_event());
    }
    if let Some(kind) = doc.pointer_mut("/components/schemas/Kind") {
        kind["pattern"] = json!("^[a-z0-9][a-z0-9_-]{0,63}$");
        kind["minLength"] = json!(1);
        kind["maxLength"] = json!(jetjobs::job::MAX_KIND_LEN);
        kind["description"] =
            json!("A job kind: 1 to 64 of a-z, 0-9, `_` and `-`, starting with a letter or digit.");
    }
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let api = path.starts_with("/v1/");
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, operation) in item.iter_mut() {
            if !matches!(method.as_str(), "get" | "put" | "post" | "delete" | "patch") {
                continue;
            }
            let json_body = operation
                .pointer("/requestBody/content/application~1json")
                .is_some();
            if let Some(parameters) = operation
                .get_mut("parameters")
                .and_then(Value::as_array_mut)
            {
                for parameter in parameters {
                    if parameter["name"] == "Last-Event-ID" {
                        // A revision, or empty: what EventSource sends after an event
                        // without an id, which resumes nothing.
                        parameter["schema"] = json!({"anyOf": [
                            {"type": "integer", "minimum": 0, "maximum": i64::MAX},
                            {"type": "string", "maxLength": 0},
                        ]});
                    } else if let Some(schema) = parameter.get_mut("schema") {
                        no_null(schema);
                    }
                }
            }
            if let Some(responses) = operation
                .get_mut("responses")
                .and_then(Value::as_object_mut)
            {
                for response in responses.values_mut() {
                    if let Some(stream) = response.pointer_mut("/content/text~1event-stream") {
                        stream["schema"] = json!({"$ref": "#/components/schemas/SseEvent"});
                    }
                }
            }
            let Some(responses) = operation
                .get_mut("responses")
                .and_then(Value::as_object_mut)
            else {
                continue;
            };
            let mut add = |status: &str, response: Value| {
                responses.entry(status.to_string()).or_insert(response);
            };
            if api {
                add(
                    "500",
                    problem_response("A bug or an unreadable stored record.", false),
                );
                add(
                    "503",
                    problem_response(
                        "NATS is unreachable, slow or full, or the request took longer than \
                         `JETJOBS_REQUEST_TIMEOUT_SECS`: retry after `Retry-After`.",
                        true,
                    ),
                );
            }
            if json_body {
                add(
                    "400",
                    problem_response("The body is not well-formed JSON.", false),
                );
                add(
                    "408",
                    problem_response("The request body did not arrive in time.", false),
                );
                add(
                    "413",
                    problem_response("The body is larger than `JETJOBS_MAX_BODY_BYTES`.", false),
                );
                add(
                    "415",
                    problem_response(
                        "Not `Content-Type: application/json`, or an unsupported \
                         `Content-Encoding` (gzip and zstd are accepted).",
                        false,
                    ),
                );
                add(
                    "422",
                    problem_response(
                        "The body is JSON of the wrong shape or out of range.",
                        false,
                    ),
                );
            }
        }
    }
}

/// The static document, as JSON, shared with the `/openapi.json` handler.
#[derive(Clone)]
pub struct Document(pub Arc<Value>);

impl Document {
    pub fn new(doc: Value) -> Self {
        Self(Arc::new(doc))
    }
}

/// `GET /openapi.json`.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "getOpenApi",
    tag = "operations",
    responses(
        (status = 200, description = "This document (OpenAPI 3.1), with the submit body's \
            schema built from the kinds registered now.", body = Object, content_type = "application/json"),
    )
)]
pub async fn document(
    State(state): State<AppState>,
    Extension(document): Extension<Document>,
) -> Response {
    let mut doc = (*document.0).clone();
    let kinds = registered_kinds(&state).await;
    with_kinds(&mut doc, &kinds);
    let mut response = axum::Json(doc).into_response();
    // Kinds come and go with processors: always ask again.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// A kind as the document shows it.
pub struct KindSchema {
    pub kind: String,
    pub description: String,
    pub payload_schema: Value,
    /// Whether `{}` fits the payload schema (an absent payload is `{}`).
    pub empty_payload_fits: bool,
}

async fn registered_kinds(state: &AppState) -> Vec<KindSchema> {
    let names = match state.kinds.all().await {
        Ok(names) => names,
        Err(e) => {
            // The static document is still right, only less precise about payloads.
            tracing::warn!(error = %e, "Cannot read the kind registry for /openapi.json.");
            return Vec::new();
        }
    };
    let mut kinds = Vec::with_capacity(names.len());
    for name in names {
        let Ok(kind) = jetjobs::Kind::new(name) else {
            continue;
        };
        if let Ok(Some(registered)) = state.kinds.lookup(&kind).await {
            kinds.push(KindSchema {
                kind: kind.to_string(),
                description: registered.info.description.clone(),
                payload_schema: registered.info.payload_schema.clone(),
                empty_payload_fits: registered.check(&json!({})).is_ok(),
            });
        }
    }
    kinds
}

/// Replaces `SubmitBody` with `oneOf` one schema per kind, discriminated by `kind`. With
/// no kind registered the static schema (any kind, any payload) stays.
pub fn with_kinds(doc: &mut Value, kinds: &[KindSchema]) {
    if kinds.is_empty() {
        return;
    }
    let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let Some(base) = schemas.get("SubmitBody").cloned() else {
        return;
    };
    let mut one_of = Vec::new();
    let mut mapping = Map::new();
    for kind in kinds {
        let name = format!("SubmitBody.{}", kind.kind);
        let reference = format!("#/components/schemas/{name}");
        let mut payload = kind.payload_schema.clone();
        hoist_definitions(&mut payload, &kind.kind, schemas);
        if let Some(object) = payload.as_object_mut() {
            object.remove("$schema");
        }
        let mut variant = base.clone();
        variant["title"] = json!(name);
        variant["description"] = json!(format!("A `{}` job: {}", kind.kind, kind.description));
        variant["properties"]["kind"] = json!({"type": "string", "const": kind.kind});
        variant["properties"]["payload"] = payload;
        let mut required = vec![json!("kind")];
        if !kind.empty_payload_fits {
            required.push(json!("payload"));
        }
        variant["required"] = Value::Array(required);
        schemas.insert(name, variant);
        one_of.push(json!({"$ref": reference}));
        mapping.insert(kind.kind.clone(), json!(reference));
    }
    schemas.insert(
        "SubmitBody".to_string(),
        json!({
            "description": base.get("description").cloned().unwrap_or(json!(
                "The body of `POST /v1/jobs` and `PUT /v1/jobs/{id}`."
            )),
            "oneOf": one_of,
            "discriminator": {"propertyName": "kind", "mapping": mapping},
        }),
    );
}

/// A payload schema's `$defs` (or `definitions`) move to the components, named
/// `<kind>.<name>`, and its local references follow them: inside the document, `#/$defs/…`
/// would point at the document's root.
fn hoist_definitions(schema: &mut Value, kind: &str, schemas: &mut Map<String, Value>) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    let mut moved = Vec::new();
    for key in ["$defs", "definitions"] {
        if let Some(Value::Object(definitions)) = object.remove(key) {
            for (name, definition) in definitions {
                moved.push((key, name, definition));
            }
        }
    }
    let rename = |key: &str, name: &str| -> (String, String) {
        (
            format!("#/{key}/{name}"),
            format!("#/components/schemas/{kind}.{name}"),
        )
    };
    let renames: Vec<(String, String)> = moved
        .iter()
        .map(|(key, name, _)| rename(key, name))
        .collect();
    rewrite_refs(schema, &renames);
    for (key, name, mut definition) in moved {
        rewrite_refs(&mut definition, &renames);
        if let Some(object) = definition.as_object_mut() {
            object.remove("$schema");
        }
        let _ = key;
        schemas.insert(format!("{kind}.{name}"), definition);
    }
}

fn rewrite_refs(value: &mut Value, renames: &[(String, String)]) {
    match value {
        Value::Object(object) => {
            for (key, inner) in object.iter_mut() {
                if key == "$ref"
                    && let Value::String(target) = inner
                    && let Some((_, to)) = renames.iter().find(|(from, _)| from == target)
                {
                    *target = to.clone();
                } else {
                    rewrite_refs(inner, renames);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rewrite_refs(v, renames)),
        _ => {}
    }
}

/// Swagger UI at `/docs`, reading `/openapi.json`; its assets are in the binary.
pub fn docs() -> Router<AppState> {
    let config = utoipa_swagger_ui::Config::from("/openapi.json")
        // No call to the public validator: the UI must work air-gapped.
        .validator_url("none")
        .try_it_out_enabled(true);
    Router::from(utoipa_swagger_ui::SwaggerUi::new("/docs").config(config))
}

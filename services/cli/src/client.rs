//! The gateway's HTTP API, as this CLI uses it: one method per route, answers as JSON
//! documents (snapshots stay [`Value`]s, so fields the gateway adds later are kept),
//! errors read from problem+json.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use url::Url;

use crate::error::{Error, Result};

/// How long establishing a connection may take, on every request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The most of an error body read for its `detail`.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// A client of one gateway.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    /// Bound on a whole request/response exchange (not on streams: events, uploads,
    /// downloads).
    timeout: Duration,
}

/// What `POST /v1/jobs` or `PUT /v1/jobs/{id}` answered.
#[derive(Debug)]
pub struct Submitted {
    pub status: StatusCode,
    /// `Idempotent-Replayed: true`: the same key (or id) and body made this job before.
    pub replayed: bool,
    pub snapshot: Value,
}

/// A job to submit.
#[derive(Debug, Default)]
pub struct SubmitRequest {
    /// The JSON body: `kind`, `payload` and the options.
    pub body: serde_json::Map<String, Value>,
    /// `PUT /v1/jobs/{id}` instead of `POST /v1/jobs`.
    pub id: Option<String>,
    pub idempotency_key: Option<String>,
    /// `Prefer: wait=N`.
    pub wait_secs: Option<u64>,
}

/// A page of `GET /v1/jobs`.
#[derive(Debug, Deserialize)]
pub struct JobPage {
    pub jobs: Vec<Value>,
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// A page of `GET /v1/jobs/{id}/history`.
#[derive(Debug, Deserialize)]
pub struct HistoryPage {
    pub id: String,
    pub kind: String,
    pub events: Vec<Value>,
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// A page of `GET /v1/dead-letters`.
#[derive(Debug, Deserialize)]
pub struct DeadLetterPage {
    pub dead_letters: Vec<Value>,
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// What `POST /v1/dead-letters/replay` answered.
#[derive(Debug, Default, Deserialize, serde::Serialize)]
pub struct Replayed {
    pub replayed: Vec<String>,
    pub failed: Vec<ReplayFailure>,
    pub remaining: u64,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct ReplayFailure {
    pub id: String,
    pub status: u16,
    pub detail: String,
}

/// Filters of `GET /v1/jobs`.
#[derive(Debug, Default, Clone)]
pub struct ListFilter {
    pub kind: Option<String>,
    pub state: Option<String>,
    pub limit: Option<u32>,
}

impl Client {
    /// A client of the gateway at `base` (`http://host:port`, perhaps with a path prefix).
    ///
    /// # Errors
    /// [`Error::Usage`] for a URL that is not an absolute `http` URL.
    pub fn new(base: &str, timeout: Duration) -> Result<Self> {
        let base = Url::parse(base)
            .map_err(|e| Error::Usage(format!("--url {base:?} is not a URL: {e}")))?;
        match base.scheme() {
            "http" => {}
            "https" => {
                return Err(Error::Usage(format!(
                    "--url {base}: https is not supported; the gateway speaks plain HTTP \
                     (reach a TLS proxy through a local tunnel)"
                )));
            }
            other => {
                return Err(Error::Usage(format!(
                    "--url {base}: scheme {other:?} is not http"
                )));
            }
        }
        if base.cannot_be_a_base() {
            return Err(Error::Usage(format!("--url {base} cannot be a base URL")));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("jetjobs-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Http(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            http,
            base,
            timeout,
        })
    }

    /// The base URL this client talks to.
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// The bound on a request/response exchange; streams use it as their idle bound.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `base` + the path segments (each escaped: an id cannot change the route).
    pub fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    fn request(&self, method: Method, segments: &[&str]) -> RequestBuilder {
        self.http.request(method, self.url(segments))
    }

    /// Sends a request with the usual bound on its time.
    async fn send(&self, request: RequestBuilder) -> Result<Response> {
        self.send_within(request, self.timeout).await
    }

    async fn send_within(&self, request: RequestBuilder, timeout: Duration) -> Result<Response> {
        check(request.timeout(timeout).send().await?).await
    }

    /// Sends a request without a bound on its total time (streams), only on connecting.
    async fn send_streaming(&self, request: RequestBuilder) -> Result<Response> {
        check(request.send().await?).await
    }

    /// `POST /v1/jobs` (JSON), or `PUT /v1/jobs/{id}`.
    pub async fn submit(&self, job: &SubmitRequest) -> Result<Submitted> {
        let request = match &job.id {
            Some(id) => self.request(Method::PUT, &["v1", "jobs", id]),
            None => self.request(Method::POST, &["v1", "jobs"]),
        }
        .json(&job.body);
        let (request, timeout) = self.submit_headers(request, job);
        submitted(self.send_within(request, timeout).await?).await
    }

    /// `POST /v1/jobs` as multipart: the part `job` (the JSON body) and the part `file`,
    /// streamed from `file` (the kind puts it into its upload field). No bound on its total
    /// time: the file takes as long as its bytes do.
    pub async fn submit_multipart(
        &self,
        job: &SubmitRequest,
        file: reqwest::multipart::Part,
    ) -> Result<Submitted> {
        let body = serde_json::to_vec(&job.body)
            .map_err(|e| Error::Protocol(format!("cannot encode the job: {e}")))?;
        let part = reqwest::multipart::Part::bytes(body)
            .mime_str("application/json")
            .map_err(|e| Error::Protocol(e.to_string()))?;
        let form = reqwest::multipart::Form::new()
            .part("job", part)
            .part("file", file);
        let request = self.request(Method::POST, &["v1", "jobs"]).multipart(form);
        let (request, _) = self.submit_headers(request, job);
        submitted(self.send_streaming(request).await?).await
    }

    fn submit_headers(
        &self,
        mut request: RequestBuilder,
        job: &SubmitRequest,
    ) -> (RequestBuilder, Duration) {
        if let Some(key) = &job.idempotency_key {
            request = request.header("idempotency-key", key);
        }
        let mut timeout = self.timeout;
        if let Some(wait) = job.wait_secs {
            request = request.header("prefer", format!("wait={wait}"));
            timeout += Duration::from_secs(wait);
        }
        (request, timeout)
    }

    /// `GET /v1/jobs/{id}`.
    pub async fn job(&self, id: &str) -> Result<Value> {
        json(
            self.send(self.request(Method::GET, &["v1", "jobs", id]))
                .await?,
        )
        .await
    }

    /// `DELETE /v1/jobs/{id}`: the `cancelled` snapshot.
    pub async fn cancel(&self, id: &str) -> Result<Value> {
        json(
            self.send(self.request(Method::DELETE, &["v1", "jobs", id]))
                .await?,
        )
        .await
    }

    /// `POST /v1/jobs/{id}/retry`: the job `queued` again.
    pub async fn retry(&self, id: &str) -> Result<Value> {
        let request = self.request(Method::POST, &["v1", "jobs", id, "retry"]);
        json(self.send(request).await?).await
    }

    /// `GET /v1/jobs/{id}/result`, to be read as a stream (a result stored by reference
    /// can be large).
    pub async fn result(&self, id: &str) -> Result<Response> {
        self.send_streaming(self.request(Method::GET, &["v1", "jobs", id, "result"]))
            .await
    }

    /// `GET /v1/jobs`: one page.
    pub async fn list(&self, filter: &ListFilter, cursor: Option<&str>) -> Result<JobPage> {
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(kind) = &filter.kind {
            query.push(("kind", kind.clone()));
        }
        if let Some(state) = &filter.state {
            query.push(("state", state.clone()));
        }
        if let Some(limit) = filter.limit {
            query.push(("limit", limit.to_string()));
        }
        if let Some(cursor) = cursor {
            query.push(("cursor", cursor.to_string()));
        }
        let request = self.request(Method::GET, &["v1", "jobs"]).query(&query);
        json(self.send(request).await?).await
    }

    /// `GET /v1/jobs/{id}/history`: one page.
    pub async fn history(&self, id: &str, cursor: Option<&str>) -> Result<HistoryPage> {
        let mut request = self.request(Method::GET, &["v1", "jobs", id, "history"]);
        if let Some(cursor) = cursor {
            request = request.query(&[("cursor", cursor)]);
        }
        json(self.send(request).await?).await
    }

    /// `GET /v1/dead-letters`: one page.
    pub async fn dead_letters(
        &self,
        kind: Option<&str>,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<DeadLetterPage> {
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(kind) = kind {
            query.push(("kind", kind.to_string()));
        }
        if let Some(limit) = limit {
            query.push(("limit", limit.to_string()));
        }
        if let Some(cursor) = cursor {
            query.push(("cursor", cursor.to_string()));
        }
        let request = self
            .request(Method::GET, &["v1", "dead-letters"])
            .query(&query);
        json(self.send(request).await?).await
    }

    /// `POST /v1/dead-letters/replay` with `body` (`{"ids": […]}` or `{"all": true, …}`).
    pub async fn replay(&self, body: &Value) -> Result<Replayed> {
        let request = self
            .request(Method::POST, &["v1", "dead-letters", "replay"])
            .json(body);
        json(self.send(request).await?).await
    }

    /// `GET /v1/stats`.
    pub async fn stats(&self) -> Result<Value> {
        json(
            self.send(self.request(Method::GET, &["v1", "stats"]))
                .await?,
        )
        .await
    }

    /// `POST /v1/blobs` with a streamed body; the blob's description.
    pub async fn upload(&self, body: reqwest::Body, content_type: &str) -> Result<Value> {
        let request = self
            .request(Method::POST, &["v1", "blobs"])
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        json(self.send_streaming(request).await?).await
    }

    /// `GET /v1/jobs/{id}/events` (SSE), from after `last_event_id` when reconnecting.
    pub async fn job_events(&self, id: &str, last_event_id: Option<&str>) -> Result<Response> {
        let mut headers = HeaderMap::new();
        headers.insert(
            reqwest::header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        if let Some(last) = last_event_id.and_then(|l| HeaderValue::from_str(l).ok()) {
            headers.insert("last-event-id", last);
        }
        let request = self
            .request(Method::GET, &["v1", "jobs", id, "events"])
            .headers(headers);
        self.send_streaming(request).await
    }
}

/// The response if it is a success; otherwise the error its problem+json describes.
async fn check(response: Response) -> Result<Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    Err(problem(status, read_capped(response).await))
}

/// Up to [`MAX_ERROR_BODY`] bytes of an error's body (whatever arrived, if it broke off).
async fn read_capped(mut response: Response) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = MAX_ERROR_BODY.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_ERROR_BODY {
            break;
        }
    }
    body
}

/// The error an answer with `status` and `body` means: its problem+json `detail` (or
/// `title`), else the first line of the body, else the status's reason; on one line.
pub fn problem(status: StatusCode, body: Vec<u8>) -> Error {
    let document: Option<Value> = serde_json::from_slice(&body).ok();
    let field = |name: &str| {
        document
            .as_ref()
            .and_then(|d| d.get(name))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let detail = field("detail")
        .or_else(|| field("title"))
        .or_else(|| {
            // Text (a proxy's error page), not a JSON document without a detail.
            if document.is_some() {
                return None;
            }
            String::from_utf8_lossy(&body)
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .map(|l| l.chars().take(200).collect())
        })
        .unwrap_or_else(|| {
            status
                .canonical_reason()
                .unwrap_or("no reason given")
                .to_string()
        });
    let detail = detail.split_whitespace().collect::<Vec<_>>().join(" ");
    Error::Api {
        status,
        detail,
        job_id: field("job_id"),
    }
}

/// The body of a successful answer, as JSON.
async fn json<T: DeserializeOwned>(response: Response) -> Result<T> {
    let bytes = response.bytes().await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::Protocol(format!("not the JSON expected: {e}")))
}

async fn submitted(response: Response) -> Result<Submitted> {
    let status = response.status();
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
    let snapshot = json(response).await?;
    Ok(Submitted {
        status,
        replayed,
        snapshot,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_escape_ids_and_keep_a_path_prefix() {
        let client =
            Client::new("http://127.0.0.1:8080/jetjobs/", Duration::from_secs(1)).expect("client");
        assert_eq!(
            client.url(&["v1", "jobs", "a/b?c"]).as_str(),
            "http://127.0.0.1:8080/jetjobs/v1/jobs/a%2Fb%3Fc"
        );
        let client = Client::new("http://127.0.0.1:8080", Duration::from_secs(1)).expect("client");
        assert_eq!(
            client.url(&["v1", "stats"]).as_str(),
            "http://127.0.0.1:8080/v1/stats"
        );
    }

    #[test]
    fn only_http_urls() {
        for bad in ["127.0.0.1:8080", "ftp://x", "https://x", "not a url"] {
            let error = Client::new(bad, Duration::from_secs(1)).expect_err(bad);
            assert!(matches!(error, Error::Usage(_)), "{bad}: {error:?}");
        }
    }

    #[test]
    fn problems_become_one_line() {
        let body = br#"{"type":"/problems/not-found","title":"Not Found","status":404,
            "detail":"no job\n 42"}"#;
        let error = problem(StatusCode::NOT_FOUND, body.to_vec());
        assert_eq!(error.to_string(), "no job 42 (404)");
        assert_eq!(error.exit_code(), crate::error::exit::NOT_FOUND);

        let error = problem(
            StatusCode::SERVICE_UNAVAILABLE,
            b"\n<html>busy</html>\n".to_vec(),
        );
        assert_eq!(error.to_string(), "<html>busy</html> (503)");
        assert_eq!(error.exit_code(), crate::error::exit::UNAVAILABLE);

        let error = problem(StatusCode::CONFLICT, Vec::new());
        assert_eq!(error.to_string(), "Conflict (409)");
        assert_eq!(error.exit_code(), crate::error::exit::FAILURE);
    }
}

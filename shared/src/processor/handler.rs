//! What a processor author writes: one [`Handler`] per job kind.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::FutureExt as _;
use schemars::JsonSchema;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::job::{JobId, JobRequest, Kind, Progress};
use crate::kinds::{DEFAULT_MAX_ATTEMPTS, DEFAULT_TIMEOUT_SECS};

/// How a handler says an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// Worth another attempt (a timeout, an unavailable dependency).
    #[error("{0}")]
    Retryable(String),
    /// Will fail the same way every time (bad input): the job fails now, no retries.
    #[error("{0}")]
    Permanent(String),
}

impl JobError {
    pub fn retryable(message: impl std::fmt::Display) -> Self {
        Self::Retryable(message.to_string())
    }

    pub fn permanent(message: impl std::fmt::Display) -> Self {
        Self::Permanent(message.to_string())
    }
}

/// Static facts about a kind, registered in `job_kinds` when the processor starts.
#[derive(Clone, Debug)]
pub struct KindDef {
    pub kind: Kind,
    pub description: String,
    pub max_attempts: u32,
    pub timeout_secs: u64,
    /// The payload field that takes a `job_blobs` id: where a multipart submit's file
    /// goes, and what the gateway checks exists at submit.
    pub upload_field: Option<String>,
}

impl KindDef {
    /// A kind with the default attempts (3) and timeout (300 s).
    ///
    /// # Panics
    /// If `name` is not a valid kind: kinds are compile-time constants of a processor.
    pub fn new(name: &str, description: &str) -> Self {
        #[allow(clippy::expect_used)]
        let kind = Kind::new(name).expect("a processor's kind names are valid constants");
        Self {
            kind,
            description: description.to_string(),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            timeout_secs: DEFAULT_TIMEOUT_SECS,
            upload_field: None,
        }
    }

    /// The kind takes an uploaded blob's id in `field` (`POST /v1/jobs` multipart puts
    /// the file there).
    pub fn upload_field(mut self, field: &str) -> Self {
        self.upload_field = Some(field.to_string());
        self
    }

    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    pub fn timeout_secs(mut self, secs: u64) -> Self {
        self.timeout_secs = secs;
        self
    }
}

/// One job kind. The runtime decodes the payload into `Payload` (a payload that does
/// not decode fails the job at once, without retries) and encodes `Output` as the result.
pub trait Handler: Send + Sync + 'static {
    type Payload: DeserializeOwned + JsonSchema + Send + 'static;
    type Output: Serialize + Send + 'static;

    fn def(&self) -> KindDef;

    /// The payload's JSON Schema, registered in `job_kinds`; the gateway refuses (422)
    /// at submit what it does not accept. Derived from `Payload`; a kind whose limits
    /// are configured at run time adds them with [`constrain`], so that the schema
    /// refuses whatever the handler would fail for.
    fn schema(&self) -> Value {
        schema_of::<Self::Payload>()
    }

    fn handle(
        &self,
        payload: Self::Payload,
        ctx: JobContext,
    ) -> impl Future<Output = Result<Self::Output, JobError>> + Send;
}

/// The JSON Schema of `T`, as JSON.
pub fn schema_of<T: JsonSchema>() -> Value {
    serde_json::to_value(schemars::schema_for!(T)).unwrap_or(Value::Null)
}

/// Adds `keywords` (an object, e.g. `{"minimum": 1}`) to the schema of `property`, a
/// top-level property of `schema`. A schema without that property is left alone.
pub fn constrain(schema: &mut Value, property: &str, keywords: Value) {
    let (Some(target), Value::Object(keywords)) = (
        schema
            .get_mut("properties")
            .and_then(|p| p.get_mut(property))
            .and_then(Value::as_object_mut),
        keywords,
    ) else {
        return;
    };
    target.extend(keywords);
}

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A [`Handler`] with its types erased, so one processor can serve several kinds.
pub(crate) trait ErasedHandler: Send + Sync {
    fn def(&self) -> KindDef;
    fn schema(&self) -> Value;
    fn call(&self, payload: Value, ctx: JobContext) -> BoxFuture<'_, Result<Value, JobError>>;
}

impl<H: Handler> ErasedHandler for H {
    fn def(&self) -> KindDef {
        Handler::def(self)
    }

    fn schema(&self) -> Value {
        Handler::schema(self)
    }

    fn call(&self, payload: Value, ctx: JobContext) -> BoxFuture<'_, Result<Value, JobError>> {
        let payload = match serde_json::from_value::<H::Payload>(payload) {
            Ok(payload) => payload,
            Err(e) => {
                let error = JobError::Permanent(format!("invalid payload: {e}"));
                return async move { Err(error) }.boxed();
            }
        };
        self.handle(payload, ctx)
            .map(|outcome| {
                outcome.and_then(|output| {
                    serde_json::to_value(output)
                        .map_err(|e| JobError::Permanent(format!("cannot encode the result: {e}")))
                })
            })
            .boxed()
    }
}

/// What a running handler can see and do: its job's identity, progress reports,
/// cancellation, and a way to run CPU-bound work off the async runtime.
#[derive(Clone)]
pub struct JobContext {
    request: Arc<JobRequest>,
    attempt: u32,
    progress: Arc<watch::Sender<Option<Progress>>>,
    cancel: CancellationToken,
    /// CPU work started by this job; the runtime waits for it before freeing the slot.
    blocking: TaskTracker,
    blobs: crate::blobs::Blobs,
}

impl JobContext {
    pub(crate) fn new(
        request: Arc<JobRequest>,
        attempt: u32,
        progress: Arc<watch::Sender<Option<Progress>>>,
        cancel: CancellationToken,
        blocking: TaskTracker,
        blobs: crate::blobs::Blobs,
    ) -> Self {
        Self {
            request,
            attempt,
            progress,
            cancel,
            blocking,
            blobs,
        }
    }

    /// Blob `id` of `job_blobs` (an upload the job names) as an `AsyncRead`, read chunk
    /// by chunk: a 1 GiB blob never sits in memory. A blob that does not exist (or has
    /// expired) is a permanent error.
    pub async fn blob(
        &self,
        id: &str,
    ) -> Result<impl tokio::io::AsyncRead + Unpin + Send + 'static, JobError> {
        self.blobs.reader(id).await.map_err(|e| match e {
            crate::blobs::BlobError::NotFound(_) => {
                JobError::Permanent(format!("blob {id} does not exist (or has expired)"))
            }
            other => JobError::Retryable(format!("reading blob {id}: {other}")),
        })
    }

    /// Blob `id`'s description (size, content type), or a permanent error if it is gone.
    pub async fn blob_info(&self, id: &str) -> Result<crate::blobs::BlobInfo, JobError> {
        match self.blobs.info(id).await {
            Ok(Some(info)) => Ok(info),
            Ok(None) => Err(JobError::Permanent(format!(
                "blob {id} does not exist (or has expired)"
            ))),
            Err(e) => Err(JobError::Retryable(format!("reading blob {id}: {e}"))),
        }
    }

    pub fn job_id(&self) -> JobId {
        self.request.id
    }

    pub fn kind(&self) -> &Kind {
        &self.request.kind
    }

    /// This run's number, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    pub fn max_attempts(&self) -> u32 {
        self.request.max_attempts
    }

    /// Reports progress. Cheap and synchronous, so it can be called from blocking code
    /// in a tight loop: reports are coalesced and published at a bounded rate.
    pub fn progress(&self, current: u64, total: u64) {
        self.progress
            .send_replace(Some(Progress { current, total }));
    }

    /// True once the job should stop (timeout, shutdown, cancellation).
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Completes when the job should stop; `select!` on it in long awaits.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }

    /// Runs CPU-bound `work` on the blocking thread pool, so heartbeats, progress reports
    /// and every other task keep running. `work` gets this context to report progress and
    /// to poll [`JobContext::is_cancelled`].
    pub async fn blocking<R, F>(&self, work: F) -> Result<R, JobError>
    where
        F: FnOnce(JobContext) -> R + Send + 'static,
        R: Send + 'static,
    {
        let ctx = self.clone();
        self.blocking
            .spawn_blocking(move || work(ctx))
            .await
            .map_err(|e| match e.try_into_panic() {
                Ok(panic) => JobError::Retryable(format!(
                    "the handler panicked: {}",
                    super::panic_message(&panic)
                )),
                Err(e) => JobError::Retryable(format!("the blocking task was cancelled: {e}")),
            })
    }
}

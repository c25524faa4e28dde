//! The processor runtime: everything a processor service gets for free around its
//! [`Handler`]s. One concept a file:
//!
//! - [`config`]: how a replica runs (concurrency, prefetch, retries, grace period);
//! - `pull`: a durable pull consumer with bounded concurrency, never holding more job
//!   messages than it has room for, however deep the backlog; graceful shutdown;
//! - `attempt`: one delivery from message to ack — what the job's events say
//!   ([`crate::fence::plan`]), the fenced `started` claim, the handler under its timeout,
//!   cancellation and shutdown, and the outcome: `succeeded`, or `retrying` with a
//!   jittered nak, or `failed` with a dead letter; the outcome event is stored before
//!   the job is acked;
//! - `keepalive`: `AckProgress` heartbeats while a job is held, and progress reports;
//! - `dead`: dead letters and undecodable messages;
//! - `cancel`: client cancellations of running jobs;
//! - [`handler`]: what a processor author writes.
//!
//! Every write goes through [`crate::protocol::EventLog`], the one fenced-write protocol.

mod attempt;
mod cancel;
pub mod config;
mod dead;
mod handler;
mod keepalive;
mod pull;
mod runtime;
mod slots;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use tokio_util::sync::CancellationToken;

pub use config::RuntimeConfig;
pub use dead::ERROR_HEADER;
use handler::ErasedHandler;
pub use handler::{Handler, JobContext, JobError, KindDef, constrain, schema_of};
pub(crate) use runtime::panic_message;

use crate::job::{Kind, Priority};
use crate::kinds::{self, KindInfo};
use crate::layout::{self, ProcessorSpec, Requirement};
use crate::metrics::{ConsumerGauges, Exposition, JobMetrics, Registry};
use crate::protocol::EventLog;
use runtime::Runtime;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Layout(#[from] layout::ProvisionError),
    #[error(transparent)]
    Registry(#[from] kinds::RegistryError),
    #[error("{0}")]
    Nats(String),
    #[error(transparent)]
    Connect(#[from] crate::config::ConnectError),
    #[error("cannot serve metrics: {0}")]
    Admin(String),
    #[error(
        "consumer {consumer} does not receive {missing:?}; run `jetjobs-admin provision` so its filter covers every kind this processor serves"
    )]
    FilterMismatch {
        consumer: String,
        missing: Vec<String>,
    },
}

/// How long closing the NATS connection may take at shutdown.
const CLOSE_BUDGET: Duration = Duration::from_secs(3);

/// A processor service: a name (its durable consumer) and the handlers of its kinds.
pub struct Processor {
    name: String,
    handlers: HashMap<Kind, Arc<dyn ErasedHandler>>,
    default_concurrency: usize,
}

impl Processor {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            handlers: HashMap::new(),
            default_concurrency: 64,
        }
    }

    /// Concurrency when the configuration leaves it at 0. CPU-bound processors set the
    /// number of CPUs: more jobs at once would only share the same cores.
    pub fn default_concurrency(mut self, jobs: usize) -> Self {
        self.default_concurrency = jobs.max(1);
        self
    }

    /// One job per CPU this process may use.
    pub fn cpus() -> usize {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    }

    pub fn handler(mut self, handler: impl Handler) -> Self {
        let kind = Handler::def(&handler).kind;
        self.handlers.insert(kind, Arc::new(handler));
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// What provisioning needs to know: the consumer name and the kinds it must receive.
    pub fn spec(&self) -> ProcessorSpec {
        let mut kinds: Vec<Kind> = self.handlers.keys().cloned().collect();
        kinds.sort();
        ProcessorSpec {
            name: self.name.clone(),
            kinds,
        }
    }

    /// The `job_kinds` entries this processor registers.
    pub fn kind_infos(&self) -> Vec<KindInfo> {
        let mut infos: Vec<KindInfo> = self
            .handlers
            .values()
            .map(|h| {
                let def = h.def();
                KindInfo {
                    kind: def.kind,
                    description: def.description,
                    processor: self.name.clone(),
                    max_attempts: def.max_attempts,
                    timeout_secs: def.timeout_secs,
                    payload_schema: h.schema(),
                    upload_field: def.upload_field,
                    registered_at: crate::job::now(),
                }
            })
            .collect();
        infos.sort_by(|a, b| a.kind.cmp(&b.kind));
        infos
    }

    /// A processor service's whole life: connects as the processor's name, runs jobs
    /// until `shutdown`, then drains the connection so what the runtime published
    /// (outcome events, acks) reaches the server before the process exits.
    pub async fn serve(
        self,
        nats: &crate::config::NatsArgs,
        runtime: RuntimeConfig,
        shutdown: CancellationToken,
    ) -> Result<(), RuntimeError> {
        let client = nats.connect(&self.name).await?;
        self.run(client.clone(), runtime, shutdown).await?;
        // Bounded: with the server gone, a drain would wait for a reconnection forever.
        match tokio::time::timeout(CLOSE_BUDGET, client.drain()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "Could not drain the NATS connection."),
            Err(_) => tracing::warn!("NATS did not confirm the drain in time; exiting anyway."),
        }
        Ok(())
    }

    /// Checks the layout, registers the kinds, and runs jobs until `shutdown` is cancelled;
    /// then finishes or releases in-flight jobs and returns.
    pub async fn run(
        self,
        client: async_nats::Client,
        config: RuntimeConfig,
        shutdown: CancellationToken,
    ) -> Result<(), RuntimeError> {
        let mut config = config;
        if config.concurrency == 0 {
            config.concurrency = self.default_concurrency;
        }
        if config.prefetch == 0 {
            config.prefetch = config.concurrency.min(16);
        }
        let js = jetstream::new(client.clone());
        layout::require(
            &js,
            &[
                Requirement::Stream(layout::JOBS_STREAM),
                Requirement::Stream(layout::EVENTS_STREAM),
                Requirement::Stream(layout::DEAD_STREAM),
                Requirement::Stream(layout::BLOBS_STREAM),
                Requirement::Bucket(layout::KINDS_BUCKET),
                Requirement::Bucket(layout::LIMITS_BUCKET),
                Requirement::Bucket(layout::LEASES_BUCKET),
                Requirement::Bucket(layout::WORKERS_BUCKET),
                Requirement::Consumer {
                    stream: layout::JOBS_STREAM,
                    name: self.name.clone(),
                },
                Requirement::Consumer {
                    stream: layout::JOBS_STREAM,
                    name: self.spec().consumer_name(Priority::High),
                },
                Requirement::Consumer {
                    stream: layout::JOBS_STREAM,
                    name: self.spec().consumer_name(Priority::Low),
                },
            ],
        )
        .await?;
        let nats = |e: &dyn std::fmt::Display| RuntimeError::Nats(e.to_string());
        let jobs = js
            .get_stream(layout::JOBS_STREAM)
            .await
            .map_err(|e| nats(&e))?;
        let lane = |priority| {
            let (jobs, name) = (&jobs, self.spec().consumer_name(priority));
            async move {
                jobs.get_consumer::<jetstream::consumer::pull::Config>(&name)
                    .await
                    .map_err(|e| nats(&e))
            }
        };
        let lanes = pull::Lanes {
            high: lane(Priority::High).await?,
            normal: lane(Priority::Normal).await?,
            low: lane(Priority::Low).await?,
        };
        let consumer: &PullConsumer = &lanes.normal;
        let consumer_config = &consumer.cached_info().config;
        let mut filters = consumer_config.filter_subjects.clone();
        filters.push(consumer_config.filter_subject.clone());
        let missing: Vec<String> = self
            .spec()
            .filter_subjects()
            .into_iter()
            .filter(|s| !filters.contains(s))
            .collect();
        if !missing.is_empty() {
            return Err(RuntimeError::FilterMismatch {
                consumer: self.name.clone(),
                missing,
            });
        }
        // A third of ack_wait leaves two chances for a heartbeat to arrive in time.
        let heartbeat = (consumer_config.ack_wait / 3).max(Duration::from_millis(50));

        let kinds_bucket = js
            .get_key_value(layout::KINDS_BUCKET)
            .await
            .map_err(|e| nats(&e))?;
        for info in self.kind_infos() {
            kinds::register(&kinds_bucket, &info).await?;
        }

        let defs = self
            .handlers
            .iter()
            .map(|(kind, h)| (kind.clone(), h.def()))
            .collect();
        let events = js
            .get_stream(layout::EVENTS_STREAM)
            .await
            .map_err(|e| nats(&e))?;
        let dead = js
            .get_stream(layout::DEAD_STREAM)
            .await
            .map_err(|e| nats(&e))?;
        let mut registry = Registry::default();
        let metrics = JobMetrics::register(&mut registry);
        let consumers = ConsumerGauges::register(
            &mut registry,
            js.clone(),
            Priority::ALL
                .iter()
                .map(|p| {
                    (
                        layout::JOBS_STREAM.to_string(),
                        self.spec().consumer_name(*p),
                    )
                })
                .collect(),
        );
        let admin_shutdown = CancellationToken::new();
        crate::metrics::spawn_admin(
            &config.admin,
            Exposition::new(registry, Some(consumers)),
            admin_shutdown.clone(),
        )
        .await
        .map_err(|e| RuntimeError::Admin(e.to_string()))?;
        // Metrics stay up until the last job is handed back, then go with the runtime.
        let _admin = admin_shutdown.drop_guard();
        // Outlives the pull loop: jobs finishing during shutdown still record outcomes.
        let writing = CancellationToken::new();
        let _stop_writing = writing.clone().drop_guard();
        let group = crate::batch::GroupCommit::start(
            client.clone(),
            js.clone(),
            config.group_commit(),
            writing,
        );
        // Watched until the runtime is gone.
        let writing_limits = CancellationToken::new();
        let _stop_limits = writing_limits.clone().drop_guard();
        let presence = Arc::new(crate::presence::Presence::new(
            &self.name,
            self.handlers.keys().cloned(),
            config.concurrency,
        ));
        let workers = js
            .get_key_value(layout::WORKERS_BUCKET)
            .await
            .map_err(|e| nats(&e))?;
        // Said until the runtime is gone (jobs finishing during shutdown still count).
        let present = CancellationToken::new();
        let _stop_presence = present.clone().drop_guard();
        tokio::spawn(Arc::clone(&presence).publish(workers, present));
        let runtime = Arc::new(Runtime {
            presence,
            metrics,
            events: EventLog::new(js.clone(), events).with_group_commit(group),
            dead,
            blobs: crate::blobs::Blobs::open(&js).await.map_err(|e| nats(&e))?,
            handlers: self.handlers,
            defs,
            heartbeat,
            run_slots: slots::RunSlots::new(config.concurrency),
            limits: crate::limits::Limiter::start(&js, writing_limits.clone())
                .await
                .map_err(|e| nats(&e))?,
            jobs,
            stop_starting: CancellationToken::new(),
            config: config.clone(),
            cancellations: Arc::default(),
        });
        let listening = CancellationToken::new();
        let listener = tokio::spawn(Arc::clone(&runtime.cancellations).listen(
            client.clone(),
            runtime.handlers.keys().cloned().collect(),
            listening.clone(),
        ));
        tracing::info!(
            processor = %self.name,
            kinds = ?runtime.handlers.keys().map(Kind::as_str).collect::<Vec<_>>(),
            concurrency = config.concurrency,
            "Processor started."
        );
        runtime.pull_loop(&lanes, shutdown).await;
        listening.cancel();
        match listener.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "Could not listen for cancellations."),
            Err(e) => tracing::warn!(error = %e, "The cancellation listener failed."),
        }
        match tokio::time::timeout(CLOSE_BUDGET, client.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "Could not flush the NATS connection on shutdown.");
            }
            Err(_) => tracing::warn!("NATS did not confirm the flush in time."),
        }
        tracing::info!(processor = %self.name, "Processor stopped.");
        Ok(())
    }
}

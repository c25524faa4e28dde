//! `jetjobs-admin`: provisions and checks the NATS layout. Runs with an admin user
//! (the local runner, the compose `provision` step); services themselves only check.

use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use jetjobs::config::NatsArgs;
use jetjobs::layout::{self, Layout};

#[derive(Parser, Debug)]
#[command(
    name = "jetjobs-admin",
    version,
    about = "Provision and check the jetjobs NATS layout."
)]
struct Cli {
    #[command(flatten)]
    nats: NatsArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create or update every stream, consumer and KV bucket. Safe to run again.
    Provision(LayoutArgs),
    /// Print the layout that `provision` would create, as JSON-ish text, without touching NATS.
    Show(LayoutArgs),
}

#[derive(clap::Args, Debug, Clone)]
struct LayoutArgs {
    /// Replicas of every stream and bucket (3 on a three-node cluster).
    #[arg(long, env = "JETJOBS_REPLICAS", default_value_t = 1)]
    replicas: usize,
    /// Keep streams in memory instead of on disk (tests and demos only: loses jobs on restart).
    #[arg(long, env = "JETJOBS_MEMORY_STORAGE")]
    memory: bool,
    /// Jobs the JOBS stream holds before the gateway answers 503.
    #[arg(long, env = "JETJOBS_JOBS_MAX_MSGS", default_value_t = 1_000_000)]
    jobs_max_msgs: i64,
    /// Bytes the JOBS stream holds before the gateway answers 503.
    #[arg(long, env = "JETJOBS_JOBS_MAX_BYTES", default_value_t = 1 << 30)]
    jobs_max_bytes: i64,
    /// How long a running job may go without a heartbeat before it is redelivered.
    #[arg(long, env = "JETJOBS_ACK_WAIT_SECS", default_value_t = 30)]
    ack_wait_secs: u64,
    /// Jobs a processor consumer may have in flight, over all its replicas.
    #[arg(long, env = "JETJOBS_MAX_ACK_PENDING", default_value_t = 10_000)]
    max_ack_pending: i64,
    /// Window in which a re-published job or event is dropped as a duplicate.
    #[arg(long, env = "JETJOBS_DUPLICATE_WINDOW_SECS", default_value_t = 120)]
    duplicate_window_secs: u64,
    /// How long events, dead letters and job snapshots are kept.
    #[arg(long, env = "JETJOBS_RETENTION_HOURS", default_value_t = 168)]
    retention_hours: u64,
    /// Bytes `JOB_EVENTS` holds; full, processors cannot record outcomes and their jobs
    /// wait (unacked) until events expire or this is raised.
    #[arg(long, env = "JETJOBS_EVENTS_MAX_BYTES", default_value_t = Layout::default().events_max_bytes)]
    events_max_bytes: i64,
    /// Bytes `JOBS_DEAD` holds; full, failed jobs wait (unacked) for room.
    #[arg(long, env = "JETJOBS_DEAD_MAX_BYTES", default_value_t = Layout::default().dead_max_bytes)]
    dead_max_bytes: i64,
    /// Bytes KV `job_status` holds; full, the gateway answers 503 to new jobs.
    #[arg(long, env = "JETJOBS_STATUS_MAX_BYTES", default_value_t = Layout::default().status_max_bytes)]
    status_max_bytes: i64,
    /// How long an `Idempotency-Key` or a `PUT` id is remembered (the same request returns
    /// the same job within it). At most the retention, which is also the default.
    #[arg(long, env = "JETJOBS_IDEMPOTENCY_TTL_HOURS")]
    idempotency_ttl_hours: Option<u64>,
    /// Bytes KV `job_idempotency` holds; full, the gateway answers 503 to new jobs with an
    /// `Idempotency-Key` or a client-chosen id.
    #[arg(long, env = "JETJOBS_IDEMPOTENCY_MAX_BYTES", default_value_t = Layout::default().idempotency_max_bytes)]
    idempotency_max_bytes: i64,
    /// Bytes Object Store `job_blobs` holds (uploads, large results); full, uploads are
    /// refused (503).
    #[arg(long, env = "JETJOBS_BLOBS_MAX_BYTES", default_value_t = Layout::default().blobs_max_bytes)]
    blobs_max_bytes: i64,
    /// Bytes `JOBS_INDEX` (listing) holds, about 150 per job; full, new jobs still run but
    /// are not listed.
    #[arg(long, env = "JETJOBS_INDEX_MAX_BYTES", default_value_t = Layout::default().index_max_bytes)]
    index_max_bytes: i64,
    /// `JOBS_SCHEDULES` (delayed jobs, expiries, recurring schedules): the gateway stops
    /// accepting delayed jobs at 90 % of either limit.
    #[arg(long, env = "JETJOBS_SCHEDULES_MAX_MSGS", default_value_t = Layout::default().schedules_max_msgs)]
    schedules_max_msgs: i64,
    #[arg(long, env = "JETJOBS_SCHEDULES_MAX_BYTES", default_value_t = Layout::default().schedules_max_bytes)]
    schedules_max_bytes: i64,
}

impl LayoutArgs {
    fn layout(&self) -> Layout {
        let hours = |h: u64| Duration::from_secs(h.saturating_mul(3600));
        Layout {
            replicas: self.replicas,
            storage: if self.memory {
                async_nats::jetstream::stream::StorageType::Memory
            } else {
                async_nats::jetstream::stream::StorageType::File
            },
            jobs_max_msgs: self.jobs_max_msgs,
            jobs_max_bytes: self.jobs_max_bytes,
            ack_wait: Duration::from_secs(self.ack_wait_secs),
            max_ack_pending: self.max_ack_pending,
            duplicate_window: Duration::from_secs(self.duplicate_window_secs),
            retention: hours(self.retention_hours),
            events_max_bytes: self.events_max_bytes,
            dead_max_bytes: self.dead_max_bytes,
            status_max_bytes: self.status_max_bytes,
            idempotency_ttl: hours(self.idempotency_ttl_hours.unwrap_or(self.retention_hours)),
            idempotency_max_bytes: self.idempotency_max_bytes,
            blobs_max_bytes: self.blobs_max_bytes,
            index_max_bytes: self.index_max_bytes,
            schedules_max_msgs: self.schedules_max_msgs,
            schedules_max_bytes: self.schedules_max_bytes,
            // Every processor of `jetjobs::layout` (`Layout::default`).
            ..Layout::default()
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    jetjobs::telemetry::init_logs("admin");
    match cli.command {
        Command::Provision(args) => {
            let client = cli.nats.connect("admin").await?;
            let js = async_nats::jetstream::new(client.clone());
            let report = layout::provision(&js, &args.layout())
                .await
                .context("provisioning the NATS layout")?;
            print!("{report}");
            client.flush().await.context("flushing NATS")?;
        }
        Command::Show(args) => {
            let layout = args.layout();
            layout.validate()?;
            println!("{:#?}", layout.jobs_stream());
            println!("{:#?}", layout.events_stream());
            println!("{:#?}", layout.dead_stream());
            for bucket in layout.buckets() {
                println!("{bucket:#?}");
            }
            for spec in &layout.processors {
                println!("{:#?}", layout.processor_consumer(spec));
            }
            println!("{:#?}", layout.status_consumer());
            println!("{:#?}", layout.notifier_consumer());
        }
    }
    Ok(())
}

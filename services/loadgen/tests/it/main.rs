//! loadgen against a real nats-server and a stand-in gateway: a few lines of HTTP/1.1
//! that answer `POST /v1/jobs` and write `job_status` entries as the real services would,
//! in the orders that matter (terminal before the 202, terminal in the 202, errors).

mod fake_gateway;

use clap::Parser as _;
use jetjobs::testing::NatsServer;
use jetjobs_loadgen::{Args, run};

use fake_gateway::{Behaviour, FakeGateway};

fn args(gateway: &FakeGateway, nats: &NatsServer, extra: &[&str]) -> Args {
    let url = gateway.url();
    let nats_url = nats.url();
    let mut argv = vec![
        "jetjobs-loadgen",
        "--url",
        &url,
        "--nats-url",
        &nats_url,
        "--no-progress",
    ];
    argv.extend_from_slice(extra);
    Args::try_parse_from(argv).expect("valid arguments")
}

#[tokio::test]
async fn counts_every_job_whatever_order_its_news_arrives_in() {
    let nats = NatsServer::start();
    let gateway = FakeGateway::start(&nats, Behaviour::Mixed).await;
    let summary = run(args(
        &gateway,
        &nats,
        &["-n", "200", "-c", "8", "--timeout-secs", "30"],
    ))
    .await
    .expect("the run works");

    // Every 10th request is refused with 503; of the rest, every 4th fails.
    assert_eq!(summary.jobs, 200);
    assert_eq!(summary.submit_errors, 20);
    assert_eq!(summary.http_errors.get("503"), Some(&20));
    assert!(summary.error_examples["503"].contains("queue full"));
    assert_eq!(summary.accepted, 180);
    assert_eq!(summary.done, 180);
    assert_eq!(
        (summary.succeeded + summary.failed, summary.other),
        (180, 0)
    );
    assert!(summary.failed > 0 && summary.succeeded > 0);
    assert_eq!(summary.pending, 0);
    assert!(!summary.complete, "20 jobs were never accepted");
    assert_eq!(summary.stopped_by, None);
    assert_eq!(summary.submit_latency_ms.count, 200);
    assert_eq!(summary.e2e_latency_ms.count, 180);
    assert!(summary.e2e_throughput > 0.0 && summary.submit_throughput > 0.0);
    assert!(summary.e2e_latency_ms.max >= summary.e2e_latency_ms.p50);
}

#[tokio::test]
async fn a_clean_run_is_complete() {
    let nats = NatsServer::start();
    let gateway = FakeGateway::start(&nats, Behaviour::AllSucceed).await;
    let summary = run(args(&gateway, &nats, &["-n", "100", "-c", "16"]))
        .await
        .expect("the run works");
    assert!(summary.complete, "{summary}");
    assert_eq!((summary.succeeded, summary.submit_errors), (100, 0));
    assert!(summary.http_errors.is_empty());
}

#[tokio::test]
async fn submit_only_ends_when_every_job_is_accepted_without_waiting_for_them() {
    let nats = NatsServer::start();
    let gateway = FakeGateway::start(&nats, Behaviour::NeverFinish).await;
    let summary = run(args(
        &gateway,
        &nats,
        &[
            "-n",
            "50",
            "-c",
            "4",
            "--timeout-secs",
            "30",
            "--submit-only",
        ],
    ))
    .await
    .expect("the run works");
    assert!(summary.complete, "{summary}");
    assert_eq!(summary.stopped_by, None, "it did not wait for the timeout");
    assert_eq!((summary.accepted, summary.done), (50, 0));
    assert_eq!(summary.pending, 50);
    assert!(summary.submit_throughput > 0.0);
}

#[tokio::test]
async fn jobs_that_never_finish_time_out() {
    let nats = NatsServer::start();
    let gateway = FakeGateway::start(&nats, Behaviour::NeverFinish).await;
    let summary = run(args(
        &gateway,
        &nats,
        &["-n", "10", "-c", "2", "--timeout-secs", "1"],
    ))
    .await
    .expect("the run works");
    assert!(!summary.complete);
    assert_eq!(summary.stopped_by.as_deref(), Some("timeout after 1 s"));
    assert_eq!(
        (summary.accepted, summary.done, summary.pending),
        (10, 0, 10)
    );
    assert!(
        summary
            .to_string()
            .contains("INCOMPLETE (timeout after 1 s): 0 of 10")
    );
}

#[tokio::test]
async fn an_unreachable_gateway_is_reported_as_transport_errors() {
    let nats = NatsServer::start();
    // Bind and drop: a port where nothing listens.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let nats_url = nats.url();
    let args = Args::try_parse_from([
        "jetjobs-loadgen",
        "--url",
        &url,
        "--nats-url",
        &nats_url,
        "--no-progress",
        "-n",
        "5",
    ])
    .expect("valid arguments");
    jetjobs::layout::provision(
        &async_nats::jetstream::new(nats.client().await),
        &jetjobs::layout::Layout::default(),
    )
    .await
    .expect("provision");
    let summary = run(args).await.expect("the run works");
    assert_eq!(summary.http_errors.get("transport"), Some(&5));
    assert!(!summary.complete);
}

#[tokio::test]
async fn a_missing_bucket_is_a_clear_error() {
    let nats = NatsServer::start();
    let nats_url = nats.url();
    let args = Args::try_parse_from(["jetjobs-loadgen", "--nats-url", &nats_url, "--no-progress"])
        .expect("valid arguments");
    let error = run(args).await.expect_err("no job_status bucket");
    assert!(format!("{error:#}").contains("job_status"), "{error:#}");
}

//! The status service serves `/metrics` on its admin port: its consumer's backlog, as
//! JetStream counts it.

use std::time::Duration;

use jetjobs::layout::Layout;
use jetjobs::state::{Change, JobEvent};

use crate::helpers::{Setup, Status, request};

use jetjobs::testing::metric_sample as sample;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_port_shows_the_projector_backlog() {
    let setup = Setup::start(Layout::default()).await;
    let jobs: Vec<_> = (0..200).map(|_| request("noop")).collect();
    let events: Vec<JobEvent> = jobs
        .iter()
        .map(|job| JobEvent::new(job, 1, Change::Started))
        .collect();
    setup.publish_events(&events).await;

    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let mut config = setup.status_config();
    config.admin.admin_listen = Some(admin);
    let status = Status::start(config);
    let labels = r#"stream="JOB_EVENTS",consumer="status-projector""#;
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = match http.get(format!("http://{admin}/metrics")).send().await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(), // not listening yet
        };
        let pending = sample(&text, "jetjobs_consumer_pending_messages", labels);
        let ack_pending = sample(&text, "jetjobs_consumer_ack_pending_messages", labels);
        if pending == Some(0.0) && ack_pending == Some(0.0) {
            assert_eq!(sample(&text, "jetjobs_consumer_info_up", labels), Some(1.0));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the backlog never showed as drained: {pending:?} / {ack_pending:?}\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    status.stop().await;
    // The admin server goes with the service.
    let gone = http
        .get(format!("http://{admin}/metrics"))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(gone.is_err(), "the admin port is closed after shutdown");
}

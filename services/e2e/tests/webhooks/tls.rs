//! https callbacks: delivered to a receiver whose certificate the notifier trusts
//! (through `JETJOBS_WEBHOOK_CA_FILE`), refused with a TLS reason otherwise.

use std::time::Duration;

use jetjobs::webhook::{self, headers};
use serde_json::json;

use crate::harness::{Options, Receiver, System, TestCert, secrets};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn an_https_receiver_with_a_trusted_certificate_gets_a_signed_delivery() {
    let cert = TestCert::new();
    let system = System::start_with(Options {
        notifier_ca_file: Some(cert.pem_path()),
        ..Options::default()
    })
    .await;
    let receiver = Receiver::start_https(vec![], &cert).await;
    assert!(receiver.base.starts_with("https://localhost:"));
    let id = system
        .submit_with_callback("noop", json!({}), &receiver.url("/hook"))
        .await;

    let job = system.wait_for_webhook(&id, "delivered", WAIT).await;
    assert_eq!(job["webhook"]["attempts"], 1, "{job}");
    assert_eq!(job["webhook"]["last_status"], 200, "{job}");

    let deliveries = receiver.deliveries();
    assert_eq!(deliveries.len(), 1);
    let delivery = &deliveries[0];
    assert_eq!(delivery.path, "/hook");
    for secret in secrets() {
        webhook::verify(
            &secret,
            delivery.header(headers::ID),
            delivery.header(headers::TIMESTAMP),
            delivery.header(headers::SIGNATURE),
            &delivery.body,
            chrono::Utc::now().timestamp(),
            300,
        )
        .expect("the signature verifies with each secret");
    }
    let body = delivery.json();
    assert_eq!(body["type"], "job.succeeded");
    assert_eq!(body["data"]["id"], id.as_str());
}

#[tokio::test]
async fn an_https_receiver_with_an_untrusted_certificate_is_retried_with_a_tls_error() {
    // The notifier trusts another certificate, not the receiver's.
    let trusted = TestCert::new();
    let system = System::start_with(Options {
        notifier_ca_file: Some(trusted.pem_path()),
        ..Options::default()
    })
    .await;
    let untrusted = TestCert::new();
    let receiver = Receiver::start_https(vec![], &untrusted).await;
    let id = system
        .submit_with_callback("noop", json!({}), &receiver.url("/hook"))
        .await;

    let job = system.wait_for_webhook(&id, "retrying", WAIT).await;
    assert_eq!(job["state"], "succeeded");
    assert!(job["webhook"]["last_status"].is_null(), "{job}");
    let error = job["webhook"]["last_error"].as_str().unwrap_or_default();
    // Both certificates carry rcgen's default subject, so the reason is the signature.
    assert!(
        error.contains("invalid peer certificate"),
        "a TLS reason: {error}"
    );
    assert!(
        receiver.deliveries().is_empty(),
        "nothing was sent over an untrusted connection"
    );
}

#[tokio::test]
async fn a_ca_file_that_holds_no_certificate_stops_the_notifier_at_start() {
    let mut empty = tempfile::NamedTempFile::new().expect("a temp file");
    std::io::Write::write_all(&mut empty, b"not a certificate\n").expect("write");
    let missing = empty.path().with_extension("missing");
    for path in [empty.path().to_path_buf(), missing] {
        let mut config = crate::harness::notifier_config("nats://127.0.0.1:1");
        config.ca_file = Some(path.clone());
        let shutdown = tokio_util::sync::CancellationToken::new();
        let error = tokio::time::timeout(WAIT, jetjobs_notifier::run(config, shutdown))
            .await
            .expect("fails fast")
            .expect_err("refuses to start");
        let text = format!("{error:#}");
        assert!(
            text.contains(&path.display().to_string()),
            "names the file: {text}"
        );
    }
}

//! The gateway binary, started with `OTEL_EXPORTER_OTLP_ENDPOINT`, sends its spans over
//! OTLP/gRPC to a stand-in collector.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use async_nats::jetstream;
use jetjobs::layout::{self, Layout};
use jetjobs::testing::NatsServer;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use reqwest::StatusCode;

use crate::WAIT;
use crate::helpers::{eventually, service_binary};

/// `(service.name, span name, job_id)` of every span received.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<(String, String, String)>>>);

fn string(attributes: &[KeyValue], key: &str) -> String {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| match &v.value {
            Some(AnyValue::StringValue(s)) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = self.0.lock().expect("collector state");
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .map(|r| string(&r.attributes, "service.name"))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    received.push((
                        service.clone(),
                        span.name,
                        string(&span.attributes, "job_id"),
                    ));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_exports_its_spans_over_otlp_when_an_endpoint_is_set() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let service = TraceServiceServer::new(collector.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );

    let nats = NatsServer::start();
    let js = jetstream::new(nats.client().await);
    layout::provision(&js, &Layout::default())
        .await
        .expect("provision");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let _gateway = Killed(
        Command::new(service_binary("jetjobs-gateway"))
            .env("NATS_URL", nats.url())
            .env("JETJOBS_LISTEN", format!("127.0.0.1:{port}"))
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .env_remove("OTEL_SERVICE_NAME")
            .env_remove("OTEL_SDK_DISABLED")
            .stdout(Stdio::null())
            .spawn()
            .expect("start the gateway"),
    );
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    eventually(WAIT, || async {
        let ready = http.get(format!("{base}/readyz")).send().await.ok()?;
        (ready.status() == StatusCode::OK).then_some(())
    })
    .await
    .expect("the gateway became ready");

    // Any request makes a span; one about a job names it.
    let id = uuid::Uuid::now_v7().to_string();
    let response = http
        .get(format!("{base}/v1/jobs/{id}"))
        .send()
        .await
        .expect("GET /v1/jobs/{id}");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    let expected = (
        "jetjobs-gateway".to_string(),
        "GET /v1/jobs/{id}".to_string(),
        id,
    );
    eventually(WAIT, || async {
        collector
            .0
            .lock()
            .expect("collector state")
            .contains(&expected)
            .then_some(())
    })
    .await
    .expect("the collector received the request's span, named for its service");
    // Readiness probes (this test's own included) and scrapes are not traced.
    let received = collector.0.lock().expect("collector state").clone();
    assert!(
        received
            .iter()
            .all(|(_, name, _)| !name.contains("/readyz")),
        "{received:?}"
    );
}

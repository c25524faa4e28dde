//! The suites' system (`jetjobs_e2e::system`) and the assertions the scenarios share.

use reqwest::StatusCode;
use serde_json::Value;

pub use jetjobs_e2e::system::{Options, System, eventually, service_binary, start_status};

/// Asserts that a response is RFC 9457 problem+json with the given status, and returns it.
pub async fn assert_problem(response: reqwest::Response, status: StatusCode) -> Value {
    jetjobs_e2e::system::problem(response, status)
        .await
        .unwrap_or_else(|e| panic!("not the expected problem: {e}"))
}

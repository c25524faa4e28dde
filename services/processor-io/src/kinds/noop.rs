//! `noop`: succeeds at once with `{}`. Benchmarks use it to measure the pipeline itself,
//! so it must cost nothing beyond decoding its (empty) payload.

use jetjobs::processor::{Handler, JobContext, JobError, KindDef};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const KIND: &str = "noop";

/// An empty object; any field is rejected, so a typo is not silently ignored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoopRequest {}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub struct NoopResult {}

pub struct Noop;

impl Handler for Noop {
    type Payload = NoopRequest;
    type Output = NoopResult;

    fn def(&self) -> KindDef {
        KindDef::new(
            KIND,
            "Does nothing and succeeds with {}; for benchmarks and smoke tests.",
        )
    }

    async fn handle(
        &self,
        _payload: NoopRequest,
        _ctx: JobContext,
    ) -> Result<NoopResult, JobError> {
        Ok(NoopResult {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accepts_only_an_empty_object() {
        assert_eq!(
            serde_json::from_value::<NoopRequest>(json!({})).expect("{} is valid"),
            NoopRequest {}
        );
        assert!(serde_json::from_value::<NoopRequest>(json!({"x": 1})).is_err());
        assert!(serde_json::from_value::<NoopRequest>(json!([1])).is_err());
    }

    #[test]
    fn result_is_an_empty_object() {
        assert_eq!(
            serde_json::to_value(NoopResult {}).expect("encodes"),
            json!({})
        );
    }
}

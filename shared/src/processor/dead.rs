//! Dead letters: a job that failed for good is copied, as submitted, to `JOBS_DEAD`
//! (`jobs.dead.<kind>.<id>`), from where `POST /v1/jobs/{id}/retry` queues it again. A
//! message that is not a job request at all goes there too.

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream::DirectGetErrorKind};
use bytes::Bytes;

use super::runtime::{Runtime, trace_headers};
use crate::job::{JobId, JobRequest, Kind};
use crate::metrics::KindLabel;
use crate::protocol::{Outgoing, Published, Retries};
use crate::state::{Change, JobEvent};
use crate::subjects::{self, headers};

/// The header that carries a dead letter's error, one line of it.
pub const ERROR_HEADER: &str = "Jetjobs-Error";

/// A dead letter's `Nats-Msg-Id`: one per job and failed attempt.
fn dead_msg_id(id: JobId, attempt: u32) -> String {
    format!("{id}.dead.{attempt}")
}

impl Runtime {
    pub(super) async fn dead_letter(
        &self,
        kind: &Kind,
        job_id: Option<JobId>,
        attempt: u32,
        error: &str,
        payload: Bytes,
        trace: &HeaderMap,
    ) -> Published {
        let mut headers = trace.clone();
        headers.insert(headers::KIND, kind.as_str());
        let subject = match job_id {
            Some(id) => {
                headers.insert(headers::JOB_ID, id.to_string().as_str());
                headers.insert(headers::MSG_ID, dead_msg_id(id, attempt).as_str());
                subjects::dead(kind, id)
            }
            None => subjects::dead_undecodable(kind),
        };
        // Header values are one line; the full error is in the job's `failed` event.
        let line: String = error
            .chars()
            .filter(|c| !c.is_control())
            .take(512)
            .collect();
        headers.insert(ERROR_HEADER, line.as_str());
        let published = self
            .events
            .publish(
                Outgoing {
                    subject,
                    headers,
                    payload,
                },
                Retries::BACKGROUND,
            )
            .await;
        if published.is_stored() {
            self.metrics
                .dead_lettered
                .get_or_create(&KindLabel::new(kind))
                .inc();
        }
        published
    }

    /// Makes sure the dead letter of a job that failed at `attempt` exists; `true` once it
    /// does. The run that stored `failed` writes it, but may die (or lose NATS) first; the
    /// job stays unacked then, and each redelivery comes here until the copy is stored.
    pub(super) async fn ensure_dead_letter(
        &self,
        message: &jetstream::Message,
        request: &JobRequest,
        attempt: u32,
        error: &str,
        trace: &HeaderMap,
    ) -> bool {
        match self
            .dead
            .direct_get_last_for_subject(subjects::dead(&request.kind, request.id))
            .await
        {
            Ok(stored)
                if stored
                    .headers
                    .get(headers::MSG_ID)
                    .is_some_and(|v| v.as_str() == dead_msg_id(request.id, attempt)) =>
            {
                return true;
            }
            Ok(_) => {}
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(job_id = %request.id, error = %e, "Cannot read the dead letter; the job will be delivered again.");
                return false;
            }
        }
        tracing::warn!(job_id = %request.id, attempt, "The failed job has no dead letter yet; writing it.");
        self.dead_letter(
            &request.kind,
            Some(request.id),
            attempt,
            error,
            message.payload.clone(),
            trace,
        )
        .await
        .is_stored()
    }

    /// A message that is not a job request cannot be retried into shape: it is
    /// terminated at once, copied to the dead-letter stream, and, if its subject names
    /// its job, that job is recorded as failed with the reason.
    pub(super) async fn poison(
        &self,
        message: jetstream::Message,
        attempt: u32,
        error: serde_json::Error,
    ) {
        let (kind, job_id) = subjects::parse_submit(&message.subject);
        let job_id = job_id.or_else(|| {
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(headers::JOB_ID))
                .and_then(|v| v.as_str().parse::<JobId>().ok())
        });
        let reason = format!("the job message cannot be decoded: {error}");
        tracing::error!(subject = %message.subject, ?job_id, %reason, "Poison message.");
        let trace = trace_headers(message.headers.as_ref());
        let Some(kind) = kind else {
            self.terminate(&message).await;
            return;
        };
        let mut ok = self
            .dead_letter(
                &kind,
                job_id,
                attempt,
                &reason,
                message.payload.clone(),
                &trace,
            )
            .await
            .is_stored();
        if let Some(id) = job_id {
            let request = JobRequest {
                id,
                kind,
                payload: serde_json::Value::Null,
                max_attempts: 1,
                timeout_secs: None,
                created_at: crate::job::now(),
                prior_attempts: 0,
                callback_url: None,
                callback_events: None,
                scheduling: Default::default(),
            };
            // Fenced like every write on the job's subject: a job that something else
            // already ended keeps its end.
            let event = JobEvent::new(&request, attempt, Change::Failed { error: reason });
            let last = match self.events.last(&request.kind, id).await {
                Ok(last) => last,
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot read the poisoned job's events; it will be delivered again.");
                    return;
                }
            };
            if last.as_ref().is_some_and(|(_, e)| e.change.is_terminal()) {
                return self.terminate(&message).await;
            }
            let mut seq = last.map_or(0, |(seq, _)| seq);
            let failed = matches!(
                self.events
                    .write_fenced(&event, &trace, &mut seq, Retries::BACKGROUND)
                    .await,
                crate::protocol::Fenced::Recorded | crate::protocol::Fenced::Superseded(_)
            );
            if failed {
                self.metrics
                    .failed
                    .get_or_create(&KindLabel::new(&request.kind))
                    .inc();
            }
            ok &= failed;
        }
        if ok {
            self.terminate(&message).await;
        }
    }
}

//! The pull loop: at most `concurrency` deliveries at once, each holding a slot only
//! while it sends (a retry waits on the server, as a nak with delay, not here).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use futures::StreamExt as _;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::deliver::Deliverer;

/// How long one pull request stays open; on shutdown it is drained until it ends.
const PULL_EXPIRES: Duration = Duration::from_secs(2);
/// Events asked for per pull request, at most.
const MAX_BATCH: usize = 256;

pub async fn run(
    consumer: jetstream::consumer::PullConsumer,
    deliverer: Deliverer,
    concurrency: usize,
    grace: Duration,
    shutdown: CancellationToken,
) {
    let deliverer = Arc::new(deliverer);
    let slots = Arc::new(Semaphore::new(concurrency.max(1)));
    let tracker = TaskTracker::new();
    // Cancelled when the grace period is over: deliveries still running are handed back.
    let abort = CancellationToken::new();
    let mut backoff = Duration::from_millis(100);
    let mut handed_back = 0_usize;
    while !shutdown.is_cancelled() {
        let first = tokio::select! {
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = shutdown.cancelled() => break,
        };
        let mut permits = vec![first];
        while permits.len() < MAX_BATCH {
            match Arc::clone(&slots).try_acquire_owned() {
                Ok(permit) => permits.push(permit),
                Err(_) => break,
            }
        }
        let pull = consumer
            .batch()
            .max_messages(permits.len())
            .expires(PULL_EXPIRES)
            .messages()
            .await;
        let mut messages = match pull {
            Ok(messages) => messages,
            Err(e) => {
                tracing::warn!(error = %e, "Cannot pull events; retrying.");
                pause(&mut backoff, &shutdown).await;
                continue;
            }
        };
        let mut failed = false;
        // Read the request to its end even after shutdown: what the server sends to it is
        // ours to answer for.
        while let Some(next) = messages.next().await {
            let message = match next {
                Ok(message) => message,
                Err(e) => {
                    tracing::warn!(error = %e, "Event pull interrupted; pulling again.");
                    failed = true;
                    break;
                }
            };
            let permit = match permits.pop() {
                Some(permit) if !shutdown.is_cancelled() => permit,
                _ => {
                    nak_now(&message).await;
                    handed_back += 1;
                    continue;
                }
            };
            let deliverer = Arc::clone(&deliverer);
            let abort = abort.clone();
            tracker.spawn(async move {
                tokio::select! {
                    biased;
                    () = abort.cancelled() => nak_now(&message).await,
                    () = deliverer.handle(message.clone()) => {}
                }
                drop(permit);
            });
        }
        if failed {
            pause(&mut backoff, &shutdown).await;
        } else {
            backoff = Duration::from_millis(100);
        }
    }
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            deliveries = tracker.len(),
            "Deliveries still running after the grace period; handing them back."
        );
        abort.cancel();
        tracker.wait().await;
    }
    if handed_back > 0 {
        tracing::info!(
            events = handed_back,
            "Handed back events it will not deliver."
        );
    }
}

/// Hands an event back for immediate redelivery (to another replica, or the next start).
async fn nak_now(message: &jetstream::Message) {
    if let Err(e) = message.ack_with(AckKind::Nak(None)).await {
        tracing::warn!(subject = %message.subject, error = %e, "Nak not sent; the event comes back after ack_wait.");
    }
}

/// Waits `backoff` (or until shutdown) and doubles it, up to 5 s.
async fn pause(backoff: &mut Duration, shutdown: &CancellationToken) {
    tokio::select! {
        () = tokio::time::sleep(*backoff) => {}
        () = shutdown.cancelled() => {}
    }
    *backoff = (*backoff * 2).min(Duration::from_secs(5));
}

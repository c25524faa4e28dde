//! Run slots: how many handlers run at once, handed out to `high`-priority jobs first.
//!
//! A replica holds more jobs than it runs (prefetch), and they wait here for a slot. A
//! plain semaphore serves them in arrival order, so a `high` job delivered behind a
//! dozen prefetched `normal` ones would wait for all of them. Here a job steps out of
//! the line whenever one of a higher priority waits, and back in once none does.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{AcquireError, Notify, OwnedSemaphorePermit, Semaphore};

use crate::job::Priority;

pub(super) struct RunSlots {
    permits: Arc<Semaphore>,
    /// Jobs waiting for a slot, by priority rank (high, normal, low).
    waiting: [AtomicUsize; 3],
    /// Told when a rank's waiting jobs go from none to some, or back: only the jobs of
    /// lower ranks listen, so a stream of normal jobs wakes no other normal job.
    changed: [Notify; 3],
}

fn rank(priority: Priority) -> usize {
    match priority {
        Priority::High => 0,
        Priority::Normal => 1,
        Priority::Low => 2,
    }
}

/// Counts a job among the waiting of its rank while it waits.
struct Waiting<'a>(&'a RunSlots, usize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.0.waiting[self.1].fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.changed[self.1].notify_waiters();
        }
    }
}

impl RunSlots {
    pub fn new(slots: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(slots.max(1))),
            waiting: Default::default(),
            changed: Default::default(),
        }
    }

    /// Slots free right now.
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }

    /// A slot, once no job of a higher priority waits for one.
    pub async fn acquire(&self, priority: Priority) -> Result<OwnedSemaphorePermit, AcquireError> {
        let mine = rank(priority);
        if self.waiting[mine].fetch_add(1, Ordering::SeqCst) == 0 {
            self.changed[mine].notify_waiters();
        }
        let _waiting = Waiting(self, mine);
        let outranked = || {
            self.waiting[..mine]
                .iter()
                .any(|w| w.load(Ordering::SeqCst) > 0)
        };
        loop {
            // Created before the check: a change after it still wakes this task.
            let high = self.changed[0].notified();
            let normal = self.changed[1].notified();
            tokio::pin!(high, normal);
            if !outranked() {
                tokio::select! {
                    permit = Arc::clone(&self.permits).acquire_owned() => {
                        let permit = permit?;
                        if !outranked() {
                            return Ok(permit);
                        }
                        // A job that goes first came in the meantime.
                        drop(permit);
                        continue;
                    }
                    // A job of a higher rank came: leave the line (dropping the acquire
                    // does) and let it go first.
                    () = &mut high, if mine > 0 => continue,
                    () = &mut normal, if mine > 1 => continue,
                }
            }
            tokio::select! {
                () = &mut high, if mine > 0 => {}
                () = &mut normal, if mine > 1 => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_high_job_overtakes_normal_ones_already_waiting() {
        let slots = Arc::new(RunSlots::new(1));
        let busy = slots.acquire(Priority::Normal).await.expect("slot");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for (name, priority) in [("n1", Priority::Normal), ("n2", Priority::Normal)] {
            let (slots, tx) = (Arc::clone(&slots), tx.clone());
            tokio::spawn(async move {
                let slot = slots.acquire(priority).await.expect("slot");
                let _ = tx.send(name);
                tokio::time::sleep(Duration::from_millis(5)).await;
                drop(slot);
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        {
            let (slots, tx) = (Arc::clone(&slots), tx.clone());
            tokio::spawn(async move {
                let slot = slots.acquire(Priority::High).await.expect("slot");
                let _ = tx.send("high");
                tokio::time::sleep(Duration::from_millis(5)).await;
                drop(slot);
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(busy);
        let mut order = Vec::new();
        for _ in 0..3 {
            order.push(rx.recv().await.expect("order"));
        }
        assert_eq!(order[0], "high", "{order:?}");
    }

    #[tokio::test]
    async fn a_low_job_held_first_still_waits_for_the_normal_ones() {
        let slots = Arc::new(RunSlots::new(1));
        let busy = slots.acquire(Priority::Normal).await.expect("slot");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for (name, priority) in [("low", Priority::Low), ("normal", Priority::Normal)] {
            let (slots, tx) = (Arc::clone(&slots), tx.clone());
            tokio::spawn(async move {
                let slot = slots.acquire(priority).await.expect("slot");
                let _ = tx.send(name);
                tokio::time::sleep(Duration::from_millis(5)).await;
                drop(slot);
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(busy);
        let first = rx.recv().await.expect("first");
        let second = rx.recv().await.expect("second");
        assert_eq!((first, second), ("normal", "low"));
    }
}

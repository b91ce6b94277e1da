//! Kubernetes Events, published off the reconcile path and after dispatch work.
//!
//! A reconcile queues its Event and goes on; one task publishes them in order of queueing with a
//! few requests in flight. Events are bookkeeping (three of an execution's eight requests): while
//! executions wait for their dispatch ([`TargetIndex::ready`]), a `Normal` Event yields to them
//! like a due lock release does ([`yields_to_dispatch`]), so that under a burst the API server
//! serves the dispatches first. `Warning` Events (refusals, failures) never wait. The in-flight bound keeps a
//! burst from opening a request per Event at once. At shutdown, [`Events::flush`] publishes what
//! is still queued without waiting for dispatch, within a bound.
//!
//! kube's [`Recorder`] keeps every Event it published for six minutes, to count repeats of the
//! same Event in one object (a series). Only Events that may repeat about an unchanged object
//! (Warnings, waits) go through that shared recorder; transition Events, one per object and
//! transition, are published by a recorder without that memory: at a steady 10 executions/s the
//! shared cache would otherwise hold some 10 000 Events.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Client,
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use tokio::{sync::mpsc, task::JoinSet, time::Instant};

use super::index::yields_to_dispatch;
use crate::TargetIndex;

/// Events queued and not yet published; beyond that an Event is published at once.
const CAPACITY: usize = 4096;
/// Event requests in flight at most.
const IN_FLIGHT: usize = 4;
/// How often a deferred Event looks again.
const DEFER_STEP: Duration = Duration::from_millis(100);

struct Queued {
    event: Event,
    reference: ObjectReference,
    at: Instant,
    /// Published through the shared recorder, which counts repeats.
    may_repeat: bool,
}

/// Where Events go: the shared recorder for those that may repeat, a fresh one (no memory of
/// past Events) for the others.
#[derive(Clone)]
struct Publisher {
    shared: Recorder,
    client: Client,
    reporter: Reporter,
}

impl Publisher {
    fn recorder(&self, may_repeat: bool) -> Recorder {
        if may_repeat {
            self.shared.clone()
        } else {
            Recorder::new(self.client.clone(), self.reporter.clone())
        }
    }
}

/// The sending side of the Event queue.
#[derive(Clone)]
pub struct Events {
    tx: mpsc::Sender<Queued>,
    publisher: Publisher,
    state: Arc<State>,
}

/// What the publishing task shares with the senders.
#[derive(Default)]
struct State {
    /// Events queued or in flight.
    pending: AtomicUsize,
    /// Shutting down: nothing waits for dispatch any more.
    flushing: AtomicBool,
}

impl Events {
    /// Starts the publishing task (on the current Tokio runtime); it ends when every `Events` is
    /// dropped and the queue is empty.
    pub fn start(client: Client, reporter: Reporter, index: Arc<TargetIndex>) -> Self {
        let (tx, rx) = mpsc::channel(CAPACITY);
        let state = Arc::new(State::default());
        let publisher = Publisher {
            shared: Recorder::new(client.clone(), reporter.clone()),
            client,
            reporter,
        };
        tokio::spawn(drain(rx, publisher.clone(), index, state.clone()));
        Events {
            tx,
            publisher,
            state,
        }
    }

    /// Publishes what is still queued without waiting for dispatch; returns once nothing is
    /// pending or after `within`. Called at shutdown.
    pub async fn flush(&self, within: Duration) {
        self.state.flushing.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + within;
        while self.state.pending.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.state.pending.load(Ordering::Relaxed);
        if left > 0 {
            tracing::warn!(
                left,
                "shutting down with Kubernetes Events not yet published"
            );
        }
    }

    /// Queues `event` about the object of `reference`; `may_repeat` when the same Event may be
    /// published again about the unchanged object.
    pub fn publish(&self, event: Event, reference: ObjectReference, may_repeat: bool) {
        let queued = Queued {
            event,
            reference,
            at: Instant::now(),
            may_repeat,
        };
        self.state.pending.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.tx.try_send(queued) {
            // Full (or the task is gone): publish it now rather than lose it.
            let q = e.into_inner();
            tokio::spawn(send(
                self.publisher.recorder(q.may_repeat),
                q.event,
                q.reference,
                self.state.clone(),
            ));
        }
    }
}

async fn drain(
    mut rx: mpsc::Receiver<Queued>,
    publisher: Publisher,
    index: Arc<TargetIndex>,
    state: Arc<State>,
) {
    let mut in_flight = JoinSet::new();
    while let Some(q) = rx.recv().await {
        while !state.flushing.load(Ordering::Relaxed)
            && waits(q.event.type_, index.ready(), q.at.elapsed())
        {
            tokio::time::sleep(DEFER_STEP).await;
        }
        while in_flight.len() >= IN_FLIGHT {
            in_flight.join_next().await;
        }
        in_flight.spawn(send(
            publisher.recorder(q.may_repeat),
            q.event,
            q.reference,
            state.clone(),
        ));
    }
    while in_flight.join_next().await.is_some() {}
}

async fn send(recorder: Recorder, event: Event, reference: ObjectReference, state: Arc<State>) {
    if let Err(e) = recorder.publish(&event, &reference).await {
        tracing::debug!(error = %e, reason = %event.reason, "cannot publish event");
    }
    state.pending.fetch_sub(1, Ordering::Relaxed);
}

/// Whether an Event of `type_`, queued `waited` ago, waits while `ready` executions wait for
/// their dispatch.
fn waits(type_: EventType, ready: usize, waited: Duration) -> bool {
    type_ == EventType::Normal && yields_to_dispatch(ready, waited)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::index::YIELD_AT_MOST;

    #[test]
    fn normal_events_wait_for_dispatch_but_not_forever_and_warnings_never() {
        let s = Duration::from_secs;
        assert!(waits(EventType::Normal, 5, s(0)));
        assert!(waits(EventType::Normal, 1, s(14)));
        assert!(!waits(EventType::Normal, 0, s(0)), "nothing waits");
        assert!(!waits(EventType::Normal, 5, YIELD_AT_MOST), "waited enough");
        assert!(!waits(EventType::Warning, 5, s(0)), "warnings go at once");
    }
}

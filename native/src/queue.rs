//! The batching queue of one natively served model version.
//!
//! tokio tasks (one per call) push entries; each of the model's instance
//! threads, a Python thread with the GIL released, blocks in
//! [`ModelQueue::next_batch`] until a batch is ready, runs it in onnxruntime and
//! answers every entry through its own oneshot sender. The rules are the
//! Python batcher's (`onnxserve/server/batching/queue.py`) for one priority
//! level with the REJECT timeout action:
//!
//! - rows, not requests, fill a batch, and a request is never split;
//! - only requests whose non-batch shapes agree share a batch (FIFO otherwise);
//! - a batch leaves at once when it holds `target_rows`, when it cannot grow,
//!   when `max_queue_delay` is zero, or once its oldest request waited that long;
//! - a request whose gRPC deadline or queue timeout passed is answered
//!   DEADLINE_EXCEEDED and never costs compute; one whose caller went away
//!   (the call's future dropped, so its receiver closed) is dropped unrun;
//! - `max_queue_size` refuses at once with RESOURCE_EXHAUSTED.
//!
//! Refusals and drops are kept as [`Failure`]s until an instance thread takes
//! them with its next batch, so Python's statistics count them.
use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::spec::{Accepted, ModelSpec};

/// One output tensor of one request's answer.
#[derive(Debug, Clone)]
pub struct OutputTensor {
    /// Index into the spec's outputs.
    pub index: usize,
    pub shape: Vec<i64>,
    pub data: Bytes,
}

/// What became of a queued request.
#[derive(Debug)]
pub enum Outcome {
    Done(Vec<OutputTensor>),
    Failed(tonic::Code, String),
}

/// Why a request ended without running, for the statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    QueueFull,
    TimedOut,
    Cancelled,
}

#[derive(Debug, Clone, Copy)]
pub struct Failure {
    pub kind: FailureKind,
    pub duration: Duration,
}

/// A queued request.
#[derive(Debug)]
pub struct Entry {
    /// Names the entry for [`ModelQueue::abandon`].
    pub id: u64,
    pub request: Accepted,
    pub arrival: Instant,
    /// When it fails unrun (the earlier of its deadline and its queue timeout).
    pub reject_at: Option<Instant>,
    pub reply: oneshot::Sender<Outcome>,
}

/// Why a request was not queued.
#[derive(Debug)]
pub enum Refusal {
    /// The queue is closed (its model version is going away): Python answers.
    Closed,
    /// Answer at once with this status.
    Status(tonic::Code, String),
}

#[derive(Default)]
struct State {
    entries: VecDeque<Entry>,
    failures: Vec<Failure>,
    closed: bool,
    /// Entries handed to instance threads and not yet answered.
    running: usize,
    next_id: u64,
}

pub struct ModelQueue {
    pub spec: ModelSpec,
    state: Mutex<State>,
    ready: Condvar,
}

/// The message of a request that timed out in the queue, as the Python batcher words it.
pub fn timeout_message(model: &str, waited: Duration) -> String {
    format!(
        "the request to model '{model}' timed out after {} us in the queue; it was not run",
        waited.as_micros()
    )
}

impl ModelQueue {
    pub fn new(spec: ModelSpec) -> Self {
        Self {
            spec,
            state: Mutex::new(State::default()),
            ready: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (every step is one push/pop).
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queue a request, or say why not.
    pub fn push(
        &self,
        request: Accepted,
        arrival: Instant,
        deadline: Option<Instant>,
        reply: oneshot::Sender<Outcome>,
    ) -> Result<(u64, Option<Instant>), Refusal> {
        let mut state = self.lock();
        if state.closed {
            return Err(Refusal::Closed);
        }
        // Callers that went away leave before the size is checked (counted as cancelled).
        Self::drop_closed(&mut state);
        let spec = &self.spec;
        if spec.max_queue_size > 0 && state.entries.len() >= spec.max_queue_size {
            state.failures.push(Failure {
                kind: FailureKind::QueueFull,
                duration: Duration::ZERO,
            });
            self.ready.notify_one();
            return Err(Refusal::Status(
                tonic::Code::ResourceExhausted,
                format!(
                    "model '{}' has {} requests queued at priority level 1, its max_queue_size; \
                     retry later",
                    spec.name,
                    state.entries.len()
                ),
            ));
        }
        let timeout = spec.timeout_of(request.timeout_us);
        let mut reject_at = deadline;
        if !timeout.is_zero() {
            let at = arrival + timeout;
            reject_at = Some(reject_at.map_or(at, |d| d.min(at)));
        }
        if reject_at.is_some_and(|at| at <= Instant::now()) {
            state.failures.push(Failure {
                kind: FailureKind::TimedOut,
                duration: Duration::ZERO,
            });
            return Err(Refusal::Status(
                tonic::Code::DeadlineExceeded,
                format!(
                    "the request to model '{}' timed out before it was queued",
                    spec.name
                ),
            ));
        }
        state.next_id += 1;
        let id = state.next_id;
        state.entries.push_back(Entry {
            id,
            request,
            arrival,
            reject_at,
            reply,
        });
        drop(state);
        self.ready.notify_one();
        Ok((id, reject_at))
    }

    /// The call of entry `id` ended without its answer (`kind`: the client went away, or
    /// its own timer expired): if still queued, it leaves unrun and is counted. A
    /// running entry is not: its batch counts it, as the Python batcher does.
    pub fn abandon(&self, id: u64, kind: FailureKind) {
        let mut state = self.lock();
        if let Some(position) = state.entries.iter().position(|e| e.id == id) {
            if let Some(entry) = state.entries.remove(position) {
                let duration = entry.arrival.elapsed();
                state.failures.push(Failure { kind, duration });
                drop(state);
                self.ready.notify_one();
            }
        }
    }

    /// Entries whose callers went away (not yet abandoned) leave, counted as cancelled.
    fn drop_closed(state: &mut State) {
        if state.entries.iter().any(|e| e.reply.is_closed()) {
            let mut failures = Vec::new();
            state.entries.retain(|e| {
                let open = !e.reply.is_closed();
                if !open {
                    failures.push(Failure {
                        kind: FailureKind::Cancelled,
                        duration: e.arrival.elapsed(),
                    });
                }
                open
            });
            state.failures.extend(failures);
        }
    }

    /// No new requests; those queued are still served. Wakes every waiting thread.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    /// Requests queued or running.
    pub fn in_flight(&self) -> usize {
        let state = self.lock();
        state.entries.len() + state.running
    }

    /// An instance thread's answers are out: `count` fewer requests run.
    pub fn finished(&self, count: usize) {
        let mut state = self.lock();
        state.running = state.running.saturating_sub(count);
    }

    /// Drop the cancelled and answer the expired; return the earliest pending reject time.
    fn purge(&self, state: &mut State, now: Instant) -> Option<Instant> {
        let mut earliest: Option<Instant> = None;
        let model = &self.spec.name;
        Self::drop_closed(state);
        let mut kept = VecDeque::with_capacity(state.entries.len());
        for entry in state.entries.drain(..) {
            if let Some(at) = entry.reject_at {
                if at <= now {
                    let waited = now - entry.arrival;
                    state.failures.push(Failure {
                        kind: FailureKind::TimedOut,
                        duration: waited,
                    });
                    let _ = entry.reply.send(Outcome::Failed(
                        tonic::Code::DeadlineExceeded,
                        timeout_message(model, waited),
                    ));
                    continue;
                }
                earliest = Some(earliest.map_or(at, |e| e.min(at)));
            }
            kept.push_back(entry);
        }
        state.entries = kept;
        earliest
    }

    /// The entries of the next batch, or None while no batch is ready:
    /// (indices into the queue, rows, whether a request of the kind did not fit).
    fn pick(&self, state: &State) -> Option<(Vec<usize>, usize, bool)> {
        let first = state.entries.front()?;
        let max_rows = self.spec.max_rows;
        let mut chosen = vec![0];
        let mut rows = first.request.rows;
        let mut blocked = false;
        for (index, entry) in state.entries.iter().enumerate().skip(1) {
            if entry.request.key != first.request.key {
                continue;
            }
            if rows + entry.request.rows > max_rows {
                blocked = true;
                break;
            }
            rows += entry.request.rows;
            chosen.push(index);
            if rows == max_rows {
                break;
            }
        }
        Some((chosen, rows, blocked))
    }

    /// The refusals and timeouts since they were last taken, at once (queue timeouts
    /// that are due included): what statistics read, so that a caller who was just
    /// refused sees it counted even while every instance is busy with a batch.
    pub fn take_failures(&self) -> Vec<Failure> {
        let mut state = self.lock();
        self.purge(&mut state, Instant::now());
        std::mem::take(&mut state.failures)
    }

    /// Block until a batch is ready (Some(entries)), `wait` passes (Some(empty)), or
    /// the queue is closed and empty (None). Also returns the failures since the last call.
    pub fn next_batch(&self, wait: Duration) -> (Option<Vec<Entry>>, Vec<Failure>) {
        let until = Instant::now() + wait;
        let mut state = self.lock();
        loop {
            let now = Instant::now();
            let earliest_reject = self.purge(&mut state, now);
            let failures = std::mem::take(&mut state.failures);
            if state.closed && state.entries.is_empty() {
                return (None, failures);
            }
            let mut wake = until;
            if let Some((chosen, rows, blocked)) = self.pick(&state) {
                let oldest = state.entries[chosen[0]].arrival;
                let spec = &self.spec;
                let leave_at = oldest + spec.max_queue_delay;
                if rows >= spec.target_rows || blocked || state.closed || now >= leave_at {
                    let mut batch = Vec::with_capacity(chosen.len());
                    for index in chosen.into_iter().rev() {
                        if let Some(entry) = state.entries.remove(index) {
                            batch.push(entry);
                        }
                    }
                    batch.reverse();
                    state.running += batch.len();
                    return (Some(batch), failures);
                }
                wake = wake.min(leave_at);
            }
            // Refusals and drops reach Python's statistics at once, not with the next batch.
            if now >= until || !failures.is_empty() {
                return (Some(Vec::new()), failures);
            }
            if let Some(at) = earliest_reject {
                wake = wake.min(at);
            }
            let timeout = wake
                .saturating_duration_since(now)
                .max(Duration::from_micros(50));
            state = match self.ready.wait_timeout(state, timeout) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::TensorSpec;
    use std::collections::HashMap;

    fn queue(max_rows: usize, delay: Duration, max_queue_size: usize) -> ModelQueue {
        ModelQueue::new(ModelSpec {
            name: "m".into(),
            version: "1".into(),
            inputs: vec![TensorSpec {
                name: "x".into(),
                datatype: "FP32".into(),
                dims: vec![-1],
            }],
            outputs: vec![],
            max_batch_size: max_rows as i64,
            ranges: HashMap::new(),
            target_rows: max_rows,
            max_rows,
            max_queue_delay: delay,
            max_queue_size,
            default_timeout: Duration::ZERO,
            allow_timeout_override: true,
        })
    }

    fn accepted(rows: usize, width: i64) -> Accepted {
        Accepted {
            id: String::new(),
            rows,
            key: vec![vec![width]],
            inputs: vec![],
            outputs: vec![],
            timeout_us: 0,
            typed: false,
        }
    }

    fn push(q: &ModelQueue, rows: usize, width: i64) -> oneshot::Receiver<Outcome> {
        let (tx, rx) = oneshot::channel();
        q.push(accepted(rows, width), Instant::now(), None, tx)
            .map_err(|_| ())
            .expect("queued");
        rx
    }

    #[test]
    fn rows_fill_a_batch_and_shapes_keep_apart() {
        let q = queue(4, Duration::ZERO, 0);
        let _a = push(&q, 3, 5);
        let _b = push(&q, 1, 7);
        let _c = push(&q, 2, 5);
        let _d = push(&q, 1, 5);
        let (batch, _) = q.next_batch(Duration::from_millis(10));
        let rows: Vec<usize> = batch
            .expect("open")
            .iter()
            .map(|e| e.request.rows)
            .collect();
        assert_eq!(
            rows,
            vec![3],
            "the 2 of width 5 does not fit: the batch cannot grow"
        );
        let (batch, _) = q.next_batch(Duration::from_millis(10));
        assert_eq!(
            batch.expect("open")[0].request.key,
            vec![vec![7]],
            "oldest first"
        );
        let (batch, _) = q.next_batch(Duration::from_millis(10));
        let rows: Vec<usize> = batch
            .expect("open")
            .iter()
            .map(|e| e.request.rows)
            .collect();
        assert_eq!(rows, vec![2, 1], "width 5 again");
    }

    #[test]
    fn waits_for_a_fuller_batch_up_to_the_delay() {
        let q = queue(8, Duration::from_millis(30), 0);
        let _a = push(&q, 1, 1);
        let started = Instant::now();
        let (batch, _) = q.next_batch(Duration::from_secs(1));
        assert_eq!(batch.expect("open").len(), 1);
        assert!(
            started.elapsed() >= Duration::from_millis(25),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn full_queue_refuses_and_cancelled_requests_never_run() {
        let q = queue(8, Duration::ZERO, 2);
        let a = push(&q, 1, 1);
        let _b = push(&q, 1, 1);
        let (tx, _rx) = oneshot::channel();
        match q.push(accepted(1, 1), Instant::now(), None, tx) {
            Err(Refusal::Status(code, message)) => {
                assert_eq!(code, tonic::Code::ResourceExhausted);
                assert!(message.contains("max_queue_size"), "{message}");
            }
            _ => panic!("the third request must be refused"),
        }
        drop(a);
        let (batch, failures) = q.next_batch(Duration::from_millis(10));
        assert_eq!(
            batch.expect("open").len(),
            1,
            "the cancelled one is dropped"
        );
        let kinds: Vec<FailureKind> = failures.iter().map(|f| f.kind).collect();
        assert_eq!(kinds, vec![FailureKind::QueueFull, FailureKind::Cancelled]);
    }

    #[test]
    fn expired_requests_answer_deadline_exceeded() {
        let q = queue(8, Duration::from_millis(100), 0);
        let (tx, mut rx) = oneshot::channel();
        let deadline = Instant::now() + Duration::from_millis(5);
        q.push(accepted(1, 1), Instant::now(), Some(deadline), tx)
            .map_err(|_| ())
            .expect("queued");
        let (batch, failures) = q.next_batch(Duration::from_millis(50));
        assert!(batch.expect("open").is_empty());
        assert_eq!(failures.len(), 1);
        match rx.try_recv() {
            Ok(Outcome::Failed(code, message)) => {
                assert_eq!(code, tonic::Code::DeadlineExceeded);
                assert!(message.contains("timed out after"), "{message}");
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
    }

    #[test]
    fn failures_are_taken_without_waiting_for_a_batch() {
        // As statistics read them while every instance thread is busy running.
        let q = queue(8, Duration::from_secs(10), 1);
        let _a = push(&q, 1, 1);
        let (tx, _rx) = oneshot::channel();
        assert!(q.push(accepted(1, 1), Instant::now(), None, tx).is_err());
        let kinds: Vec<FailureKind> = q.take_failures().iter().map(|f| f.kind).collect();
        assert_eq!(kinds, vec![FailureKind::QueueFull]);
        assert!(q.take_failures().is_empty(), "taken once");
        let (_, failures) = q.next_batch(Duration::ZERO);
        assert!(failures.is_empty(), "and not again by the instance thread");
    }

    #[test]
    fn closed_queue_serves_what_it_holds_then_ends() {
        let q = queue(8, Duration::from_secs(5), 0);
        let _a = push(&q, 1, 1);
        q.close();
        let (tx, _rx) = oneshot::channel();
        assert!(matches!(
            q.push(accepted(1, 1), Instant::now(), None, tx),
            Err(Refusal::Closed)
        ));
        let (batch, _) = q.next_batch(Duration::from_secs(1));
        assert_eq!(batch.expect("still serving").len(), 1);
        assert!(q.next_batch(Duration::from_secs(1)).0.is_none());
    }
}

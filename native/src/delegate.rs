//! Calls Rust hands to the Python handlers: the rare RPCs, and inference
//! requests the fast path does not take (see `spec.rs`).
//!
//! A Python pump thread blocks in [`Hub::next`] (GIL released) and runs each
//! call on the server's asyncio loop with the existing servicer; the answer is
//! the response message's bytes, or a status code and message.
use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

/// A Python handler's answer: the response's bytes, or (status code, message).
pub type Answer = Result<Bytes, (tonic::Code, String)>;

/// One call for Python.
pub struct Call {
    /// Names the call to Python, so that a caller who went away can be cancelled there.
    pub id: u64,
    /// The RPC's method name, e.g. "ModelMetadata"; "ModelStreamInfer" is one
    /// request of a stream, answered as a ModelStreamInferResponse.
    pub method: String,
    pub body: Bytes,
    pub deadline: Option<Instant>,
    pub reply: oneshot::Sender<Answer>,
}

/// What the pump gets: a call to answer, or the id of one whose caller went away.
pub enum Item {
    Call(Call),
    Cancelled(u64),
}

#[derive(Default)]
struct State {
    calls: VecDeque<Call>,
    /// Calls Python holds whose caller went away: Python cancels their tasks.
    cancelled: VecDeque<u64>,
    next_id: u64,
    closed: bool,
}

/// Held while a caller waits for Python's answer: dropped unanswered (the client
/// cancelled or its deadline passed), it tells Python to cancel the call.
pub struct Pending<'a> {
    hub: &'a Hub,
    id: u64,
    pub answer: oneshot::Receiver<Answer>,
    answered: bool,
}

impl Pending<'_> {
    pub async fn wait(mut self) -> Result<Answer, oneshot::error::RecvError> {
        let answer = (&mut self.answer).await;
        self.answered = true;
        answer
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.hub.cancel(self.id);
        }
    }
}

#[derive(Default)]
pub struct Hub {
    state: Mutex<State>,
    ready: Condvar,
}

impl Hub {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Ask Python; await the answer with [`Pending::wait`] (an error if Python is gone).
    pub fn submit(&self, method: &str, body: Bytes, deadline: Option<Instant>) -> Pending<'_> {
        let (reply, answer) = oneshot::channel();
        let mut state = self.lock();
        state.next_id += 1;
        let id = state.next_id;
        if state.closed {
            let _ = reply.send(Err((
                tonic::Code::Unavailable,
                "the server is stopping".into(),
            )));
        } else {
            state.calls.push_back(Call {
                id,
                method: method.to_owned(),
                body,
                deadline,
                reply,
            });
            drop(state);
            self.ready.notify_one();
        }
        Pending {
            hub: self,
            id,
            answer,
            answered: false,
        }
    }

    fn cancel(&self, id: u64) {
        let mut state = self.lock();
        if let Some(position) = state.calls.iter().position(|c| c.id == id) {
            state.calls.remove(position); // Python never saw it
            return;
        }
        if !state.closed {
            state.cancelled.push_back(id);
            drop(state);
            self.ready.notify_one();
        }
    }

    /// The next item, waiting at most `wait`; None when none came or the hub closed.
    pub fn next(&self, wait: Duration) -> Option<Item> {
        let until = Instant::now() + wait;
        let mut state = self.lock();
        loop {
            // A call whose caller went away is not worth Python's time.
            while state.calls.front().is_some_and(|c| c.reply.is_closed()) {
                state.calls.pop_front();
            }
            if let Some(id) = state.cancelled.pop_front() {
                return Some(Item::Cancelled(id));
            }
            if let Some(call) = state.calls.pop_front() {
                return Some(Item::Call(call));
            }
            let now = Instant::now();
            if state.closed || now >= until {
                return None;
            }
            state = match self.ready.wait_timeout(state, until - now) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    /// Refuse new calls and wake the pump threads.
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.cancelled.clear();
        for call in state.calls.drain(..) {
            let _ = call.reply.send(Err((
                tonic::Code::Unavailable,
                "the server is stopping".into(),
            )));
        }
        drop(state);
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_who_leaves_is_cancelled_in_python_or_never_reaches_it() {
        let hub = Hub::default();
        let taken = hub.submit("ModelMetadata", Bytes::from_static(b"x"), None);
        let Some(Item::Call(call)) = hub.next(Duration::from_millis(10)) else {
            panic!("the call reaches the pump");
        };
        assert_eq!(call.method, "ModelMetadata");
        drop(taken); // the client went away while Python held the call
        assert!(
            matches!(hub.next(Duration::from_millis(10)), Some(Item::Cancelled(id)) if id == call.id)
        );
        let queued = hub.submit("ModelConfig", Bytes::new(), None);
        drop(queued); // gone before the pump took it: Python never sees it
        assert!(hub.next(Duration::from_millis(10)).is_none());
    }

    #[test]
    fn a_closed_hub_answers_unavailable() {
        let hub = Hub::default();
        hub.close();
        let pending = hub.submit("ServerLive", Bytes::new(), None);
        let answer = tokio::runtime::Builder::new_current_thread()
            .build()
            .map(|runtime| runtime.block_on(pending.wait()));
        assert!(matches!(answer, Ok(Ok(Err((tonic::Code::Unavailable, _))))));
    }
}

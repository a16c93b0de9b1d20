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
    /// The RPC's method name, e.g. "ModelMetadata"; "ModelStreamInfer" is one
    /// request of a stream, answered as a ModelStreamInferResponse.
    pub method: String,
    pub body: Bytes,
    pub deadline: Option<Instant>,
    pub reply: oneshot::Sender<Answer>,
}

#[derive(Default)]
struct State {
    calls: VecDeque<Call>,
    closed: bool,
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

    /// Ask Python; the answer arrives on the receiver (closed if Python is gone).
    pub fn submit(
        &self,
        method: &str,
        body: Bytes,
        deadline: Option<Instant>,
    ) -> oneshot::Receiver<Answer> {
        let (reply, answer) = oneshot::channel();
        let mut state = self.lock();
        if state.closed {
            let _ = reply.send(Err((
                tonic::Code::Unavailable,
                "the server is stopping".into(),
            )));
            return answer;
        }
        state.calls.push_back(Call {
            method: method.to_owned(),
            body,
            deadline,
            reply,
        });
        drop(state);
        self.ready.notify_one();
        answer
    }

    /// The next call, waiting at most `wait`; None when none came or the hub closed.
    pub fn next(&self, wait: Duration) -> Option<Call> {
        let until = Instant::now() + wait;
        let mut state = self.lock();
        loop {
            // A call whose caller went away is not worth Python's time.
            while state.calls.front().is_some_and(|c| c.reply.is_closed()) {
                state.calls.pop_front();
            }
            if let Some(call) = state.calls.pop_front() {
                return Some(call);
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

//! The front end's shared state and the inference path: decode, route, check,
//! queue, answer; everything the fast path does not take goes to Python.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::RwLock;
use prost::Message;
use tokio::sync::{oneshot, Semaphore};
use tonic::{Code, Status};

use crate::delegate::Hub;
use crate::proto::{
    infer_parameter::ParameterChoice, model_infer_response::InferOutputTensor, InferParameter,
    ModelInferRequest, ModelInferResponse, ModelStreamInferResponse,
};
use crate::queue::{timeout_message, FailureKind, ModelQueue, Outcome, Refusal};

/// The parameter that carries a failed stream answer's status code (the Python
/// side's `onnxserve.protocol.parameters.STREAM_STATUS_PARAMETER`).
pub const STREAM_STATUS_PARAMETER: &str = "onnxserve.status_code";
/// How much caller-sent text an error may quote (`onnxserve.server.errors.QUOTE_LIMIT`).
pub const QUOTE_LIMIT: usize = 200;

/// Messages Python words once and hands over (`onnxserve/server/native.py`).
#[derive(Clone, Debug, Default)]
pub struct Messages {
    pub busy: String,
    pub token_required: String,
    pub token_invalid: String,
}

/// One REST call as the access log records it (at DEBUG, by Python's logging).
pub struct AccessLine {
    pub method: String,
    /// The path, quoted (at most [`QUOTE_LIMIT`] characters of it).
    pub path: String,
    pub status: u16,
    pub duration: Duration,
}

/// Lines for the access log: a bounded buffer Python drains; a line that finds
/// it full is dropped and counted, so logging never slows or grows the server.
pub struct AccessLog {
    sender: std::sync::mpsc::SyncSender<AccessLine>,
    receiver: parking_lot::Mutex<std::sync::mpsc::Receiver<AccessLine>>,
    pub dropped: AtomicU64,
}

impl AccessLog {
    const CAPACITY: usize = 4096;

    fn new() -> Self {
        let (sender, receiver) = std::sync::mpsc::sync_channel(Self::CAPACITY);
        Self {
            sender,
            receiver: parking_lot::Mutex::new(receiver),
            dropped: AtomicU64::new(0),
        }
    }

    pub fn record(&self, line: AccessLine) {
        if self.sender.try_send(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The lines recorded so far, waiting up to `wait` for the first.
    pub fn drain(&self, wait: Duration) -> Vec<AccessLine> {
        let receiver = self.receiver.lock();
        let mut lines = Vec::new();
        if let Ok(line) = receiver.recv_timeout(wait) {
            lines.push(line);
            lines.extend(receiver.try_iter().take(Self::CAPACITY));
        }
        lines
    }
}

/// A call in progress, counted for the drain; dropped when the call ends.
pub struct InFlight(Arc<Core>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

pub struct Core {
    /// (model name, version asked) -> queue; version "" is the model's default.
    routes: RwLock<HashMap<(String, String), Arc<ModelQueue>>>,
    pub hub: Hub,
    /// Set on drain: the UNAVAILABLE message new inference calls get.
    draining: RwLock<Option<String>>,
    in_flight: AtomicUsize,
    started: Instant,
    /// When the latest inference call arrived, in ns after `started`.
    last_call_ns: AtomicU64,
    /// --max-concurrent-rpcs (None: no limit).
    pub admission: Option<Arc<Semaphore>>,
    pub messages: Messages,
    /// --max-stream-requests-in-flight.
    pub stream_window: usize,
    /// SHA-256 digests of the accepted bearer tokens (None: no tokens needed).
    pub tokens: RwLock<Option<Vec<[u8; 32]>>>,
    /// REST's access log, kept only when Python logs at DEBUG.
    pub access: Option<AccessLog>,
}

impl Core {
    pub fn new(
        max_concurrent_rpcs: usize,
        stream_window: usize,
        messages: Messages,
        tokens: Option<Vec<[u8; 32]>>,
        access_log: bool,
    ) -> Self {
        Self {
            routes: RwLock::new(HashMap::new()),
            hub: Hub::default(),
            draining: RwLock::new(None),
            in_flight: AtomicUsize::new(0),
            started: Instant::now(),
            last_call_ns: AtomicU64::new(0),
            admission: (max_concurrent_rpcs > 0)
                .then(|| Arc::new(Semaphore::new(max_concurrent_rpcs))),
            messages,
            stream_window: stream_window.max(1),
            tokens: RwLock::new(tokens),
            access: access_log.then(AccessLog::new),
        }
    }

    pub fn set_routes(&self, routes: HashMap<(String, String), Arc<ModelQueue>>) {
        *self.routes.write() = routes;
    }

    pub fn drain(&self, message: String) {
        *self.draining.write() = Some(message);
    }

    /// Inference calls in progress (queued, running, or with Python).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Time since the latest inference call arrived.
    pub fn idle(&self) -> Duration {
        let last = Duration::from_nanos(self.last_call_ns.load(Ordering::Acquire));
        self.started.elapsed().saturating_sub(last)
    }

    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.last_call_ns
            .store(self.started.elapsed().as_nanos() as u64, Ordering::Release);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    fn refusal_when_draining(&self) -> Option<Status> {
        self.draining
            .read()
            .as_ref()
            .map(|message| Status::unavailable(message.clone()))
    }

    /// A call Python answers from the request's bytes.
    pub async fn delegate(
        &self,
        method: &str,
        body: Bytes,
        deadline: Option<Instant>,
    ) -> Result<Bytes, Status> {
        match self.hub.submit(method, body, deadline).wait().await {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err((code, message))) => Err(Status::new(code, message)),
            Err(_) => Err(Status::unavailable("the server is stopping")),
        }
    }

    /// One ModelInfer call: the fast path, or Python.
    pub async fn model_infer(
        self: &Arc<Self>,
        body: Bytes,
        deadline: Option<Instant>,
    ) -> Result<Bytes, Status> {
        let _call = self.enter();
        if let Some(status) = self.refusal_when_draining() {
            return Err(status);
        }
        match self.fast_path(&body, deadline).await {
            Fast::Answered(result) => result.map(|response| Bytes::from(response.encode_to_vec())),
            Fast::Declined => self.delegate("ModelInfer", body, deadline).await,
        }
    }

    /// One request of a stream: always an answer (a failure is an answer with its status).
    pub async fn stream_request(self: &Arc<Self>, body: Bytes, deadline: Option<Instant>) -> Bytes {
        let _call = self.enter();
        if let Some(status) = self.refusal_when_draining() {
            return stream_failure(&body, &status);
        }
        // Each request of a stream counts against --max-concurrent-rpcs while it runs.
        let permit = match crate::service::admit(self) {
            Ok(permit) => permit,
            Err(status) => return stream_failure(&body, &status),
        };
        let answer = match self.fast_path(&body, deadline).await {
            Fast::Answered(Ok(response)) => ModelStreamInferResponse {
                error_message: String::new(),
                infer_response: Some(response),
            }
            .encode_to_vec()
            .into(),
            Fast::Answered(Err(status)) => stream_failure(&body, &status),
            Fast::Declined => match self
                .delegate("ModelStreamInfer", body.clone(), deadline)
                .await
            {
                Ok(bytes) => bytes,
                Err(status) => stream_failure(&body, &status),
            },
        };
        drop(permit);
        answer
    }

    async fn fast_path(&self, body: &Bytes, deadline: Option<Instant>) -> Fast {
        // A request arrives when its decoding starts, as in the Python batcher.
        let arrival = Instant::now();
        let Ok(mut request) = ModelInferRequest::decode(body.clone()) else {
            return Fast::Declined;
        };
        let queue = {
            let routes = self.routes.read();
            let key = (
                std::mem::take(&mut request.model_name),
                std::mem::take(&mut request.model_version),
            );
            match routes.get(&key) {
                Some(queue) => queue.clone(),
                None => return Fast::Declined,
            }
        };
        let Some(accepted) = queue.spec.accept(&mut request) else {
            return Fast::Declined;
        };
        let request_id = accepted.id.clone();
        let outputs = accepted.outputs.clone();
        // Typed in, typed out, unless an output asked for has no typed field (Python's rule).
        let typed = accepted.typed
            && outputs
                .iter()
                .all(|i| crate::typed::has_typed_field(&queue.spec.outputs[*i].datatype));
        let (reply, answer) = oneshot::channel();
        let (id, reject_at) = match queue.push(accepted, arrival, deadline, reply) {
            Ok(queued) => queued,
            Err(Refusal::Closed) => return Fast::Declined,
            Err(Refusal::Status(code, message)) => {
                return Fast::Answered(Err(Status::new(code, message)))
            }
        };
        // Dropped with the call (the client went away): the entry leaves unrun.
        let mut waiting = Waiting {
            queue: &queue,
            id,
            kind: Some(FailureKind::Cancelled),
        };
        let outcome = match reject_at {
            None => answer.await,
            Some(at) => {
                tokio::select! {
                    outcome = answer => outcome,
                    () = tokio::time::sleep_until(at.into()) => {
                        waiting.kind = Some(FailureKind::TimedOut);
                        let waited = arrival.elapsed();
                        return Fast::Answered(Err(Status::deadline_exceeded(timeout_message(&queue.spec.name, waited))));
                    }
                }
            }
        };
        waiting.kind = None;
        let result = match outcome {
            Ok(Outcome::Done(tensors)) => {
                let spec = &queue.spec;
                let mut response = ModelInferResponse {
                    model_name: spec.name.clone(),
                    model_version: spec.version.clone(),
                    id: request_id,
                    parameters: HashMap::new(),
                    outputs: Vec::with_capacity(outputs.len()),
                    raw_output_contents: Vec::with_capacity(outputs.len()),
                };
                for tensor in tensors {
                    let declared = &spec.outputs[tensor.index];
                    let contents = if typed {
                        crate::typed::raw_to_contents(&declared.datatype, &tensor.data)
                    } else {
                        None
                    };
                    if contents.is_none() {
                        response.raw_output_contents.push(tensor.data);
                    }
                    response.outputs.push(InferOutputTensor {
                        name: declared.name.clone(),
                        datatype: declared.datatype.clone(),
                        shape: tensor.shape,
                        parameters: HashMap::new(),
                        contents,
                    });
                }
                Ok(response)
            }
            Ok(Outcome::Failed(code, message)) => Err(Status::new(code, message)),
            Err(_) => Err(Status::internal(format!(
                "model '{}' failed to run the request; see the server log",
                queue.spec.name
            ))),
        };
        Fast::Answered(result)
    }
}

/// A queued call's hold on its entry: dropped before the answer came, it takes
/// the entry out of the queue ([`ModelQueue::abandon`]).
struct Waiting<'a> {
    queue: &'a ModelQueue,
    id: u64,
    kind: Option<FailureKind>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(kind) = self.kind {
            self.queue.abandon(self.id, kind);
        }
    }
}

enum Fast {
    Answered(Result<ModelInferResponse, Status>),
    Declined,
}

/// Caller-sent text as an error may quote it (`onnxserve.server.errors.quoted`).
pub fn quoted(text: &str) -> String {
    let length = text.chars().count();
    if length <= QUOTE_LIMIT {
        return text.to_owned();
    }
    let head: String = text.chars().take(QUOTE_LIMIT).collect();
    format!("{head}... ({length} characters)")
}

/// grpc's name of a status code, as Python's `grpc.StatusCode.name`.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A failed request's answer on a stream, as the Python servicer writes it:
/// its name, version and id (quoted), the status code as a parameter, the message.
pub fn stream_failure(body: &Bytes, status: &Status) -> Bytes {
    let request = ModelInferRequest::decode(body.clone()).unwrap_or_default();
    let parameters = HashMap::from([(
        STREAM_STATUS_PARAMETER.to_owned(),
        InferParameter {
            parameter_choice: Some(ParameterChoice::StringParam(
                code_name(status.code()).to_owned(),
            )),
        },
    )]);
    ModelStreamInferResponse {
        error_message: status.message().to_owned(),
        infer_response: Some(ModelInferResponse {
            model_name: quoted(&request.model_name),
            model_version: quoted(&request.model_version),
            id: quoted(&request.id),
            parameters,
            outputs: Vec::new(),
            raw_output_contents: Vec::new(),
        }),
    }
    .encode_to_vec()
    .into()
}

//! `onnxserve._native`: the native front end of onnxserve.
//!
//! Rust owns the bytes and the time: the gRPC port (tonic on hyper and tokio,
//! TLS by rustls), bearer tokens and the call limit (checked from the headers,
//! before a body is read), deadlines, decoding ModelInfer and ModelStreamInfer,
//! the fast path's check, and the batching queue of each natively served model.
//! Python owns the models: it publishes each model version's signature and
//! queue rules ([`Frontend::open_queue`], [`Frontend::set_routes`]), and each
//! instance thread asks for the next batch in one call ([`NativeQueue::next_batch`],
//! GIL released while it waits), runs onnxruntime and hands the outputs back in
//! one call ([`NativeBatch::complete`]); Rust splits the rows and answers each
//! call. Everything rarer (metadata, config, statistics, repository, model
//! control, requests the fast path does not take) is answered by the Python
//! handlers from the request's bytes ([`Frontend::next_call`]). The Python side
//! of this seam is `onnxserve/server/native.py`.
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper_util::service::TowerToHyperService;
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use tokio::sync::{oneshot, watch};
use tonic::service::Routes;

pub mod core;
pub mod delegate;
pub mod json_tensors;
pub mod proto;
pub mod queue;
pub mod reflection;
pub mod rest;
pub mod server;
pub mod service;
pub mod spec;
pub mod split;
pub mod typed;

use crate::core::{Core, Messages};
use crate::delegate::{Answer, Item};
use crate::queue::{Entry, FailureKind, ModelQueue, Outcome, OutputTensor};
use crate::rest::Rest;
use crate::server::{Connections, TlsFiles, Versions};
use crate::service::{Guarded, InferenceService, Limits, INFERENCE_SERVICE};
use crate::spec::{ModelSpec, TensorSpec};

fn code_of(code: i32) -> tonic::Code {
    tonic::Code::from_i32(code)
}

struct Running {
    runtime: tokio::runtime::Runtime,
    health: tonic_health::server::HealthReporter,
}

/// The native front end of one server process.
#[pyclass(frozen)]
pub struct Frontend {
    core: Arc<Core>,
    host: String,
    port: u16,
    /// grpc.health.v1 alone, in plaintext (0: none).
    health_port: u16,
    /// The REST routes, HTTP/1.1 and h2c (or https with the same TLS files; None: off).
    http_port: Option<u16>,
    reuse_port: bool,
    tls: Option<TlsFiles>,
    limits: Limits,
    descriptors: Vec<u8>,
    connections: Arc<Connections>,
    stop: watch::Sender<bool>,
    running: Mutex<Option<Running>>,
}

fn digests(tokens: Option<Vec<Vec<u8>>>) -> PyResult<Option<Vec<[u8; 32]>>> {
    tokens
        .map(|list| {
            list.into_iter()
                .map(|d| {
                    <[u8; 32]>::try_from(d.as_slice())
                        .map_err(|_| PyValueError::new_err("a token digest is 32 bytes (SHA-256)"))
                })
                .collect()
        })
        .transpose()
}

#[pymethods]
impl Frontend {
    #[new]
    #[pyo3(signature = (*, host, port, health_port, http_port, reuse_port, max_message_bytes, max_concurrent_rpcs, stream_window,
        max_connection_age_s, max_connection_age_grace_s, descriptors, busy_message,
        token_required_message, token_invalid_message, token_digests=None, tls_cert=None,
        tls_key=None, tls_client_ca=None, access_log=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        host: String,
        port: u16,
        health_port: u16,
        http_port: Option<u16>,
        reuse_port: bool,
        max_message_bytes: usize,
        max_concurrent_rpcs: usize,
        stream_window: usize,
        max_connection_age_s: f64,
        max_connection_age_grace_s: f64,
        descriptors: Vec<u8>,
        busy_message: String,
        token_required_message: String,
        token_invalid_message: String,
        token_digests: Option<Vec<Vec<u8>>>,
        tls_cert: Option<Vec<u8>>,
        tls_key: Option<Vec<u8>>,
        tls_client_ca: Option<Vec<u8>>,
        access_log: bool,
    ) -> PyResult<Self> {
        let tls = match (tls_cert, tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert,
                key,
                client_ca: tls_client_ca,
            }),
            (None, None) => None,
            _ => {
                return Err(PyValueError::new_err(
                    "TLS needs both a certificate and its key",
                ))
            }
        };
        let seconds = |s: f64| (s > 0.0).then(|| Duration::from_secs_f64(s));
        let messages = Messages {
            busy: busy_message,
            token_required: token_required_message,
            token_invalid: token_invalid_message,
        };
        let core = Core::new(
            max_concurrent_rpcs,
            stream_window,
            messages,
            digests(token_digests)?,
            access_log,
        );
        Ok(Self {
            core: Arc::new(core),
            host,
            port,
            health_port,
            http_port,
            reuse_port,
            tls,
            limits: Limits { max_message_bytes },
            descriptors,
            connections: Arc::new(Connections {
                max_age: seconds(max_connection_age_s),
                age_grace: seconds(max_connection_age_grace_s),
                open: Default::default(),
            }),
            stop: watch::channel(false).0,
            running: Mutex::new(None),
        })
    }

    /// Open the ports and serve; returns the gRPC and REST ports bound (REST: None
    /// when off). Raises OSError when it cannot.
    fn start(&self, py: Python<'_>) -> PyResult<(u16, Option<u16>)> {
        let mut running = self
            .running
            .lock()
            .map_err(|_| PyRuntimeError::new_err("poisoned"))?;
        if running.is_some() {
            return Err(PyRuntimeError::new_err(
                "the native front end is already serving",
            ));
        }
        let acceptor = |versions| {
            self.tls
                .as_ref()
                .map(|files| server::tls_acceptor(files, versions))
                .transpose()
                .map_err(PyOSError::new_err)
        };
        let grpc_tls = acceptor(Versions::Http2)?;
        let rest_tls = acceptor(Versions::Http1And2)?;
        let bind = |port, flag| {
            server::bind(&self.host, port, self.reuse_port, flag).map_err(PyOSError::new_err)
        };
        let bound = |listener: &std::net::TcpListener| {
            listener
                .local_addr()
                .map(|a| a.port())
                .map_err(|e| PyOSError::new_err(e.to_string()))
        };
        let listener = bind(self.port, "--grpc-port")?;
        let port = bound(&listener)?;
        let health_listener = match self.health_port {
            0 => None,
            health_port => Some(bind(health_port, "--health-port")?),
        };
        let http_listener = self
            .http_port
            .map(|port| bind(port, "--http-port"))
            .transpose()?;
        let http_port = http_listener.as_ref().map(bound).transpose()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("onnxserve-native")
            .build()
            .map_err(|e| PyOSError::new_err(format!("cannot start the native runtime: {e}")))?;
        let descriptors = self.descriptors.clone();
        let core = self.core.clone();
        let limits = self.limits;
        let connections = self.connections.clone();
        let stop = self.stop.subscribe();
        let health = py.detach(|| {
            runtime.block_on(async move {
                let listen = |listener| {
                    tokio::net::TcpListener::from_std(listener).map_err(|e| e.to_string())
                };
                let (health, health_service) = tonic_health::server::health_reporter();
                for name in ["", INFERENCE_SERVICE] {
                    health
                        .set_service_status(name, tonic_health::ServingStatus::NotServing)
                        .await;
                }
                if let Some(listener) = health_listener {
                    // Probes only: plaintext, no token (health is exempt everywhere), one status.
                    let routes = Routes::new(health_service.clone()).prepare();
                    tokio::spawn(server::serve(
                        listen(listener)?,
                        None,
                        TowerToHyperService::new(routes),
                        Versions::Http2,
                        stop.clone(),
                        connections.clone(),
                    ));
                }
                if let Some(listener) = http_listener {
                    let rest = Rest::new(core.clone(), limits.max_message_bytes);
                    let service =
                        hyper::service::service_fn(move |request| rest.clone().handle(request));
                    tokio::spawn(server::serve(
                        listen(listener)?,
                        rest_tls,
                        service,
                        Versions::Http1And2,
                        stop.clone(),
                        connections.clone(),
                    ));
                }
                let reflection = reflection::service(&descriptors)?;
                let inference = InferenceService::new(core.clone(), limits);
                let routes = Routes::new(Guarded::new(inference, core.clone()))
                    .add_service(Guarded::new(health_service, core.clone()))
                    .add_service(Guarded::new(reflection, core))
                    .prepare();
                tokio::spawn(server::serve(
                    listen(listener)?,
                    grpc_tls,
                    TowerToHyperService::new(routes),
                    Versions::Http2,
                    stop,
                    connections,
                ));
                Ok::<_, String>(health)
            })
        });
        let health = health.map_err(PyOSError::new_err)?;
        *running = Some(Running { runtime, health });
        Ok((port, http_port))
    }

    /// grpc.health.v1 for the server ("") and the inference service.
    fn set_serving(&self, py: Python<'_>, serving: bool) -> PyResult<()> {
        let running = self
            .running
            .lock()
            .map_err(|_| PyRuntimeError::new_err("poisoned"))?;
        let Some(running) = running.as_ref() else {
            return Ok(());
        };
        let status = if serving {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        let health = running.health.clone();
        py.detach(|| {
            running.runtime.block_on(async move {
                for name in ["", INFERENCE_SERVICE] {
                    health.set_service_status(name, status).await;
                }
            })
        });
        Ok(())
    }

    /// The accepted bearer tokens' SHA-256 digests (None: no token needed).
    #[pyo3(signature = (digests=None))]
    fn set_tokens(&self, digests: Option<Vec<Vec<u8>>>) -> PyResult<()> {
        *self.core.tokens.write() = self::digests(digests)?;
        Ok(())
    }

    /// New inference calls get UNAVAILABLE with `message`; accepted ones are answered.
    fn drain(&self, message: String) {
        self.core.drain(message);
    }

    /// Inference calls in progress.
    fn in_flight(&self) -> usize {
        self.core.in_flight()
    }

    /// Seconds since the latest inference call arrived.
    fn idle_s(&self) -> f64 {
        self.core.idle().as_secs_f64()
    }

    /// The REST access log's lines since the last call, as (method, path, status,
    /// seconds), waiting up to `wait_s` for one; and how many were dropped so far
    /// because Python fell behind. Empty when the log is off.
    fn access_lines(&self, py: Python<'_>, wait_s: f64) -> (Vec<(String, String, u16, f64)>, u64) {
        let Some(log) = self.core.access.as_ref() else {
            return (Vec::new(), 0);
        };
        let wait = Duration::from_secs_f64(wait_s.max(0.0));
        let lines = py.detach(|| log.drain(wait));
        let lines = lines
            .into_iter()
            .map(|l| (l.method, l.path, l.status, l.duration.as_secs_f64()))
            .collect();
        (lines, log.dropped.load(Ordering::Relaxed))
    }

    /// Connections open.
    fn connections(&self) -> usize {
        self.connections.open.load(Ordering::Acquire)
    }

    /// Stop accepting, tell every connection to go away, wait up to `grace_s`
    /// for them to finish, then end the runtime (what is left is closed).
    fn stop(&self, py: Python<'_>, grace_s: f64) -> PyResult<()> {
        let _ = self.stop.send(true);
        self.core.hub.close();
        let until = Instant::now() + Duration::from_secs_f64(grace_s.max(0.0));
        let connections = self.connections.clone();
        py.detach(|| {
            while connections.open.load(Ordering::Acquire) > 0 && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let running = self
            .running
            .lock()
            .map_err(|_| PyRuntimeError::new_err("poisoned"))?
            .take();
        if let Some(running) = running {
            py.detach(|| running.runtime.shutdown_timeout(Duration::from_millis(100)));
        }
        Ok(())
    }

    /// The next call for the Python handlers, or the id (an int) of one whose caller
    /// went away, waiting at most `wait_s`; None if nothing came.
    fn next_call(&self, py: Python<'_>, wait_s: f64) -> PyResult<Option<Py<PyAny>>> {
        let wait = Duration::from_secs_f64(wait_s.max(0.0));
        let core = self.core.clone();
        let Some(item) = py.detach(move || core.hub.next(wait)) else {
            return Ok(None);
        };
        Ok(Some(match item {
            Item::Cancelled(id) => id.into_pyobject(py)?.into_any().unbind(),
            Item::Call(call) => Py::new(
                py,
                DelegatedCall {
                    id: call.id,
                    method: call.method,
                    body: call.body,
                    deadline: call.deadline,
                    reply: Mutex::new(Some(call.reply)),
                },
            )?
            .into_any(),
        }))
    }

    /// A queue for one model version that Python serves from its instance threads.
    #[pyo3(signature = (*, name, version, inputs, outputs, max_batch_size, ranges, target_rows,
        max_rows, max_queue_delay_us, max_queue_size, default_timeout_us, allow_timeout_override))]
    #[allow(clippy::too_many_arguments)]
    fn open_queue(
        &self,
        name: String,
        version: String,
        inputs: Vec<(String, String, Vec<i64>)>,
        outputs: Vec<(String, String, Vec<i64>)>,
        max_batch_size: i64,
        ranges: Vec<(usize, Option<i64>, Option<i64>)>,
        target_rows: usize,
        max_rows: usize,
        max_queue_delay_us: u64,
        max_queue_size: usize,
        default_timeout_us: u64,
        allow_timeout_override: bool,
    ) -> NativeQueue {
        let tensors = |list: Vec<(String, String, Vec<i64>)>| {
            list.into_iter()
                .map(|(name, datatype, dims)| TensorSpec {
                    name,
                    datatype,
                    dims,
                })
                .collect()
        };
        let spec = ModelSpec {
            name,
            version,
            inputs: tensors(inputs),
            outputs: tensors(outputs),
            max_batch_size,
            ranges: ranges
                .into_iter()
                .map(|(index, low, high)| (index, (low, high)))
                .collect(),
            target_rows: target_rows.max(1),
            max_rows: max_rows.max(1),
            max_queue_delay: Duration::from_micros(max_queue_delay_us),
            max_queue_size,
            default_timeout: Duration::from_micros(default_timeout_us),
            allow_timeout_override,
        };
        NativeQueue {
            queue: Arc::new(ModelQueue::new(spec)),
        }
    }

    /// Which queue answers (model name, version asked); version "" is the default.
    /// Anything not listed goes to the Python handlers.
    fn set_routes(&self, routes: Vec<(String, String, PyRef<'_, NativeQueue>)>) {
        let table: HashMap<_, _> = routes
            .into_iter()
            .map(|(name, version, queue)| ((name, version), queue.queue.clone()))
            .collect();
        self.core.set_routes(table);
    }
}

/// One call for the Python handlers: answer it once, with bytes or a status.
#[pyclass(frozen)]
pub struct DelegatedCall {
    /// What a later cancellation names.
    #[pyo3(get)]
    id: u64,
    #[pyo3(get)]
    method: String,
    body: Bytes,
    deadline: Option<Instant>,
    reply: Mutex<Option<oneshot::Sender<Answer>>>,
}

impl DelegatedCall {
    fn send(&self, answer: Answer) {
        if let Some(reply) = self.reply.lock().ok().and_then(|mut slot| slot.take()) {
            let _ = reply.send(answer);
        }
    }
}

#[pymethods]
impl DelegatedCall {
    /// The request message's bytes.
    #[getter]
    fn body<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.body)
    }

    /// Seconds left before the caller's deadline, or None without one.
    fn time_remaining(&self) -> Option<f64> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()).as_secs_f64())
    }

    /// Whether the caller is still waiting.
    fn is_active(&self) -> bool {
        self.reply
            .lock()
            .ok()
            .and_then(|slot| slot.as_ref().map(|s| !s.is_closed()))
            .unwrap_or(false)
    }

    fn answer(&self, body: &[u8]) {
        self.send(Ok(Bytes::copy_from_slice(body)));
    }

    fn fail(&self, code: i32, message: String) {
        self.send(Err((code_of(code), message)));
    }
}

/// The queue of one natively served model version.
#[pyclass(frozen)]
pub struct NativeQueue {
    queue: Arc<ModelQueue>,
}

fn failure_name(kind: FailureKind) -> &'static str {
    match kind {
        FailureKind::QueueFull => "queue_full",
        FailureKind::TimedOut => "timeout",
        FailureKind::Cancelled => "cancelled",
    }
}

type Failures = Vec<(&'static str, u64)>;

fn failure_list(failures: Vec<queue::Failure>) -> Failures {
    failures
        .into_iter()
        .map(|f| (failure_name(f.kind), f.duration.as_nanos() as u64))
        .collect()
}

#[pymethods]
impl NativeQueue {
    /// Wait up to `wait_s` for a batch: (batch or None, whether the queue is closed
    /// and empty, the refusals and timeouts since the last call as (kind, ns)).
    fn next_batch(&self, py: Python<'_>, wait_s: f64) -> (Option<NativeBatch>, bool, Failures) {
        let queue = self.queue.clone();
        let wait = Duration::from_secs_f64(wait_s.max(0.0));
        let (entries, failures) = py.detach(move || queue.next_batch(wait));
        let failures = failure_list(failures);
        match entries {
            None => (None, true, failures),
            Some(entries) if entries.is_empty() => (None, false, failures),
            Some(entries) => (
                Some(NativeBatch::new(self.queue.clone(), entries)),
                false,
                failures,
            ),
        }
    }

    /// The refusals and timeouts since the last `next_batch` or `take_failures`, at once.
    fn take_failures(&self, py: Python<'_>) -> Failures {
        let queue = self.queue.clone();
        failure_list(py.detach(move || queue.take_failures()))
    }

    /// No new requests (they go to the Python handlers); the queued ones are still served.
    fn close(&self) {
        self.queue.close();
    }

    /// Requests queued or running.
    fn in_flight(&self) -> usize {
        self.queue.in_flight()
    }
}

/// The requests of one batch, their inputs merged along the batch dimension.
#[pyclass(frozen)]
pub struct NativeBatch {
    queue: Arc<ModelQueue>,
    entries: Mutex<Vec<Entry>>,
    #[pyo3(get)]
    rows: Vec<usize>,
    /// Each request's time in the queue, in nanoseconds.
    #[pyo3(get)]
    queue_ns: Vec<u64>,
    /// The outputs any request of the batch asked for, in the model's order.
    #[pyo3(get)]
    output_names: Vec<String>,
}

impl NativeBatch {
    fn new(queue: Arc<ModelQueue>, entries: Vec<Entry>) -> Self {
        let now = Instant::now();
        let rows = entries.iter().map(|e| e.request.rows).collect();
        let queue_ns = entries
            .iter()
            .map(|e| (now - e.arrival).as_nanos() as u64)
            .collect();
        let mut wanted = vec![false; queue.spec.outputs.len()];
        for entry in &entries {
            for index in &entry.request.outputs {
                wanted[*index] = true;
            }
        }
        let output_names = queue
            .spec
            .outputs
            .iter()
            .zip(wanted)
            .filter(|(_, wanted)| *wanted)
            .map(|(spec, _)| spec.name.clone())
            .collect();
        Self {
            queue,
            entries: Mutex::new(entries),
            rows,
            queue_ns,
            output_names,
        }
    }

    fn take(&self) -> Vec<Entry> {
        let entries = self
            .entries
            .lock()
            .map(|mut e| std::mem::take(&mut *e))
            .unwrap_or_default();
        self.queue.finished(entries.len());
        entries
    }
}

impl Drop for NativeBatch {
    fn drop(&mut self) {
        // Entries never answered: their senders drop and each call answers INTERNAL.
        let _ = self.take();
    }
}

/// One merged input: (name, bytes, shape).
type MergedInput<'py> = (String, Bound<'py, PyBytes>, Vec<i64>);

/// An output buffer from Python: anything with the buffer protocol, as bytes.
fn buffer_bytes(py: Python<'_>, buffer: &Bound<'_, PyAny>) -> PyResult<Bytes> {
    let view = PyBuffer::<u8>::get(buffer)?;
    Ok(Bytes::from(view.to_vec(py)?))
}

#[pymethods]
impl NativeBatch {
    /// Each input merged: (name, its bytes, shape [rows of the batch, ...]), in the model's order.
    fn inputs<'py>(&self, py: Python<'py>) -> PyResult<Vec<MergedInput<'py>>> {
        let entries = self
            .entries
            .lock()
            .map_err(|_| PyRuntimeError::new_err("poisoned"))?;
        let Some(first) = entries.first() else {
            return Err(PyRuntimeError::new_err("the batch was already answered"));
        };
        let total: usize = entries.iter().map(|e| e.request.rows).sum();
        let mut merged = Vec::with_capacity(self.queue.spec.inputs.len());
        for (index, spec) in self.queue.spec.inputs.iter().enumerate() {
            let length: usize = entries.iter().map(|e| e.request.inputs[index].len()).sum();
            let bytes = PyBytes::new_with(py, length, |buffer| {
                let mut offset = 0;
                for entry in entries.iter() {
                    let part = &entry.request.inputs[index];
                    buffer[offset..offset + part.len()].copy_from_slice(part);
                    offset += part.len();
                }
                Ok(())
            })?;
            let mut shape = vec![total as i64];
            shape.extend_from_slice(&first.request.key[index]);
            merged.push((spec.name.clone(), bytes, shape));
        }
        Ok(merged)
    }

    /// Answer every request from the batch's outputs: (name, shape, buffer) with the
    /// batch's rows first; BYTES outputs in the protocol's length-prefixed framing.
    fn complete(
        &self,
        py: Python<'_>,
        outputs: Vec<(String, Vec<i64>, Bound<'_, PyAny>)>,
    ) -> PyResult<()> {
        let spec = &self.queue.spec;
        let total: usize = self.rows.iter().sum();
        let mut per_output: Vec<Option<Vec<split::Part>>> = vec![None; spec.outputs.len()];
        for (name, shape, buffer) in outputs {
            let Some(index) = spec.outputs.iter().position(|o| o.name == name) else {
                return Err(PyValueError::new_err(format!(
                    "model '{}' has no output '{name}'",
                    spec.name
                )));
            };
            let data = buffer_bytes(py, &buffer)?;
            let rows = split::rows(&spec.outputs[index].datatype, &shape, data, &self.rows)
                .map_err(|why| {
                    PyValueError::new_err(format!("output '{name}' of {total} rows: {why}"))
                })?;
            per_output[index] = Some(rows);
        }
        let entries = self.take();
        for (position, entry) in entries.into_iter().enumerate() {
            let mut tensors = Vec::with_capacity(entry.request.outputs.len());
            let mut missing = None;
            for index in &entry.request.outputs {
                match &per_output[*index] {
                    Some(rows) => {
                        let (shape, data) = rows[position].clone();
                        tensors.push(OutputTensor {
                            index: *index,
                            shape,
                            data,
                        });
                    }
                    None => missing = Some(spec.outputs[*index].name.clone()),
                }
            }
            let outcome = match missing {
                None => Outcome::Done(tensors),
                Some(name) => Outcome::Failed(
                    tonic::Code::Internal,
                    format!("model '{}' did not return output '{name}'", spec.name),
                ),
            };
            let _ = entry.reply.send(outcome);
        }
        Ok(())
    }

    /// Answer each request on its own: a list, per request, of either
    /// [(name, shape, buffer), ...] for its outputs or (status code, message).
    fn complete_each(&self, py: Python<'_>, outcomes: Vec<Bound<'_, PyAny>>) -> PyResult<()> {
        let spec = &self.queue.spec;
        let entries = self.take();
        if outcomes.len() != entries.len() {
            return Err(PyValueError::new_err(format!(
                "{} outcomes for {} requests",
                outcomes.len(),
                entries.len()
            )));
        }
        for (entry, outcome) in entries.into_iter().zip(outcomes) {
            let answer = if let Ok((code, message)) = outcome.extract::<(i32, String)>() {
                Outcome::Failed(code_of(code), message)
            } else {
                let outputs: Vec<(String, Vec<i64>, Bound<'_, PyAny>)> = outcome.extract()?;
                let mut by_name = HashMap::with_capacity(outputs.len());
                for (name, shape, buffer) in outputs {
                    by_name.insert(name, (shape, buffer_bytes(py, &buffer)?));
                }
                let mut tensors = Vec::with_capacity(entry.request.outputs.len());
                for index in &entry.request.outputs {
                    let name = &spec.outputs[*index].name;
                    let Some((shape, data)) = by_name.remove(name) else {
                        return Err(PyValueError::new_err(format!(
                            "no output '{name}' for a request"
                        )));
                    };
                    tensors.push(OutputTensor {
                        index: *index,
                        shape,
                        data,
                    });
                }
                Outcome::Done(tensors)
            };
            let _ = entry.reply.send(answer);
        }
        Ok(())
    }

    /// Fail every request of the batch with one status.
    fn fail(&self, code: i32, message: String) {
        for entry in self.take() {
            let _ = entry
                .reply
                .send(Outcome::Failed(code_of(code), message.clone()));
        }
    }
}

#[pymodule]
fn _native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<Frontend>()?;
    module.add_class::<DelegatedCall>()?;
    module.add_class::<NativeQueue>()?;
    module.add_class::<NativeBatch>()?;
    Ok(())
}

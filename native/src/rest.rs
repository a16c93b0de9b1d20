//! The Open Inference Protocol's HTTP/REST routes (KServe v2 REST, with Triton's
//! binary tensor data extension) on `--http-port`, HTTP/1.1 and h2c alike.
//!
//! Each route is the REST form of one gRPC method: the request becomes that
//! method's protobuf message and takes the very path a gRPC call takes
//! ([`Core::model_infer`] for inference: the same fast path, queue and batches,
//! so REST and gRPC calls share batches; [`Core::delegate`] for the rest: the
//! same Python handlers, rules and messages). The answer comes back as JSON:
//! protobuf's JSON mapping with the proto field names and 64-bit integers as
//! numbers, as Triton writes it. Errors are `{"error": "..."}` with the status
//! [`http_status`] maps the gRPC code to.
use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{Read, Write};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderValue, ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::{json, Map, Value};
use tonic::{Code, Status};

use crate::core::{quoted, AccessLine, Core};
use crate::json_tensors::{data_to_raw, raw_to_data};
use crate::proto::{
    infer_parameter::ParameterChoice,
    model_infer_request::{InferInputTensor, InferRequestedOutputTensor},
    model_repository_parameter::ParameterChoice as RepositoryChoice,
    InferParameter, ModelConfigRequest, ModelInferRequest, ModelInferResponse,
    ModelMetadataRequest, ModelReadyRequest, ModelReadyResponse, ModelRepositoryParameter,
    ModelStatisticsRequest, RepositoryIndexRequest, RepositoryModelLoadRequest,
    RepositoryModelUnloadRequest, ServerLiveResponse, ServerReadyResponse,
};
use crate::service::{admit, check_token};

/// Triton's header: the JSON part's length when binary tensor data follows it.
pub const HEADER_LENGTH: &str = "inference-header-content-length";
/// The extension REST adds to the server metadata's list.
const BINARY_EXTENSION: &str = "binary_tensor_data";

type HttpResponse = Response<Full<Bytes>>;

/// The protocol's message descriptors (from proto/, by build.rs), for JSON.
fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(&include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"))[..])
            .expect("build.rs wrote a valid descriptor set")
    })
}

/// The HTTP status that says whose fault a gRPC code is.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
            StatusCode::BAD_REQUEST
        }
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable | Code::Cancelled => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Internal | Code::Unknown | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// An answer that is not a success: a status and the message for `{"error": ...}`.
struct Refusal(StatusCode, String);

impl From<Status> for Refusal {
    fn from(status: Status) -> Self {
        Refusal(http_status(status.code()), status.message().to_owned())
    }
}

fn bad(message: impl Into<String>) -> Refusal {
    Refusal(StatusCode::BAD_REQUEST, message.into())
}

fn json_response(status: StatusCode, body: &Value) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error_response(refusal: Refusal) -> HttpResponse {
    json_response(refusal.0, &json!({ "error": refusal.1 }))
}

/// The REST routes of one server process.
#[derive(Clone)]
pub struct Rest {
    core: Arc<Core>,
    max_body_bytes: usize,
}

/// What a path asks for, its segments percent-decoded.
enum Route {
    Live,
    Ready,
    ServerMetadata,
    Model {
        name: String,
        version: String,
        action: ModelAction,
    },
    Statistics {
        name: String,
        version: String,
    },
    Index,
    /// Model control: load (true) or unload the named model.
    Control {
        name: String,
        load: bool,
    },
    /// Triton's shared-memory, trace and logging routes: the gRPC method that refuses them.
    NotOffered(&'static str),
}

enum ModelAction {
    Metadata,
    Ready,
    Config,
    Infer,
}

fn segments(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(crate::service::percent_decoded)
        .collect()
}

fn route(path: &str) -> Option<Route> {
    let parts = segments(path);
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    Some(match parts.as_slice() {
        ["v2"] => Route::ServerMetadata,
        ["v2", "health", "live"] => Route::Live,
        ["v2", "health", "ready"] => Route::Ready,
        ["v2", "models", "stats"] => Route::Statistics {
            name: String::new(),
            version: String::new(),
        },
        ["v2", "repository", "index"] => Route::Index,
        ["v2", "repository", "models", name, verb @ ("load" | "unload")] => Route::Control {
            name: (*name).to_owned(),
            load: *verb == "load",
        },
        ["v2", "systemsharedmemory", ..] => Route::NotOffered("SystemSharedMemoryStatus"),
        ["v2", "cudasharedmemory", ..] => Route::NotOffered("CudaSharedMemoryStatus"),
        ["v2", "trace", ..] | ["v2", "models", _, "trace", ..] => Route::NotOffered("TraceSetting"),
        ["v2", "logging"] => Route::NotOffered("LogSettings"),
        ["v2", "models", name, rest @ ..] => {
            let (version, rest) = match rest {
                ["versions", version, rest @ ..] => (*version, rest),
                rest => ("", rest),
            };
            let (name, version) = ((*name).to_owned(), version.to_owned());
            let action = match rest {
                [] => ModelAction::Metadata,
                ["ready"] => ModelAction::Ready,
                ["config"] => ModelAction::Config,
                ["infer"] => ModelAction::Infer,
                ["stats"] => return Some(Route::Statistics { name, version }),
                _ => return None,
            };
            Route::Model {
                name,
                version,
                action,
            }
        }
        _ => return None,
    })
}

impl Rest {
    pub fn new(core: Arc<Core>, max_body_bytes: usize) -> Self {
        Self {
            core,
            max_body_bytes,
        }
    }

    /// One HTTP request's answer; never an error at the HTTP layer.
    pub async fn handle(self, request: Request<Incoming>) -> Result<HttpResponse, Infallible> {
        let started = Instant::now();
        let logged = self
            .core
            .access
            .as_ref()
            .map(|_| (request.method().to_string(), quoted(request.uri().path())));
        let response = match self.answer(request).await {
            Ok(response) => response,
            Err(refusal) => error_response(refusal),
        };
        if let (Some(log), Some((method, path))) = (&self.core.access, logged) {
            log.record(AccessLine {
                method,
                path,
                status: response.status().as_u16(),
                duration: started.elapsed(),
            });
        }
        Ok(response)
    }

    async fn answer(&self, request: Request<Incoming>) -> Result<HttpResponse, Refusal> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let Some(route) = route(&path) else {
            return Err(Refusal(
                StatusCode::NOT_FOUND,
                format!(
                    "{method} {}: not a route of the Open Inference Protocol's REST API",
                    quoted(&path)
                ),
            ));
        };
        let wanted = match &route {
            Route::Live | Route::Ready | Route::ServerMetadata | Route::Statistics { .. } => {
                Method::GET
            }
            Route::Model { action, .. } => match action {
                ModelAction::Infer => Method::POST,
                _ => Method::GET,
            },
            Route::Index | Route::Control { .. } => Method::POST,
            Route::NotOffered(_) => method.clone(),
        };
        // Triton answers the repository index to GET as well.
        let index_get = matches!(route, Route::Index) && method == Method::GET;
        if method != wanted && !index_get {
            return Err(Refusal(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} {}: use {wanted}", quoted(&path)),
            ));
        }
        // Health is exempt from tokens and the call limit, as on gRPC: probes answer under load.
        let probe = matches!(route, Route::Live | Route::Ready);
        if !probe {
            check_token(&self.core, request.headers())?;
        }
        let _permit = if probe { None } else { admit(&self.core)? };
        let (parts, body) = request.into_parts();
        match route {
            Route::Live => {
                let answer = self.call("ServerLive", Bytes::new()).await?;
                let live = ServerLiveResponse::decode(answer).is_ok_and(|r| r.live);
                Ok(json_response(probe_status(live), &json!({ "live": live })))
            }
            Route::Ready => {
                let answer = self.call("ServerReady", Bytes::new()).await?;
                let ready = ServerReadyResponse::decode(answer).is_ok_and(|r| r.ready);
                Ok(json_response(
                    probe_status(ready),
                    &json!({ "ready": ready }),
                ))
            }
            Route::ServerMetadata => {
                let mut metadata = self
                    .json_of("ServerMetadata", Bytes::new(), "ServerMetadataResponse")
                    .await?;
                if let Some(Value::Array(extensions)) = metadata.get_mut("extensions") {
                    extensions.push(Value::from(BINARY_EXTENSION));
                }
                Ok(json_response(StatusCode::OK, &metadata))
            }
            Route::Model {
                name,
                version,
                action,
            } => match action {
                ModelAction::Metadata => {
                    let request = ModelMetadataRequest { name, version };
                    let body = request.encode_to_vec().into();
                    let metadata = self
                        .json_of("ModelMetadata", body, "ModelMetadataResponse")
                        .await?;
                    Ok(json_response(StatusCode::OK, &metadata))
                }
                ModelAction::Ready => {
                    let request = ModelReadyRequest {
                        name: name.clone(),
                        version,
                    };
                    let answer = self
                        .call("ModelReady", request.encode_to_vec().into())
                        .await?;
                    let ready = ModelReadyResponse::decode(answer).is_ok_and(|r| r.ready);
                    let body = json!({ "name": name, "ready": ready });
                    Ok(json_response(probe_status(ready), &body))
                }
                ModelAction::Config => {
                    let request = ModelConfigRequest { name, version };
                    let mut answer = self
                        .json_of(
                            "ModelConfig",
                            request.encode_to_vec().into(),
                            "ModelConfigResponse",
                        )
                        .await?;
                    let config = answer
                        .get_mut("config")
                        .map(Value::take)
                        .unwrap_or_default();
                    Ok(json_response(StatusCode::OK, &config))
                }
                ModelAction::Infer => {
                    let body = self.read_body(&parts.headers, body).await?;
                    self.infer(name, version, &parts.headers, body).await
                }
            },
            Route::Statistics { name, version } => {
                let request = ModelStatisticsRequest { name, version };
                let body = request.encode_to_vec().into();
                let statistics = self
                    .json_of("ModelStatistics", body, "ModelStatisticsResponse")
                    .await?;
                Ok(json_response(StatusCode::OK, &statistics))
            }
            Route::Index => {
                let body = self.read_body(&parts.headers, body).await?;
                let asked = parse_object(&body)?;
                let ready = match asked.get("ready") {
                    None => false,
                    Some(Value::Bool(ready)) => *ready,
                    Some(_) => return Err(bad("'ready' must be true or false")),
                };
                let request = RepositoryIndexRequest {
                    repository_name: String::new(),
                    ready,
                };
                let mut index = self
                    .json_of(
                        "RepositoryIndex",
                        request.encode_to_vec().into(),
                        "RepositoryIndexResponse",
                    )
                    .await?;
                // Triton's REST answer is the list itself.
                let models = index.get_mut("models").map(Value::take);
                Ok(json_response(
                    StatusCode::OK,
                    &models.unwrap_or_else(|| json!([])),
                ))
            }
            Route::Control { name, load } => {
                let body = self.read_body(&parts.headers, body).await?;
                let parameters = repository_parameters(&parse_object(&body)?)?;
                let (method, body): (&str, Bytes) = if load {
                    let request = RepositoryModelLoadRequest {
                        repository_name: String::new(),
                        model_name: name.clone(),
                        parameters,
                    };
                    ("RepositoryModelLoad", request.encode_to_vec().into())
                } else {
                    let request = RepositoryModelUnloadRequest {
                        repository_name: String::new(),
                        model_name: name.clone(),
                        parameters,
                    };
                    ("RepositoryModelUnload", request.encode_to_vec().into())
                };
                self.call(method, body).await?;
                let verb = if load { "load" } else { "unload" };
                Ok(json_response(
                    StatusCode::OK,
                    &json!({ "name": name, verb: true }),
                ))
            }
            Route::NotOffered(method) => {
                self.call(method, Bytes::new()).await?;
                Err(Refusal(
                    StatusCode::NOT_IMPLEMENTED,
                    format!("{method} is not offered"),
                ))
            }
        }
    }

    async fn call(&self, method: &str, body: Bytes) -> Result<Bytes, Refusal> {
        Ok(self.core.delegate(method, body, None).await?)
    }

    /// A delegated method's answer in protobuf's JSON mapping, as Triton writes it.
    async fn json_of(&self, method: &str, body: Bytes, response: &str) -> Result<Value, Refusal> {
        let answer = self.call(method, body).await?;
        message_json(response, answer).map_err(|why| {
            Refusal(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{method}: the answer could not be written as JSON ({why})"),
            )
        })
    }

    /// The body, at most --max-message-bytes once decompressed.
    async fn read_body(&self, headers: &http::HeaderMap, body: Incoming) -> Result<Bytes, Refusal> {
        let limit = self.max_body_bytes;
        let too_large = |found: String| {
            Refusal(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("Received message larger than max ({found} vs. {limit})"),
            )
        };
        let declared = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(length) = declared.filter(|l| *l > limit as u64) {
            return Err(too_large(length.to_string()));
        }
        let collected = Limited::new(body, limit)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    too_large(format!("more than {limit}"))
                } else {
                    bad(format!("the request body could not be read: {e}"))
                }
            })?
            .to_bytes();
        let encoding = headers
            .get(CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("identity")
            .trim()
            .to_ascii_lowercase();
        let mut decoded = Vec::new();
        let read = match encoding.as_str() {
            "" | "identity" => return Ok(collected),
            "gzip" => flate2::read::MultiGzDecoder::new(&collected[..])
                .take(limit as u64 + 1)
                .read_to_end(&mut decoded),
            "deflate" => flate2::read::ZlibDecoder::new(&collected[..])
                .take(limit as u64 + 1)
                .read_to_end(&mut decoded),
            other => {
                return Err(Refusal(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    format!(
                        "Content-Encoding '{}' is not supported; use gzip, deflate or none",
                        quoted(other)
                    ),
                ))
            }
        };
        read.map_err(|e| {
            bad(format!(
                "the {encoding} request body could not be decoded: {e}"
            ))
        })?;
        if decoded.len() > limit {
            return Err(too_large(format!("more than {limit}")));
        }
        Ok(decoded.into())
    }

    async fn infer(
        &self,
        name: String,
        version: String,
        headers: &http::HeaderMap,
        body: Bytes,
    ) -> Result<HttpResponse, Refusal> {
        let (request, choice) = infer_request(name, version, headers, body)?;
        let answer = self
            .core
            .model_infer(request.encode_to_vec().into(), None)
            .await?;
        let response = ModelInferResponse::decode(answer).map_err(|e| {
            Refusal(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the inference answer could not be read: {e}"),
            )
        })?;
        let (header, binary) = infer_answer(response, &choice);
        let mut body = serde_json::to_vec(&header).unwrap_or_default();
        let header_length = body.len();
        let has_binary = !binary.is_empty();
        for part in binary {
            body.extend_from_slice(&part);
        }
        let (body, encoding) = compressed(headers, body);
        let mut response = Response::new(Full::new(Bytes::from(body)));
        let headers = response.headers_mut();
        if has_binary {
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            headers.insert(HEADER_LENGTH, HeaderValue::from(header_length));
        } else {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        if let Some(encoding) = encoding {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static(encoding));
        }
        Ok(response)
    }
}

fn probe_status(ok: bool) -> StatusCode {
    if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// A protobuf answer as JSON: proto field names, 64-bit integers as numbers.
fn message_json(name: &str, bytes: Bytes) -> Result<Value, String> {
    let descriptor = pool()
        .get_message_by_name(&format!("inference.{name}"))
        .ok_or_else(|| format!("no message {name}"))?;
    let message = DynamicMessage::decode(descriptor, bytes).map_err(|e| e.to_string())?;
    let options = SerializeOptions::new()
        .stringify_64_bit_integers(false)
        .use_proto_field_name(true)
        .skip_default_fields(false);
    message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| e.to_string())
}

/// An optional JSON object body (empty: `{}`).
fn parse_object(body: &[u8]) -> Result<Map<String, Value>, Refusal> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(bad("the request body must be a JSON object")),
        Err(e) => Err(bad(format!("the request body is not valid JSON: {e}"))),
    }
}

/// A JSON parameter value as the protocol's parameter.
fn parameter(name: &str, value: &Value) -> Result<ParameterChoice, Refusal> {
    Ok(match value {
        Value::Bool(b) => ParameterChoice::BoolParam(*b),
        Value::String(s) => ParameterChoice::StringParam(s.clone()),
        Value::Number(n) => {
            if let Some(v) = n.as_i64() {
                ParameterChoice::Int64Param(v)
            } else if let Some(v) = n.as_u64() {
                ParameterChoice::Uint64Param(v)
            } else {
                ParameterChoice::DoubleParam(n.as_f64().unwrap_or_default())
            }
        }
        _ => {
            return Err(bad(format!(
                "parameter '{}' must be a boolean, a number or a string",
                quoted(name)
            )))
        }
    })
}

/// The `parameters` object of a request, input or output, without the REST-only `skip`.
fn parameters(
    object: &Map<String, Value>,
    skip: &[&str],
) -> Result<HashMap<String, InferParameter>, Refusal> {
    let Some(found) = object.get("parameters") else {
        return Ok(HashMap::new());
    };
    let Value::Object(found) = found else {
        return Err(bad("'parameters' must be a JSON object"));
    };
    let mut out = HashMap::with_capacity(found.len());
    for (key, value) in found {
        if skip.contains(&key.as_str()) {
            continue;
        }
        let choice = parameter(key, value)?;
        out.insert(
            key.clone(),
            InferParameter {
                parameter_choice: Some(choice),
            },
        );
    }
    Ok(out)
}

fn repository_parameters(
    object: &Map<String, Value>,
) -> Result<HashMap<String, ModelRepositoryParameter>, Refusal> {
    let mut out = HashMap::new();
    for (key, value) in parameters(object, &[])? {
        let choice = match value.parameter_choice {
            Some(ParameterChoice::BoolParam(b)) => RepositoryChoice::BoolParam(b),
            Some(ParameterChoice::Int64Param(v)) => RepositoryChoice::Int64Param(v),
            Some(ParameterChoice::StringParam(s)) => RepositoryChoice::StringParam(s),
            _ => {
                return Err(bad(format!(
                    "parameter '{}' must be a boolean, an integer or a string",
                    quoted(&key)
                )))
            }
        };
        out.insert(
            key,
            ModelRepositoryParameter {
                parameter_choice: Some(choice),
            },
        );
    }
    Ok(out)
}

fn flag(object: &Map<String, Value>, name: &str) -> Result<Option<bool>, Refusal> {
    match object.get("parameters").and_then(|p| p.get(name)) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(bad(format!("parameter '{name}' must be true or false"))),
    }
}

/// Which outputs an answer carries as binary data.
struct OutputChoice {
    /// `binary_data_output`: the default for outputs without their own say.
    all_binary: bool,
    /// Each requested output's `binary_data`, where it said.
    each: HashMap<String, bool>,
}

impl OutputChoice {
    fn binary(&self, name: &str) -> bool {
        self.each.get(name).copied().unwrap_or(self.all_binary)
    }
}

fn text_of<'a>(object: &'a Map<String, Value>, key: &str, what: &str) -> Result<&'a str, Refusal> {
    match object.get(key) {
        Some(Value::String(s)) => Ok(s),
        _ => Err(bad(format!("{what} needs '{key}', a string"))),
    }
}

/// A REST inference request as the protocol's ModelInferRequest (every input
/// as raw contents, so that it takes the fast path and shares gRPC's batches).
fn infer_request(
    name: String,
    version: String,
    headers: &http::HeaderMap,
    body: Bytes,
) -> Result<(ModelInferRequest, OutputChoice), Refusal> {
    let header_length = match headers.get(HEADER_LENGTH) {
        None => body.len(),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|length| *length <= body.len())
            .ok_or_else(|| {
                bad(format!(
                    "Inference-Header-Content-Length must be the JSON part's length, at most \
                     the body's {} bytes",
                    body.len()
                ))
            })?,
    };
    let object = parse_object(&body[..header_length])?;
    let mut binary = body.slice(header_length..);
    let id = match object.get("id") {
        None => String::new(),
        Some(Value::String(id)) => id.clone(),
        Some(_) => return Err(bad("'id' must be a string")),
    };
    let Some(Value::Array(inputs)) = object.get("inputs") else {
        return Err(bad("the request needs 'inputs', a list of tensors"));
    };
    let mut request = ModelInferRequest {
        model_name: name,
        model_version: version,
        id,
        parameters: parameters(&object, &["binary_data_output"])?,
        inputs: Vec::with_capacity(inputs.len()),
        outputs: Vec::new(),
        raw_input_contents: Vec::with_capacity(inputs.len()),
    };
    for input in inputs {
        let Value::Object(input) = input else {
            return Err(bad("each of 'inputs' must be a JSON object"));
        };
        let name = text_of(input, "name", "an input")?.to_owned();
        let datatype = text_of(input, "datatype", &format!("input '{name}'"))?.to_owned();
        let shape = match input.get("shape") {
            Some(Value::Array(dims)) => dims
                .iter()
                .map(Value::as_i64)
                .collect::<Option<Vec<i64>>>()
                .ok_or_else(|| bad(format!("input '{name}': 'shape' must list integers")))?,
            _ => {
                return Err(bad(format!(
                    "input '{name}' needs 'shape', a list of integers"
                )))
            }
        };
        let size = input
            .get("parameters")
            .and_then(|p| p.get("binary_data_size"));
        // `"data": null` beside binary_data_size is how some clients (KServe's) say "no JSON data".
        let data = input.get("data").filter(|d| !d.is_null());
        let raw = match (size, data) {
            (Some(size), None) => {
                let size = size
                    .as_u64()
                    .and_then(|s| usize::try_from(s).ok())
                    .ok_or_else(|| {
                        bad(format!(
                            "input '{name}': binary_data_size must be a byte count"
                        ))
                    })?;
                if size > binary.len() {
                    return Err(bad(format!(
                        "input '{name}' has binary_data_size {size} but only {} bytes of \
                         binary data are left in the request",
                        binary.len()
                    )));
                }
                binary.split_to(size)
            }
            (None, Some(data)) => data_to_raw(&name, &datatype, &shape, data)
                .map_err(bad)?
                .into(),
            (Some(_), Some(_)) => {
                return Err(bad(format!(
                    "input '{name}' has both 'data' and binary_data_size; send one of them"
                )))
            }
            (None, None) => {
                return Err(bad(format!(
                    "input '{name}' needs 'data' or the binary_data_size parameter"
                )))
            }
        };
        request.inputs.push(InferInputTensor {
            name,
            datatype,
            shape,
            parameters: parameters(input, &["binary_data_size"])?,
            contents: None,
        });
        request.raw_input_contents.push(raw);
    }
    if !binary.is_empty() {
        return Err(bad(format!(
            "the request holds {} bytes of binary data that no input's binary_data_size claims",
            binary.len()
        )));
    }
    let mut choice = OutputChoice {
        all_binary: flag(&object, "binary_data_output")?.unwrap_or(false),
        each: HashMap::new(),
    };
    match object.get("outputs") {
        None => {}
        Some(Value::Array(outputs)) => {
            for output in outputs {
                let Value::Object(output) = output else {
                    return Err(bad("each of 'outputs' must be a JSON object"));
                };
                let name = text_of(output, "name", "a requested output")?.to_owned();
                if let Some(binary) = flag(output, "binary_data")? {
                    choice.each.insert(name.clone(), binary);
                }
                request.outputs.push(InferRequestedOutputTensor {
                    name,
                    parameters: parameters(output, &["binary_data"])?,
                });
            }
        }
        Some(_) => return Err(bad("'outputs' must be a list")),
    }
    Ok((request, choice))
}

fn parameter_json(choice: &Option<ParameterChoice>) -> Value {
    match choice {
        Some(ParameterChoice::BoolParam(b)) => Value::from(*b),
        Some(ParameterChoice::Int64Param(v)) => Value::from(*v),
        Some(ParameterChoice::Uint64Param(v)) => Value::from(*v),
        Some(ParameterChoice::StringParam(s)) => Value::from(s.clone()),
        Some(ParameterChoice::DoubleParam(v)) => json!(v),
        None => Value::Null,
    }
}

fn parameters_json(parameters: &HashMap<String, InferParameter>) -> Map<String, Value> {
    parameters
        .iter()
        .map(|(k, v)| (k.clone(), parameter_json(&v.parameter_choice)))
        .collect()
}

/// The JSON header of an inference answer and the binary parts that follow it.
fn infer_answer(response: ModelInferResponse, choice: &OutputChoice) -> (Value, Vec<Bytes>) {
    let mut header = Map::new();
    header.insert("model_name".into(), Value::from(response.model_name));
    header.insert("model_version".into(), Value::from(response.model_version));
    // Always there (empty when the request had none): KServe's REST data model requires it.
    header.insert("id".into(), Value::from(response.id));
    if !response.parameters.is_empty() {
        header.insert(
            "parameters".into(),
            Value::Object(parameters_json(&response.parameters)),
        );
    }
    let mut binary = Vec::new();
    let mut raw = response.raw_output_contents.into_iter();
    let mut outputs = Vec::with_capacity(response.outputs.len());
    for tensor in response.outputs {
        let data = raw.next().unwrap_or_default();
        let mut parameters = parameters_json(&tensor.parameters);
        let mut output = Map::new();
        output.insert("name".into(), Value::from(tensor.name.clone()));
        output.insert("datatype".into(), Value::from(tensor.datatype.clone()));
        output.insert("shape".into(), Value::from(tensor.shape.clone()));
        let as_json = if choice.binary(&tensor.name) {
            None
        } else {
            raw_to_data(&tensor.datatype, &data)
        };
        match as_json {
            Some(values) => {
                output.insert("data".into(), Value::Array(values));
            }
            None => {
                parameters.insert("binary_data_size".into(), Value::from(data.len()));
                binary.push(data);
            }
        }
        if !parameters.is_empty() {
            output.insert("parameters".into(), Value::Object(parameters));
        }
        outputs.push(Value::Object(output));
    }
    header.insert("outputs".into(), Value::Array(outputs));
    (Value::Object(header), binary)
}

/// The body compressed as the caller's Accept-Encoding asks (gzip, then deflate).
fn compressed(headers: &http::HeaderMap, body: Vec<u8>) -> (Vec<u8>, Option<&'static str>) {
    let accepted = headers
        .get(ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let offers = |name: &str| {
        accepted.split(',').any(|part| {
            let mut pieces = part.split(';');
            let coding = pieces.next().unwrap_or_default().trim();
            let refused =
                pieces.any(|p| matches!(p.trim(), "q=0" | "q=0.0" | "q=0.00" | "q=0.000"));
            coding == name && !refused
        })
    };
    let level = flate2::Compression::default();
    if offers("gzip") {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), level);
        if encoder.write_all(&body).is_ok() {
            if let Ok(out) = encoder.finish() {
                return (out, Some("gzip"));
            }
        }
    } else if offers("deflate") {
        let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), level);
        if encoder.write_all(&body).is_ok() {
            if let Ok(out) = encoder.finish() {
                return (out, Some("deflate"));
            }
        }
    }
    (body, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: &str, binary: &[u8]) -> Result<(ModelInferRequest, OutputChoice), Refusal> {
        let mut headers = http::HeaderMap::new();
        let mut body = json.as_bytes().to_vec();
        if !binary.is_empty() {
            headers.insert(HEADER_LENGTH, HeaderValue::from(body.len()));
            body.extend_from_slice(binary);
        }
        infer_request("m".into(), String::new(), &headers, body.into())
    }

    #[test]
    fn routes_of_the_spec() {
        assert!(matches!(route("/v2/health/ready"), Some(Route::Ready)));
        assert!(matches!(route("/v2/"), Some(Route::ServerMetadata)));
        assert!(matches!(
            route("/v2/models/a%20b/versions/2/infer"),
            Some(Route::Model { name, version, action: ModelAction::Infer }) if name == "a b" && version == "2"
        ));
        assert!(matches!(
            route("/v2/models/m/stats"),
            Some(Route::Statistics { name, .. }) if name == "m"
        ));
        assert!(
            matches!(route("/v2/models/stats"), Some(Route::Statistics { name, .. }) if name.is_empty())
        );
        assert!(matches!(
            route("/v2/repository/models/m/load"),
            Some(Route::Control { name, load: true }) if name == "m"
        ));
        assert!(matches!(
            route("/v2/repository/models/load/unload"),
            Some(Route::Control { name, load: false }) if name == "load"
        ));
        assert!(route("/v1/models/m").is_none());
        assert!(route("/v2/models/m/bogus").is_none());
    }

    #[test]
    fn json_and_binary_inputs_become_raw_contents() {
        let json = r#"{"id":"7","inputs":[
            {"name":"a","datatype":"INT32","shape":[1,2],"data":[[1,2]]},
            {"name":"b","datatype":"FP16","shape":[1],"parameters":{"binary_data_size":2}}],
            "outputs":[{"name":"y","parameters":{"binary_data":true,"classification":2}}],
            "parameters":{"binary_data_output":false,"timeout":5}}"#;
        let (request, choice) = request(json, &[0x00, 0x3c]).unwrap_or_else(|r| panic!("{}", r.1));
        assert_eq!(request.id, "7");
        assert_eq!(
            &request.raw_input_contents[0][..],
            &[1, 0, 0, 0, 2, 0, 0, 0]
        );
        assert_eq!(&request.raw_input_contents[1][..], &[0x00, 0x3c]);
        assert!(request.inputs[1].parameters.is_empty());
        assert!(request.parameters.contains_key("timeout"));
        assert!(!request.parameters.contains_key("binary_data_output"));
        assert!(request.outputs[0].parameters.contains_key("classification"));
        assert!(choice.binary("y") && !choice.binary("z"));
    }

    #[test]
    fn binary_sizes_must_add_up() {
        let json = r#"{"inputs":[{"name":"a","datatype":"UINT8","shape":[2],"parameters":{"binary_data_size":2}}]}"#;
        let extra = request(json, &[1, 2, 3])
            .err()
            .map(|r| r.1)
            .unwrap_or_default();
        assert!(extra.contains("1 bytes of binary data"), "{extra}");
        let short = request(json, &[1]).err().map(|r| r.1).unwrap_or_default();
        assert!(short.contains("only 1 bytes"), "{short}");
        // KServe's client writes "data": null beside binary_data_size.
        let null = r#"{"inputs":[{"name":"a","datatype":"UINT8","shape":[2],"data":null,"parameters":{"binary_data_size":2}}]}"#;
        assert!(request(null, &[1, 2]).is_ok());
    }

    #[test]
    fn answers_json_or_binary_per_output() {
        let response = ModelInferResponse {
            model_name: "m".into(),
            model_version: "1".into(),
            outputs: vec![
                crate::proto::model_infer_response::InferOutputTensor {
                    name: "y".into(),
                    datatype: "FP32".into(),
                    shape: vec![1],
                    ..Default::default()
                },
                crate::proto::model_infer_response::InferOutputTensor {
                    name: "z".into(),
                    datatype: "INT8".into(),
                    shape: vec![1],
                    ..Default::default()
                },
            ],
            raw_output_contents: vec![
                Bytes::from(2.0f32.to_le_bytes().to_vec()),
                Bytes::from_static(&[5]),
            ],
            ..Default::default()
        };
        let choice = OutputChoice {
            all_binary: false,
            each: HashMap::from([("z".to_owned(), true)]),
        };
        let (header, binary) = infer_answer(response, &choice);
        assert_eq!(header["outputs"][0]["data"], json!([2.0]));
        assert_eq!(
            header["outputs"][1]["parameters"]["binary_data_size"],
            json!(1)
        );
        assert_eq!(binary, vec![Bytes::from_static(&[5])]);
    }

    #[test]
    fn statuses_say_whose_fault() {
        assert_eq!(http_status(Code::InvalidArgument), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(
            http_status(Code::Unavailable),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            http_status(Code::ResourceExhausted),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(http_status(Code::Unauthenticated), StatusCode::UNAUTHORIZED);
    }
}

//! The gRPC services on the port: `inference.GRPCInferenceService` (ModelInfer and
//! ModelStreamInfer here, every other method by Python from the request's bytes),
//! behind [`Guarded`], which checks tokens and the call limit from the headers,
//! before any body is read.
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::OwnedSemaphorePermit;
use tonic::body::Body;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::{Grpc, NamedService};
use tonic::{Status, Streaming};
use tower::Service;

use crate::core::Core;

pub const INFERENCE_SERVICE: &str = "inference.GRPCInferenceService";
const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";
/// The path prefix of the inference service's methods.
const INFERENCE_PREFIX: &str = "/inference.GRPCInferenceService/";
const STREAM_METHOD: &str = "ModelStreamInfer";

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
type HttpResponse = http::Response<Body>;

/// Messages as bytes, untouched: the handlers decode what they need themselves.
#[derive(Clone, Copy, Default)]
pub struct BytesCodec;

impl Codec for BytesCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = BytesCodec;
    type Decoder = BytesCodec;
    fn encoder(&mut self) -> Self::Encoder {
        *self
    }
    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl Encoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        let length = src.remaining();
        Ok(Some(src.copy_to_bytes(length)))
    }
}

/// The caller's `grpc-timeout` as an instant (the gRPC spec's units: H M S m u n).
pub fn deadline_of(headers: &http::HeaderMap) -> Option<Instant> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    };
    Instant::now().checked_add(timeout)
}

/// Limits every gRPC method here applies.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_message_bytes: usize,
}

#[derive(Clone)]
pub struct InferenceService {
    core: Arc<Core>,
    limits: Limits,
}

impl InferenceService {
    pub fn new(core: Arc<Core>, limits: Limits) -> Self {
        Self { core, limits }
    }

    fn grpc(&self) -> Grpc<BytesCodec> {
        Grpc::new(BytesCodec)
            .accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Deflate)
            .max_decoding_message_size(self.limits.max_message_bytes)
            .max_encoding_message_size(self.limits.max_message_bytes)
    }
}

impl NamedService for InferenceService {
    const NAME: &'static str = INFERENCE_SERVICE;
}

impl Service<http::Request<Body>> for InferenceService {
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = BoxFuture<Result<HttpResponse, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let method = request
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let deadline = deadline_of(request.headers());
        let core = self.core.clone();
        let mut grpc = self.grpc();
        if method == STREAM_METHOD {
            let handler = tower::service_fn(move |call: tonic::Request<Streaming<Bytes>>| {
                let core = core.clone();
                async move {
                    Ok::<_, Status>(tonic::Response::new(stream_answers(
                        core,
                        call.into_inner(),
                        deadline,
                    )))
                }
            });
            return Box::pin(
                async move { Ok(as_grpc_core(grpc.streaming(handler, request).await)) },
            );
        }
        let handler = tower::service_fn(move |call: tonic::Request<Bytes>| {
            let core = core.clone();
            let method = method.clone();
            async move {
                let body = call.into_inner();
                let answer = if method == "ModelInfer" {
                    core.model_infer(body, deadline).await
                } else {
                    core.delegate(&method, body, deadline).await
                };
                answer.map(tonic::Response::new)
            }
        });
        Box::pin(async move { Ok(as_grpc_core(grpc.unary(handler, request).await)) })
    }
}

/// gRPC's own status for a message over the limit: RESOURCE_EXHAUSTED "Received (or
/// Sent) message larger than max (N vs. M)", where tonic answers OUT_OF_RANGE; the
/// clients and the Python front end agree on gRPC core's.
fn as_grpc_core(response: HttpResponse) -> HttpResponse {
    let (mut parts, body) = response.into_parts();
    rewrite_limit_status(&mut parts.headers);
    let body = http_body_util::BodyExt::map_frame(body, |frame| match frame.into_trailers() {
        Ok(mut trailers) => {
            rewrite_limit_status(&mut trailers);
            http_body::Frame::trailers(trailers)
        }
        Err(frame) => frame,
    });
    http::Response::from_parts(parts, Body::new(body))
}

fn rewrite_limit_status(headers: &mut http::HeaderMap) {
    if headers.get("grpc-status").map(|v| v.as_bytes()) != Some(b"11") {
        return;
    }
    let Some(message) = headers.get("grpc-message").and_then(|v| v.to_str().ok()) else {
        return;
    };
    let message = percent_decoded(message);
    let direction = if message.contains("decoded message length too large") {
        "Received"
    } else if message.contains("encoded message length too large") {
        "Sent"
    } else {
        return;
    };
    let numbers: Vec<&str> = message
        .split(|c: char| !c.is_ascii_digit())
        .filter(|part| !part.is_empty())
        .collect();
    let [found, limit] = numbers[..] else { return };
    let text = format!("{direction} message larger than max ({found} vs. {limit})");
    if let Ok(value) = http::HeaderValue::from_str(&text.replace(' ', "%20")) {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
        headers.insert("grpc-message", value);
    }
}

pub fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' && index + 2 < bytes.len() {
            if let Ok(byte) = u8::from_str_radix(&text[index + 1..index + 3], 16) {
                out.push(byte);
                index += 3;
                continue;
            }
        }
        out.push(bytes[index]);
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

type AnswerStream =
    Pin<Box<dyn futures_util::Stream<Item = Result<Bytes, Status>> + Send + 'static>>;

/// A stream's answers, each sent when ready. At most `stream_window` requests
/// are read and not yet answered: the reader waits for a slot before the next
/// read, and a slot frees once its answer is taken by the transport, which
/// waits for the client's HTTP/2 window, so a client that never reads stops
/// the reading instead of growing the server.
fn stream_answers(
    core: Arc<Core>,
    mut requests: Streaming<Bytes>,
    deadline: Option<Instant>,
) -> AnswerStream {
    let window = Arc::new(tokio::sync::Semaphore::new(core.stream_window));
    let (sender, receiver) =
        tokio::sync::mpsc::unbounded_channel::<(Bytes, tokio::sync::OwnedSemaphorePermit)>();
    tokio::spawn(async move {
        loop {
            let Ok(slot) = window.clone().acquire_owned().await else {
                break;
            };
            let message = tokio::select! {
                message = requests.next() => message,
                () = sender.closed() => break,
            };
            match message {
                Some(Ok(body)) => {
                    let core = core.clone();
                    let sender = sender.clone();
                    tokio::spawn(async move {
                        let answer = core.stream_request(body, deadline).await;
                        let _ = sender.send((answer, slot));
                    });
                }
                // The client ended its side (or broke it): answer what was read, then end.
                Some(Err(_)) | None => break,
            }
        }
    });
    Box::pin(
        tokio_stream::wrappers::UnboundedReceiverStream::new(receiver).map(|(answer, slot)| {
            drop(slot);
            Ok(answer)
        }),
    )
}

/// Bearer tokens and `--max-concurrent-rpcs`, decided from the headers alone.
#[derive(Clone)]
pub struct Guarded<S> {
    inner: S,
    core: Arc<Core>,
}

impl<S> Guarded<S> {
    pub fn new(inner: S, core: Arc<Core>) -> Self {
        Self { inner, core }
    }
}

impl<S: NamedService> NamedService for Guarded<S> {
    const NAME: &'static str = S::NAME;
}

/// The token of an `authorization: Bearer <token>` header, if any.
fn bearer_token(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let scheme = value.get(..7)?;
    scheme
        .eq_ignore_ascii_case("bearer ")
        .then(|| value[7..].trim())
}

/// Whether the token is one of the accepted, in time independent of which or how close.
fn allowed(digests: &[[u8; 32]], token: Option<&str>) -> bool {
    let presented: [u8; 32] = Sha256::digest(token.unwrap_or_default().as_bytes()).into();
    let mut matched = subtle::Choice::from(0);
    for digest in digests {
        matched |= presented.ct_eq(digest);
    }
    bool::from(matched) && token.is_some()
}

fn refuse(status: Status) -> HttpResponse {
    status.into_http()
}

impl<S> Service<http::Request<Body>> for Guarded<S>
where
    S: Service<http::Request<Body>, Response = HttpResponse, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = Infallible;
    type Future = BoxFuture<Result<HttpResponse, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let path = request.uri().path();
        if path.starts_with(HEALTH_PREFIX) {
            return Box::pin(self.inner.call(request));
        }
        if let Err(status) = check_token(&self.core, request.headers()) {
            return Box::pin(async move { Ok(refuse(status)) });
        }
        let counted = !path.ends_with(STREAM_METHOD) && path.starts_with(INFERENCE_PREFIX);
        let permit = if counted {
            match admit(&self.core) {
                Ok(permit) => permit,
                Err(status) => return Box::pin(async move { Ok(refuse(status)) }),
            }
        } else {
            None
        };
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await;
            drop(permit);
            response
        })
    }
}

/// The bearer token check of every call but health's (gRPC and REST alike).
pub fn check_token(core: &Core, headers: &http::HeaderMap) -> Result<(), Status> {
    let tokens = core.tokens.read();
    let Some(digests) = tokens.as_ref() else {
        return Ok(());
    };
    let token = bearer_token(headers);
    if allowed(digests, token) {
        return Ok(());
    }
    let messages = &core.messages;
    let message = if token.is_none() {
        &messages.token_required
    } else {
        &messages.token_invalid
    };
    Err(Status::unauthenticated(message.clone()))
}

/// A place under `--max-concurrent-rpcs` for a call's life (None: no limit set).
pub fn admit(core: &Core) -> Result<Option<OwnedSemaphorePermit>, Status> {
    match &core.admission {
        None => Ok(None),
        Some(admission) => admission
            .clone()
            .try_acquire_owned()
            .map(Some)
            .map_err(|_| Status::resource_exhausted(core.messages.busy.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_names_the_service() {
        assert_eq!(INFERENCE_PREFIX, format!("/{INFERENCE_SERVICE}/"));
    }

    #[test]
    fn grpc_timeout_units() {
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-timeout", http::HeaderValue::from_static("250m"));
        let deadline = deadline_of(&headers).expect("parsed");
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(left <= Duration::from_millis(250) && left > Duration::from_millis(200));
        headers.insert("grpc-timeout", http::HeaderValue::from_static("bogus"));
        assert!(deadline_of(&headers).is_none());
    }

    #[test]
    fn over_the_limit_reads_as_grpc_core_says_it() {
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-status", http::HeaderValue::from_static("11"));
        headers.insert(
            "grpc-message",
            http::HeaderValue::from_static(
                "Error,%20decoded%20message%20length%20too%20large:%20found%205160%20bytes,%20the%20limit%20is:%204096%20bytes",
            ),
        );
        rewrite_limit_status(&mut headers);
        assert_eq!(headers["grpc-status"], "8");
        assert_eq!(
            percent_decoded(headers["grpc-message"].to_str().unwrap_or_default()),
            "Received message larger than max (5160 vs. 4096)"
        );
    }

    #[test]
    fn tokens_compare_by_digest() {
        let digest: [u8; 32] = Sha256::digest(b"secret").into();
        assert!(allowed(&[digest], Some("secret")));
        assert!(!allowed(&[digest], Some("secreT")));
        assert!(!allowed(&[digest], None));
        assert!(!allowed(&[], Some("secret")));
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "authorization",
            http::HeaderValue::from_static("bEaReR  secret "),
        );
        assert_eq!(bearer_token(&headers), Some("secret"));
    }
}

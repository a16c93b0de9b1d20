//! The listening socket, TLS, HTTP/2, and the connections' lifetimes (age, drain).
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an HTTP/1.1 client may take over a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The PEM files' contents for TLS (mutual with `client_ca`).
pub struct TlsFiles {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    pub client_ca: Option<Vec<u8>>,
}

pub struct Connections {
    pub max_age: Option<Duration>,
    pub age_grace: Option<Duration>,
    pub open: AtomicUsize,
}

struct Open(Arc<Connections>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A TLS acceptor from PEM bytes, offering `versions` by ALPN; the error says which part is wrong.
pub fn tls_acceptor(files: &TlsFiles, versions: Versions) -> Result<TlsAcceptor, String> {
    let certs = CertificateDer::pem_slice_iter(&files.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--tls-cert holds no readable PEM certificate: {e}"))?;
    if certs.is_empty() {
        return Err("--tls-cert holds no PEM certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(&files.key)
        .map_err(|e| format!("--tls-key holds no readable PEM private key: {e}"))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca) {
                let cert = cert.map_err(|e| format!("--tls-client-ca: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("--tls-client-ca: {e}"))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("--tls-client-ca: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("--tls-cert and --tls-key do not make a certificate: {e}"))?;
    config.alpn_protocols = match versions {
        Versions::Http2 => vec![b"h2".to_vec()],
        Versions::Http1And2 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
    };
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Bind `host:port` (SO_REUSEPORT when --workers share it); an error a user can act on,
/// naming the `flag` that set the port.
pub fn bind(
    host: &str,
    port: u16,
    reuse_port: bool,
    flag: &str,
) -> Result<std::net::TcpListener, String> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let address: SocketAddr = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("cannot resolve {host}"))?;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::STREAM,
        None,
    )
    .map_err(|e| format!("cannot listen on {host}:{port} ({flag}): {e}"))?;
    let in_use = |e: std::io::Error| {
        format!("cannot listen on {host}:{port} ({flag}): is the port in use? ({e})")
    };
    socket.set_reuse_address(true).map_err(in_use)?;
    if reuse_port {
        socket.set_reuse_port(true).map_err(in_use)?;
    }
    socket.bind(&address.into()).map_err(in_use)?;
    socket.listen(1024).map_err(in_use)?;
    socket.set_nonblocking(true).map_err(in_use)?;
    Ok(socket.into())
}

/// Which HTTP versions a port speaks: gRPC's is HTTP/2 alone; REST's HTTP/1.1
/// and HTTP/2 (h2c by prior knowledge, or h2 by ALPN under TLS).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Versions {
    Http2,
    Http1And2,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Accept connections until `stop` turns true; then each connection is told to go
/// away (HTTP/2 GOAWAY, HTTP/1.1 closes once idle: calls in progress finish) and
/// ends on its own.
pub async fn serve<S, B>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    service: S,
    versions: Versions,
    stop: watch::Receiver<bool>,
    connections: Arc<Connections>,
) where
    S: hyper::service::Service<http::Request<Incoming>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let mut stopping = stop.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopping.wait_for(|stop| *stop) => break,
        };
        let Ok((stream, _)) = accepted else {
            // EMFILE and the like: wait a moment instead of spinning.
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        connections.open.fetch_add(1, Ordering::AcqRel);
        let open = Open(connections.clone());
        let service = service.clone();
        let stop = stop.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _open = open;
            match tls {
                None => drive(stream, service, versions, stop, &_open.0).await,
                Some(acceptor) => {
                    if let Ok(Ok(stream)) =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        drive(stream, service, versions, stop, &_open.0).await;
                    }
                }
            }
        });
    }
}

async fn drive<I, S, B>(
    io: I,
    service: S,
    versions: Versions,
    mut stop: watch::Receiver<bool>,
    connections: &Connections,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<http::Request<Incoming>, Response = http::Response<B>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    if versions == Versions::Http2 {
        builder = builder.http2_only();
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        // No per-connection stream limit, as gRPC core's server (hyper's own default is 200).
        .max_concurrent_streams(None)
        .max_pending_accept_reset_streams(Some(1024));
    // HTTP/1.1: a client has 30 s to send a request's headers (slow clients hold no slot).
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    let mut connection = std::pin::pin!(connection);
    let aged = async {
        match connections.max_age {
            Some(age) => tokio::time::sleep(age).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = connection.as_mut() => return,
        _ = stop.wait_for(|stop| *stop) => connection.as_mut().graceful_shutdown(),
        () = aged => connection.as_mut().graceful_shutdown(),
    }
    match connections.age_grace {
        Some(grace) => {
            let _ = tokio::time::timeout(grace, connection).await;
        }
        None => {
            let _ = connection.await;
        }
    }
}

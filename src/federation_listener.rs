//! The federation listener: HTTPS with the configured certificate, or a generated self-signed one
//! (logged as such), serving the federation router until shutdown.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use axum::{extract::ConnectInfo, Router};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio::{net::TcpListener, sync::watch};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::{
    config::Config,
    error::{Error, Result},
};

/// Longest TLS handshake allowed before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS configuration: the configured PEM files, or a self-signed certificate for the server
/// name (peers must then run with certificate checks off, as tests on loopback do).
pub fn tls_config(config: &Config) -> Result<Arc<rustls::ServerConfig>> {
    let fed = &config.federation;
    let (certs, key) = if !fed.tls_cert.is_empty() || !fed.tls_key.is_empty() {
        let certs = CertificateDer::pem_file_iter(Path::new(&fed.tls_cert))
            .and_then(|i| i.collect::<std::result::Result<Vec<_>, _>>())
            .map_err(|e| Error::internal(format!("federation.tls_cert {}: {e}", fed.tls_cert)))?;
        let key = PrivateKeyDer::from_pem_file(Path::new(&fed.tls_key))
            .map_err(|e| Error::internal(format!("federation.tls_key {}: {e}", fed.tls_key)))?;
        (certs, key)
    } else {
        let host = config.server_name.host().to_owned();
        let mut names = vec![host.clone()];
        if host != "localhost" {
            names.push("localhost".to_owned());
        }
        let generated = rcgen::generate_simple_self_signed(names)
            .map_err(|e| Error::internal(format!("self-signed certificate: {e}")))?;
        tracing::warn!(
            %host,
            "federation uses a generated self-signed certificate; set federation.tls_cert and \
             federation.tls_key for peers that check certificates"
        );
        let key = PrivateKeyDer::try_from(generated.key_pair.serialize_der())
            .map_err(|e| Error::internal(format!("self-signed key: {e}")))?;
        (vec![generated.cert.der().clone()], key)
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::internal(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::internal(format!("TLS certificate: {e}")))?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

/// Serves `router` over TLS on `listener` until `stop` turns true; then lets open connections
/// finish their requests.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    mut stop: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => break,
        };
        let Ok((tcp, peer)) = accepted else {
            continue;
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let mut stop = stop.clone();
        connections.spawn(async move {
            let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            else {
                return;
            };
            let service =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let mut req = req.map(axum::body::Body::new);
                    req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                    router.clone().oneshot(req)
                });
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(tls), service);
            tokio::pin!(conn);
            let stopping = tokio::select! {
                _ = conn.as_mut() => false,
                _ = stop.wait_for(|s| *s) => true,
            };
            if stopping {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        });
        while connections.try_join_next().is_some() {}
    }
    while connections.join_next().await.is_some() {}
}

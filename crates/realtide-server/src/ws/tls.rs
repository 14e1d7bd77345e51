//! Native TLS for the HTTP and WebSocket listener (`TLS_CERT`, `TLS_KEY`).
//!
//! TCP connections are accepted by one task and counted and guarded at once
//! ([`crate::ws::listener`]); each TLS handshake runs in its own task (bounded by
//! `HANDSHAKE_TIMEOUT_MS`) so that a slow or hostile handshake never holds up the accept loop;
//! finished streams are handed to axum through a channel.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::server::TlsStream;

use crate::ws::listener::{Connection, Guarded, Sockets};

/// Handshakes finished but not yet taken by the server.
const READY_QUEUE: usize = 1024;

/// Why the TLS settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file could not be read or holds no certificate.
    #[error("TLS_CERT {path}: {message}")]
    Cert {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The key file could not be read or holds no private key.
    #[error("TLS_KEY {path}: {message}")]
    Key {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The key does not match the certificate, or is of an unsupported kind.
    #[error("TLS_CERT/TLS_KEY: {0}")]
    Config(String),
}

/// Loads the PEM certificate chain and private key into a TLS acceptor (HTTP/1.1 only).
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Cert {
            path: cert.display().to_string(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Cert {
            path: cert.display().to_string(),
            message: "no certificate in the file".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        message: e.to_string(),
    })?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A listener yielding TLS streams whose handshake has completed.
#[derive(Debug)]
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<Guarded<TcpStream>>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `listener`; stops when the returned listener is dropped. Sockets are
    /// counted and guarded from accept, before their TLS handshake.
    pub fn new(
        listener: TcpListener,
        acceptor: TlsAcceptor,
        sockets: Arc<Sockets>,
        handshake_timeout: Duration,
    ) -> io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    biased;
                    () = tx.closed() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(error) => {
                            // Out of file descriptors and the like: back off briefly.
                            tracing::warn!(%error, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let _ = stream.set_nodelay(true);
                let Some(stream) = sockets.admit(stream) else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(error)) => tracing::debug!(%error, "tls handshake failed"),
                        Err(_) => tracing::debug!("tls handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<Guarded<TcpStream>>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(ready) => ready,
            // The accept task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
    for Connection
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Connection {
        // The guard sits under TLS, so that the handshake is within the deadline too.
        stream.io().get_ref().0.connection()
    }
}

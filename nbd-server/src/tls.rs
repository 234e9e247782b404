//! TLS for NBD (STARTTLS): x509 credentials in the directory layout qemu and libnbd use, and the
//! policy (`on`: offered; `require`: nothing is reachable in clear).
//!
//! The crypto provider is rustls' `ring`, named explicitly so that no process-wide default (and no
//! second provider pulled in by another crate) decides it.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
pub use tokio_rustls::rustls;
use tokio_util::either::Either;

use crate::server::Split;

/// File names inside a `--tls-creds` directory, as qemu's `tls-creds-x509` and libnbd's
/// `tls-certificates` expect them.
pub const CA_CERT: &str = "ca-cert.pem";
pub const SERVER_CERT: &str = "server-cert.pem";
pub const SERVER_KEY: &str = "server-key.pem";

/// `tls = off | on | require`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    #[default]
    Off,
    /// STARTTLS is offered; clients may also stay in clear.
    On,
    /// Every option but STARTTLS and ABORT is refused (`NBD_REP_ERR_TLS_REQD`) until TLS is up.
    Require,
}

impl FromStr for TlsMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(Self::Off),
            "on" => Ok(Self::On),
            "require" => Ok(Self::Require),
            other => Err(format!("tls must be off, on or require, not {other:?}")),
        }
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Off => "off",
            Self::On => "on",
            Self::Require => "require",
        })
    }
}

/// What the server does about TLS: set in [`crate::ServerConfig::tls`].
#[derive(Clone)]
pub struct Tls {
    pub require: bool,
    pub config: Arc<rustls::ServerConfig>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("require", &self.require)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// `None` for [`TlsMode::Off`].
    pub fn new(mode: TlsMode, config: Arc<rustls::ServerConfig>) -> Option<Self> {
        match mode {
            TlsMode::Off => None,
            TlsMode::On => Some(Self {
                require: false,
                config,
            }),
            TlsMode::Require => Some(Self {
                require: true,
                config,
            }),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{}: {what}", path.display())]
    Pem { path: PathBuf, what: String },
    #[error("client certificates are to be verified but {} is missing", .0.display())]
    NoCa(PathBuf),
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// A server certificate chain and key, and the CA that client certificates must chain to.
pub struct X509Creds {
    pub certs: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// From `ca-cert.pem`, when the directory has one.
    pub ca: Option<Vec<CertificateDer<'static>>>,
    dir: PathBuf,
}

impl X509Creds {
    /// Reads `server-cert.pem`, `server-key.pem` and (if present) `ca-cert.pem` from `dir`.
    pub fn from_dir(dir: &Path) -> Result<Self, TlsError> {
        let ca_path = dir.join(CA_CERT);
        let ca = if ca_path.exists() {
            Some(read(&ca_path)?)
        } else {
            None
        };
        let cert = read(&dir.join(SERVER_CERT))?;
        let key = read(&dir.join(SERVER_KEY))?;
        Self::from_pem(dir, &cert, &key, ca.as_deref())
    }

    /// From PEM text; `dir` names where it came from in errors.
    pub fn from_pem(
        dir: &Path,
        cert: &[u8],
        key: &[u8],
        ca: Option<&[u8]>,
    ) -> Result<Self, TlsError> {
        let certs = parse_certs(cert, &dir.join(SERVER_CERT))?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| TlsError::Pem {
            path: dir.join(SERVER_KEY),
            what: format!("no private key: {e}"),
        })?;
        let ca = ca
            .map(|pem| parse_certs(pem, &dir.join(CA_CERT)))
            .transpose()?;
        Ok(Self {
            certs,
            key,
            ca,
            dir: dir.to_owned(),
        })
    }

    /// A rustls server configuration. `verify_peer`: clients must present a certificate signed by
    /// the CA (mutual TLS). `alpn`: protocols offered (none for NBD, `h2`/`http/1.1` for HTTPS).
    pub fn server_config(
        &self,
        verify_peer: bool,
        alpn: &[&[u8]],
    ) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = if verify_peer {
            let ca = self
                .ca
                .as_ref()
                .ok_or_else(|| TlsError::NoCa(self.dir.join(CA_CERT)))?;
            let mut roots = rustls::RootCertStore::empty();
            for c in ca {
                roots
                    .add(c.clone())
                    .map_err(|e| TlsError::Config(format!("{CA_CERT}: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder
            .with_single_cert(self.certs.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Config(format!("{SERVER_CERT} and {SERVER_KEY}: {e}")))?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn parse_certs(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            what: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            what: "no certificate".into(),
        });
    }
    Ok(certs)
}

/// A connection's byte stream: in clear until STARTTLS, then inside TLS. `Upgrading` only holds
/// the place while the TLS handshake owns the socket; if that fails the connection ends.
pub(crate) enum MaybeTls<S> {
    Plain(S),
    Tls(Box<tokio_rustls::server::TlsStream<S>>),
    Upgrading,
}

impl<S: AsyncRead + AsyncWrite + Unpin> MaybeTls<S> {
    pub fn is_tls(&self) -> bool {
        matches!(self, Self::Tls(_))
    }

    /// The server's side of the TLS handshake, right after the STARTTLS ACK.
    pub async fn start_tls(&mut self, config: &Arc<rustls::ServerConfig>) -> io::Result<()> {
        let Self::Plain(plain) = std::mem::replace(self, Self::Upgrading) else {
            return Err(io::Error::other(
                "STARTTLS on a stream that is not in clear",
            ));
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(config));
        let tls = acceptor
            .accept(plain)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("TLS handshake failed: {e}")))?;
        *self = Self::Tls(Box::new(tls));
        Ok(())
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "TLS handshake failed")
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for MaybeTls<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s).poll_read(cx, buf),
            Self::Upgrading => Poll::Ready(Err(gone())),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for MaybeTls<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s).poll_write(cx, buf),
            Self::Upgrading => Poll::Ready(Err(gone())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Upgrading => Poll::Ready(Err(gone())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
            Self::Upgrading => false,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s).poll_flush(cx),
            Self::Upgrading => Poll::Ready(Err(gone())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s).poll_shutdown(cx),
            Self::Upgrading => Poll::Ready(Err(gone())),
        }
    }
}

/// In clear the socket's own halves (no lock between reader and writer); inside TLS one session
/// serves both directions, so its halves share it through `tokio::io::split`.
impl<S: Split> Split for MaybeTls<S> {
    type Read = Either<S::Read, ReadHalf<Self>>;
    type Write = Either<S::Write, WriteHalf<Self>>;
    fn split(self) -> (Self::Read, Self::Write) {
        match self {
            Self::Plain(s) => {
                let (r, w) = s.split();
                (Either::Left(r), Either::Left(w))
            }
            other => {
                let (r, w) = tokio::io::split(other);
                (Either::Right(r), Either::Right(w))
            }
        }
    }
}

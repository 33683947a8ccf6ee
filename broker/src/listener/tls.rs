//! TLS for the ssl and wss listeners (rustls): the server configuration built from the PEM
//! files of `[listener.ssl]` / `[listener.wss]`, and the username a client certificate gives
//! (EMQX's `peer_cert_as_username`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig, ServerConnection};

use crate::config::TlsSettings;

/// A TLS listener's settings could not be turned into a server configuration.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    #[error("listener.{listener}.{key} is not set")]
    Missing { listener: &'static str, key: &'static str },
    #[error("listener.{listener}.{key}: cannot read {}: {error}", path.display())]
    Read { listener: &'static str, key: &'static str, path: PathBuf, error: std::io::Error },
    #[error("listener.{listener}.{key}: {}: {what}", path.display())]
    Pem { listener: &'static str, key: &'static str, path: PathBuf, what: String },
    #[error("listener.{listener}.peer_cert_as_username = {value:?} (must be \"cn\" or \"dn\")")]
    PeerCertAs { listener: &'static str, value: String },
    #[error("listener.{listener}: {what}")]
    Rustls { listener: &'static str, what: String },
}

/// What of the client certificate becomes the MQTT username.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeerCertAs {
    /// The subject's Common Name.
    Cn,
    /// The whole subject, `CN=...,O=...`.
    Dn,
}

/// A TLS listener's checked settings.
#[derive(Clone)]
pub(crate) struct Tls {
    pub(crate) acceptor: tokio_rustls::TlsAcceptor,
    pub(crate) peer_cert_as: Option<PeerCertAs>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("peer_cert_as", &self.peer_cert_as).finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads the files `settings` names; `listener` (`ssl`, `wss`) names the settings in errors.
    pub(crate) fn new(listener: &'static str, settings: &TlsSettings) -> Result<Tls, TlsError> {
        let peer_cert_as = match settings.peer_cert_as_username.as_deref().map(str::trim) {
            None | Some("") => None,
            Some("cn") => Some(PeerCertAs::Cn),
            Some("dn") => Some(PeerCertAs::Dn),
            Some(other) => return Err(TlsError::PeerCertAs { listener, value: other.to_owned() }),
        };
        let file = |key: &'static str, path: &Option<PathBuf>| -> Result<(PathBuf, Vec<u8>), TlsError> {
            let path = path.clone().ok_or(TlsError::Missing { listener, key })?;
            let bytes =
                std::fs::read(&path).map_err(|error| TlsError::Read { listener, key, path: path.clone(), error })?;
            Ok((path, bytes))
        };
        let bad_pem =
            |key: &'static str, path: &Path, what: String| TlsError::Pem { listener, key, path: path.to_owned(), what };

        let (path, pem) = file("certfile", &settings.certfile)?;
        let chain = certificates(&pem).map_err(|what| bad_pem("certfile", &path, what))?;
        let (path, pem) = file("keyfile", &settings.keyfile)?;
        let key = PrivateKeyDer::from_pem_slice(&pem)
            .map_err(|e| bad_pem("keyfile", &path, format!("no usable PEM private key ({e})")))?;

        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let rustls_error = |e: rustls::Error| TlsError::Rustls { listener, what: e.to_string() };
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(rustls_error)?;
        let builder = if settings.verify_peer {
            let (path, pem) = file("cacertfile", &settings.cacertfile)?;
            let mut roots = RootCertStore::empty();
            for cert in certificates(&pem).map_err(|what| bad_pem("cacertfile", &path, what))? {
                roots.add(cert).map_err(|e| bad_pem("cacertfile", &path, e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if settings.fail_if_no_peer_cert { verifier } else { verifier.allow_unauthenticated() };
            let verifier = verifier.build().map_err(|e| TlsError::Rustls { listener, what: e.to_string() })?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let config = builder.with_single_cert(chain, key).map_err(|e| match e {
            rustls::Error::General(_) | rustls::Error::InconsistentKeys(_) => TlsError::Pem {
                listener,
                key: "keyfile",
                path: settings.keyfile.clone().unwrap_or_default(),
                what: format!("does not go with certfile: {e}"),
            },
            e => rustls_error(e),
        })?;
        Ok(Tls { acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)), peer_cert_as })
    }

    /// The username the client's certificate gives, when `peer_cert_as_username` is set and
    /// the client sent one.
    pub(crate) fn cert_username(&self, connection: &ServerConnection) -> Option<Box<str>> {
        let what = self.peer_cert_as?;
        let cert = connection.peer_certificates()?.first()?;
        let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
        let subject = parsed.subject();
        match what {
            PeerCertAs::Cn => subject.iter_common_name().next()?.as_str().ok().map(Box::from),
            PeerCertAs::Dn => Some(subject.to_string().into()),
        }
    }
}

/// Every certificate in a PEM file; at least one.
fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("unparsable PEM ({e})"))?;
    if certs.is_empty() {
        return Err("no PEM certificate in it".to_owned());
    }
    Ok(certs)
}

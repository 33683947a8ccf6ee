//! The TLS client settings for an `https://` service (`[web_hook.ssl]`), made once and used
//! by every connection (tokio-rustls).
//!
//! - `cacertfile`: the service's certificate must chain to one of these CAs, and to nothing
//!   else; without it, to the system's roots (as HTTP clients check by default).
//! - `certfile` and `keyfile`: a client certificate, for a service that asks for one.
//! - `verify = false`: any certificate is accepted (EMQX's default); the handshake's
//!   signatures are still checked against the certificate presented.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_platform_verifier::BuilderVerifierExt;

use crate::sender::StartError;
use crate::settings::Ssl;

/// The client settings for `ssl`, its files read relative to `data_dir`.
pub(crate) fn client_config(ssl: &Ssl, data_dir: &Path) -> Result<ClientConfig, StartError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| StartError::Client(e.to_string()))?;
    let builder = if !ssl.verify {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
    } else if let Some(pem) = read("cacertfile", ssl.cacertfile.as_deref(), data_dir)? {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| StartError::Tls { key: "cacertfile", why: e.to_string() })?;
            roots.add(cert).map_err(|e| StartError::Tls { key: "cacertfile", why: e.to_string() })?;
        }
        if roots.is_empty() {
            return Err(StartError::Tls { key: "cacertfile", why: "has no CERTIFICATE".to_owned() });
        }
        builder.with_root_certificates(roots)
    } else {
        builder.with_platform_verifier().map_err(|e| StartError::Client(format!("the system's roots: {e}")))?
    };
    let certfile = read("certfile", ssl.certfile.as_deref(), data_dir)?;
    let keyfile = read("keyfile", ssl.keyfile.as_deref(), data_dir)?;
    let mut config = match (certfile, keyfile) {
        (None, None) => builder.with_no_client_auth(),
        (Some(certs), Some(key)) => {
            let certs = CertificateDer::pem_slice_iter(&certs)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| StartError::Tls { key: "certfile", why: e.to_string() })?;
            if certs.is_empty() {
                return Err(StartError::Tls { key: "certfile", why: "has no CERTIFICATE".to_owned() });
            }
            let key = PrivateKeyDer::from_pem_slice(&key)
                .map_err(|e| StartError::Tls { key: "keyfile", why: e.to_string() })?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| StartError::Tls { key: "keyfile", why: format!("does not go with certfile: {e}") })?
        }
        _ => {
            return Err(StartError::Tls {
                key: "certfile",
                why: "web_hook.ssl.certfile and web_hook.ssl.keyfile go together: set both or neither".to_owned(),
            })
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The name the service's certificate must carry: the URL's host.
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_owned()).map_err(|e| format!("{host} cannot be checked against a certificate: {e}"))
}

/// The file `key` names, if set (and not empty), read relative to `data_dir`.
fn read(key: &'static str, path: Option<&Path>, data_dir: &Path) -> Result<Option<Vec<u8>>, StartError> {
    match path.filter(|p| !p.as_os_str().is_empty()) {
        None => Ok(None),
        Some(path) => {
            let path = data_dir.join(path);
            std::fs::read(&path)
                .map(Some)
                .map_err(|e| StartError::Tls { key, why: format!("cannot read {}: {e}", path.display()) })
        }
    }
}

/// `verify = false`: whatever certificate the service presents is accepted.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, signature, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, signature, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data directory with a self-signed certificate and its key, and another key.
    fn files() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap().self_signed(&key).unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("other.key"), rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
        std::fs::write(dir.path().join("empty.pem"), "nothing here\n").unwrap();
        dir
    }

    fn ssl(cacertfile: Option<&str>, certfile: Option<&str>, keyfile: Option<&str>, verify: bool) -> Ssl {
        Ssl {
            cacertfile: cacertfile.map(Into::into),
            certfile: certfile.map(Into::into),
            keyfile: keyfile.map(Into::into),
            verify,
        }
    }

    #[test]
    fn good_files_make_a_config_for_http_1_1() {
        let dir = files();
        for settings in [
            ssl(None, None, None, true),
            ssl(Some("cert.pem"), None, None, true),
            ssl(Some("cert.pem"), Some("cert.pem"), Some("key.pem"), true),
            ssl(None, Some("cert.pem"), Some("key.pem"), false),
        ] {
            let config = client_config(&settings, dir.path()).unwrap_or_else(|e| panic!("{settings:?}: {e}"));
            assert_eq!(config.alpn_protocols, [b"http/1.1".to_vec()]);
        }
    }

    #[test]
    fn bad_files_are_named_precisely() {
        let dir = files();
        for (settings, expected) in [
            (ssl(Some("missing.pem"), None, None, true), "web_hook.ssl.cacertfile: cannot read"),
            (ssl(Some("empty.pem"), None, None, true), "web_hook.ssl.cacertfile: has no CERTIFICATE"),
            (ssl(None, Some("cert.pem"), None, true), "set both or neither"),
            (ssl(None, Some("empty.pem"), Some("key.pem"), true), "web_hook.ssl.certfile: has no CERTIFICATE"),
            (ssl(None, Some("cert.pem"), Some("empty.pem"), true), "web_hook.ssl.keyfile"),
            (ssl(None, Some("cert.pem"), Some("other.key"), true), "web_hook.ssl.keyfile: does not go with certfile"),
        ] {
            let error = client_config(&settings, dir.path()).expect_err(expected).to_string();
            assert!(error.contains(expected), "{settings:?}: {error}");
        }
    }
}

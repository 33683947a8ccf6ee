//! TLS to the remote broker (`ssl = true`), with rustls: the server's certificate is checked
//! against `cacertfile` (PEM), or the built-in web PKI roots (Mozilla's) without it; `certfile`
//! and `keyfile` (PEM; PKCS#8, PKCS#1 or SEC1 key) are a client certificate for a broker that
//! asks for one. The files are read when the plugin starts, so a bad one refuses the load.

use std::path::Path;
use std::sync::Arc;

use rumqttc::tokio_rustls::rustls::pki_types::pem::PemObject;
use rumqttc::tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rumqttc::tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

use crate::settings::TlsFiles;

/// The client configuration for `files`; errors name the setting (`bridge_mqtt<prefix>.<key>`)
/// and the file.
pub(crate) fn client_config(files: &TlsFiles, prefix: &str) -> Result<Arc<ClientConfig>, String> {
    let read = |key: &str, path: &Path| -> Result<Vec<u8>, String> {
        std::fs::read(path).map_err(|e| format!("bridge_mqtt{prefix}.{key}: cannot read {}: {e}", path.display()))
    };
    let bad = |key: &str, path: &Path, why: String| format!("bridge_mqtt{prefix}.{key}: {}: {why}", path.display());
    let mut roots = RootCertStore::empty();
    match &files.cacertfile {
        Some(path) => {
            let pem = read("cacertfile", path)?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| bad("cacertfile", path, format!("not PEM ({e})")))?;
                roots.add(cert).map_err(|e| bad("cacertfile", path, e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(bad("cacertfile", path, "has no CERTIFICATE".to_owned()));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("bridge_mqtt{prefix}: TLS: {e}"))?
        .with_root_certificates(roots);
    let config = match (&files.certfile, &files.keyfile) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert_path), Some(key_path)) => {
            let pem = read("certfile", cert_path)?;
            let chain = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad("certfile", cert_path, format!("not PEM ({e})")))?;
            if chain.is_empty() {
                return Err(bad("certfile", cert_path, "has no CERTIFICATE".to_owned()));
            }
            let key = PrivateKeyDer::from_pem_slice(&read("keyfile", key_path)?)
                .map_err(|e| bad("keyfile", key_path, format!("no usable PEM private key ({e})")))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| bad("keyfile", key_path, e.to_string()))?
        }
        _ => {
            return Err(format!(
                "bridge_mqtt{prefix}.certfile and bridge_mqtt{prefix}.keyfile go together: set both or neither"
            ))
        }
    };
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_files_are_named() {
        let dir = std::env::temp_dir().join(format!("bridge-mqtt-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("empty.pem"), "").unwrap();
        let files = |ca: Option<&str>, cert: Option<&str>, key: Option<&str>| TlsFiles {
            cacertfile: ca.map(|p| dir.join(p)),
            certfile: cert.map(|p| dir.join(p)),
            keyfile: key.map(|p| dir.join(p)),
        };
        let error = |f: TlsFiles| client_config(&f, "").unwrap_err();
        assert!(error(files(Some("missing.pem"), None, None)).starts_with("bridge_mqtt.cacertfile: cannot read "));
        assert!(error(files(Some("empty.pem"), None, None)).ends_with("empty.pem: has no CERTIFICATE"));
        assert!(error(files(None, Some("empty.pem"), None)).contains("go together"));
        assert!(client_config(&TlsFiles::default(), "").is_ok(), "no files: the built-in roots");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! TLS for `https://` services, from EMQX 4.3's `auth.http.ssl.*` files: the CA certificates
//! the service must chain to (`cacertfile`; without it the built-in web PKI roots) and a
//! client certificate and key (`certfile`, `keyfile`) for services that ask for one. rustls
//! (through ureq) does the TLS; this module only reads the PEM files.

use std::path::{Path, PathBuf};

use ureq::tls::{parse_pem, Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};

use crate::settings::Ssl;

/// A TLS file that cannot be used; the message names the key and the file.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    /// The file cannot be read.
    #[error("auth_http.ssl.{key}: cannot read {}: {source}", path.display())]
    Read {
        key: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not PEM, or holds nothing of what is wanted.
    #[error("auth_http.ssl.{key}: {} {why}", path.display())]
    Content { key: &'static str, path: PathBuf, why: String },
    /// One of `certfile` and `keyfile` without the other.
    #[error("auth_http.ssl.certfile and auth_http.ssl.keyfile go together: set both or neither")]
    Pair,
}

/// The TLS config for `ssl`, with relative paths taken from `data_dir`.
pub(crate) fn config(ssl: &Ssl, data_dir: &Path) -> Result<TlsConfig, TlsError> {
    let path = |p: &Option<PathBuf>| p.as_ref().filter(|p| !p.as_os_str().is_empty()).map(|p| data_dir.join(p));
    let mut builder = TlsConfig::builder();
    if let Some(file) = path(&ssl.cacertfile) {
        let (certs, _) = read("cacertfile", &file)?;
        if certs.is_empty() {
            return Err(content("cacertfile", file, "has no CERTIFICATE"));
        }
        builder = builder.root_certs(RootCerts::new_with_certs(&certs));
    }
    match (path(&ssl.certfile), path(&ssl.keyfile)) {
        (None, None) => {}
        (Some(cert_file), Some(key_file)) => {
            let (chain, _) = read("certfile", &cert_file)?;
            if chain.is_empty() {
                return Err(content("certfile", cert_file, "has no CERTIFICATE"));
            }
            let key =
                read("keyfile", &key_file)?.1.ok_or_else(|| content("keyfile", key_file, "has no PRIVATE KEY"))?;
            builder = builder.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
        }
        _ => return Err(TlsError::Pair),
    }
    Ok(builder.build())
}

fn content(key: &'static str, path: PathBuf, why: &str) -> TlsError {
    TlsError::Content { key, path, why: why.to_owned() }
}

/// The certificates and the first private key in a PEM file.
fn read(key: &'static str, path: &Path) -> Result<(Vec<Certificate<'static>>, Option<PrivateKey<'static>>), TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read { key, path: path.to_owned(), source })?;
    let (mut certs, mut private_key) = (Vec::new(), None);
    for item in parse_pem(&pem) {
        match item.map_err(|e| content(key, path.to_owned(), &format!("is not PEM: {e}")))? {
            PemItem::Certificate(cert) => certs.push(cert),
            PemItem::PrivateKey(k) => {
                private_key.get_or_insert(k);
            }
            _ => {}
        }
    }
    Ok((certs, private_key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_files_are_named() {
        let dir = std::env::temp_dir().join(format!("auth-http-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("empty.pem"), "").unwrap();
        let ssl = |ca: &str, cert: &str, key: &str| Ssl {
            cacertfile: Some(ca.into()),
            certfile: Some(cert.into()),
            keyfile: Some(key.into()),
        };
        let error = |ssl: Ssl| config(&ssl, &dir).unwrap_err().to_string();
        assert!(error(ssl("missing.pem", "", "")).starts_with("auth_http.ssl.cacertfile: cannot read "));
        assert!(error(ssl("empty.pem", "", "")).ends_with("empty.pem has no CERTIFICATE"));
        assert_eq!(
            error(ssl("", "empty.pem", "")),
            "auth_http.ssl.certfile and auth_http.ssl.keyfile go together: set both or neither"
        );
        assert!(config(&Ssl::default(), &dir).is_ok(), "no files: the built-in roots");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

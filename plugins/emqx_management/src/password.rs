//! `management.password`: a plain password, or a hash of it told by its prefix.
//!
//! | prefix | what | made by |
//! |---|---|---|
//! | `$argon2id$`, `$argon2i$`, `$argon2d$` | an Argon2 PHC string | `broker ctl management hash-password PASSWORD`, Debian's `argon2 SALT -id -e` |
//! | `$2a$`, `$2b$`, `$2y$` | bcrypt | `htpasswd -nbB "" PASSWORD` (drop the leading `:`) |
//! | anything else | the plain password, compared in constant time | — |
//!
//! The crypto is the RustCrypto `argon2` crate's and the `bcrypt` crate's; nothing here is
//! hand-written.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A `management.password` that cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PasswordError {
    /// Starts like an Argon2 PHC string but is not a valid one.
    #[error("management.password: malformed Argon2 hash (a PHC string such as \"$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>\"): {0}")]
    Argon2(String),
    /// Starts like a bcrypt hash but is not a valid one.
    #[error("management.password: malformed bcrypt hash (\"$2b$<cost>$<53 characters>\"): {0}")]
    Bcrypt(String),
    /// Making a new hash failed.
    #[error("cannot hash the password: {0}")]
    Hashing(String),
}

/// The configured password, as checked on every login.
#[derive(Clone)]
pub(crate) enum Password {
    /// A plain password: its SHA-256, so the comparison takes the same time whatever its length.
    Plain([u8; 32]),
    /// A validated Argon2 PHC string.
    Argon2(String),
    /// A validated bcrypt hash.
    Bcrypt(String),
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Password::Plain(_) => "Password::Plain(..)",
            Password::Argon2(_) => "Password::Argon2(..)",
            Password::Bcrypt(_) => "Password::Bcrypt(..)",
        })
    }
}

/// SHA-256 of `bytes`.
pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl Password {
    /// Reads `management.password`, telling a hash by its prefix and checking it whole, so a
    /// malformed one fails the plugin's start rather than every login.
    pub(crate) fn parse(value: &str) -> Result<Password, PasswordError> {
        if value.starts_with("$argon2") {
            let hash = argon2::PasswordHash::new(value).map_err(|e| PasswordError::Argon2(e.to_string()))?;
            argon2::Algorithm::try_from(hash.algorithm).map_err(|e| PasswordError::Argon2(e.to_string()))?;
            argon2::Params::try_from(&hash).map_err(|e| PasswordError::Argon2(e.to_string()))?;
            if hash.hash.is_none() {
                return Err(PasswordError::Argon2("no hash after the salt".into()));
            }
            return Ok(Password::Argon2(value.to_owned()));
        }
        if ["$2a$", "$2b$", "$2y$"].iter().any(|p| value.starts_with(p)) {
            let parts: bcrypt::HashParts = value.parse().map_err(|e: bcrypt::BcryptError| {
                PasswordError::Bcrypt(match e {
                    // Its own message would print the whole hash.
                    bcrypt::BcryptError::InvalidHash(_) => "wrong length or layout".into(),
                    other => other.to_string(),
                })
            })?;
            if !(4..=31).contains(&parts.get_cost()) {
                return Err(PasswordError::Bcrypt(format!("cost {} is not within 4..=31", parts.get_cost())));
            }
            // The salt and hash are only decoded when verifying: do it once now.
            bcrypt::verify(b"", value).map_err(|e| PasswordError::Bcrypt(e.to_string()))?;
            return Ok(Password::Bcrypt(value.to_owned()));
        }
        Ok(Password::Plain(sha256(value.as_bytes())))
    }

    /// Whether checking a password costs a slow hash (worth caching a success).
    pub(crate) fn is_hashed(&self) -> bool {
        !matches!(self, Password::Plain(_))
    }

    /// Whether `presented` is the password. Slow for a hash (by design): call it off the
    /// async threads.
    pub(crate) fn verify(&self, presented: &str) -> bool {
        match self {
            Password::Plain(digest) => sha256(presented.as_bytes()).ct_eq(digest).into(),
            Password::Argon2(phc) => argon2::PasswordHash::new(phc)
                .is_ok_and(|hash| Argon2::default().verify_password(presented.as_bytes(), &hash).is_ok()),
            Password::Bcrypt(hash) => bcrypt::verify(presented.as_bytes(), hash).unwrap_or(false),
        }
    }
}

/// A new Argon2id PHC string for `password` (random salt, the crate's default cost: 19 MiB,
/// 2 passes, 1 lane, as OWASP recommends), for `management.password`.
pub(crate) fn hash(password: &str) -> Result<String, PasswordError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| PasswordError::Hashing(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_argon2_hash_verifies_its_password_only() {
        let phc = hash("s3cret").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$"), "{phc}");
        let password = Password::parse(&phc).unwrap();
        assert!(password.is_hashed());
        assert!(password.verify("s3cret"));
        assert!(!password.verify("s3cret "));
        assert!(!password.verify(&phc), "the hash is not the password");
    }

    #[test]
    fn bcrypt_hashes_verify() {
        let hashed = bcrypt::hash("s3cret", 4).unwrap();
        let password = Password::parse(&hashed).unwrap();
        assert!(password.verify("s3cret"));
        assert!(!password.verify("public"));
    }

    #[test]
    fn plain_passwords_compare_whole() {
        let password = Password::parse("public").unwrap();
        assert!(!password.is_hashed());
        assert!(password.verify("public"));
        for wrong in ["", "publi", "public ", "Public"] {
            assert!(!password.verify(wrong), "{wrong:?}");
        }
    }

    #[test]
    fn malformed_hashes_name_the_key() {
        for bad in [
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ",
            "$argon2id$nonsense",
            "$argon2xx$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA",
            "$2b$12$short",
            "$2b$xx$abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyza",
        ] {
            let error = Password::parse(bad).unwrap_err().to_string();
            assert!(error.starts_with("management.password: malformed "), "{bad}: {error}");
        }
    }
}

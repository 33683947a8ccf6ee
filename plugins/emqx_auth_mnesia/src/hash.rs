//! Salted password hashes: EMQX's `sha256` (the default, SHA-256 of salt then password),
//! `pbkdf2` (PBKDF2-HMAC-SHA256) and `bcrypt`. Each stored hash says which algorithm and
//! parameters made it, so changing `password_hash` only affects passwords set afterwards.
//! All from RustCrypto's `sha2`/`pbkdf2` and the `bcrypt` crate; comparisons are constant
//! time (`subtle`, and `bcrypt::verify`'s own).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Bytes of random salt for `sha256` and `pbkdf2` (EMQX 4.3 uses 4).
const SALT_LEN: usize = 16;
/// Bytes of a PBKDF2 output.
const PBKDF2_LEN: usize = 32;

/// `password_hash`: the algorithm new passwords are hashed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// SHA-256 of salt and password (EMQX 4.3's default for `emqx_auth_mnesia`).
    #[default]
    Sha256,
    /// PBKDF2 with HMAC-SHA256, `pbkdf2_iterations` rounds.
    Pbkdf2,
    /// bcrypt, cost `bcrypt_cost`.
    Bcrypt,
}

impl Algorithm {
    /// The name `password_hash` gives it.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Pbkdf2 => "pbkdf2",
            Algorithm::Bcrypt => "bcrypt",
        }
    }
}

/// How to hash a new password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hasher {
    pub algorithm: Algorithm,
    pub pbkdf2_iterations: u32,
    pub bcrypt_cost: u32,
}

/// A stored password hash, with what is needed to check a password against it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "algorithm", rename_all = "lowercase")]
pub enum PasswordHash {
    /// Hex SHA-256 of `salt` then the password.
    Sha256 { salt: String, hash: String },
    /// Hex PBKDF2-HMAC-SHA256 of the password with `salt`, `iterations` rounds.
    Pbkdf2 { salt: String, iterations: u32, hash: String },
    /// The bcrypt string (`$2b$<cost>$<salt and hash>`).
    Bcrypt { hash: String },
}

/// The operating system gave no random bytes, or bcrypt refused its input.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("no random salt: {0}")]
    Random(getrandom::Error),
    #[error("bcrypt: {0}")]
    Bcrypt(#[from] bcrypt::BcryptError),
}

fn salt() -> Result<[u8; SALT_LEN], HashError> {
    let mut salt = [0u8; SALT_LEN];
    getrandom::getrandom(&mut salt).map_err(HashError::Random)?;
    Ok(salt)
}

fn sha256(salt: &[u8], password: &[u8]) -> [u8; 32] {
    let mut digest = Sha256::new();
    digest.update(salt);
    digest.update(password);
    digest.finalize().into()
}

fn pbkdf2(salt: &[u8], iterations: u32, password: &[u8]) -> [u8; PBKDF2_LEN] {
    let mut out = [0u8; PBKDF2_LEN];
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
    out
}

impl Hasher {
    /// Hashes `password` with a fresh random salt.
    pub fn hash(&self, password: &[u8]) -> Result<PasswordHash, HashError> {
        Ok(match self.algorithm {
            Algorithm::Sha256 => {
                let salt = salt()?;
                PasswordHash::Sha256 { salt: hex::encode(salt), hash: hex::encode(sha256(&salt, password)) }
            }
            Algorithm::Pbkdf2 => {
                let salt = salt()?;
                let iterations = self.pbkdf2_iterations;
                PasswordHash::Pbkdf2 {
                    salt: hex::encode(salt),
                    iterations,
                    hash: hex::encode(pbkdf2(&salt, iterations, password)),
                }
            }
            Algorithm::Bcrypt => PasswordHash::Bcrypt { hash: bcrypt::hash(password, self.bcrypt_cost)? },
        })
    }
}

impl PasswordHash {
    /// Whether `password` is the one this hash was made from. A malformed stored hash
    /// matches nothing.
    pub fn verify(&self, password: &[u8]) -> bool {
        let equal =
            |computed: &[u8], stored: &str| hex::decode(stored).is_ok_and(|stored| bool::from(computed.ct_eq(&stored)));
        match self {
            PasswordHash::Sha256 { salt, hash } => {
                hex::decode(salt).is_ok_and(|salt| equal(&sha256(&salt, password), hash))
            }
            PasswordHash::Pbkdf2 { salt, iterations, hash } => {
                hex::decode(salt).is_ok_and(|salt| equal(&pbkdf2(&salt, *iterations, password), hash))
            }
            PasswordHash::Bcrypt { hash } => bcrypt::verify(password, hash).unwrap_or(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hasher(algorithm: Algorithm) -> Hasher {
        Hasher { algorithm, pbkdf2_iterations: 1000, bcrypt_cost: 4 }
    }

    #[test]
    fn each_algorithm_accepts_the_password_and_refuses_others() {
        for algorithm in [Algorithm::Sha256, Algorithm::Pbkdf2, Algorithm::Bcrypt] {
            let stored = hasher(algorithm).hash(b"s3cret").unwrap();
            assert!(stored.verify(b"s3cret"), "{algorithm:?}");
            assert!(!stored.verify(b"s3cret "), "{algorithm:?}");
            assert!(!stored.verify(b""), "{algorithm:?}");
        }
    }

    #[test]
    fn the_same_password_gets_a_new_salt_each_time() {
        let h = hasher(Algorithm::Sha256);
        assert_ne!(h.hash(b"pw").unwrap(), h.hash(b"pw").unwrap());
    }

    #[test]
    fn sha256_is_salt_then_password_as_emqx() {
        let stored = PasswordHash::Sha256 {
            salt: hex::encode(b"salt"),
            // sha256("saltpassword")
            hash: "13601bda4ea78e55a07b98866d2be6be0744e3866f13c00c811cab608a28f322".to_owned(),
        };
        assert!(stored.verify(b"password"));
    }

    #[test]
    fn a_malformed_stored_hash_matches_nothing() {
        let stored = PasswordHash::Sha256 { salt: "zz".to_owned(), hash: "00".to_owned() };
        assert!(!stored.verify(b""));
        assert!(!PasswordHash::Bcrypt { hash: "not bcrypt".to_owned() }.verify(b"x"));
    }
}

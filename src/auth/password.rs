//! Password hashing: PBKDF2-HMAC-SHA256 through ring, with the parameters stored beside the hash
//! (`$pbkdf2-sha256$i=600000$<salt>$<hash>`) so the iteration count can be raised later without
//! breaking existing accounts: a hash with fewer iterations than configured is replaced at its
//! holder's next sign-in ([`needs_rehash`]).

use std::num::NonZeroU32;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};

/// OWASP's floor for PBKDF2-HMAC-SHA256; config may raise it, never lower it.
pub const MIN_ITERATIONS: u32 = 600_000;
const SALT_LEN: usize = 16;
const HASH_LEN: usize = 32;
pub const MIN_PASSWORD_CHARS: usize = 8;
pub const MAX_PASSWORD_CHARS: usize = 128;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PasswordError {
    #[error("password must be {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters")]
    Length,
    #[error("password must not be the same character repeated")]
    Trivial,
    #[error("the system random source failed")]
    Random,
    #[error("stored password hash is malformed")]
    Malformed,
}

/// Checks a new password against the policy before it is hashed.
pub fn check_policy(password: &str) -> Result<(), PasswordError> {
    let chars = password.chars().count();
    if !(MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&chars) {
        return Err(PasswordError::Length);
    }
    let mut it = password.chars();
    if let Some(first) = it.next()
        && it.all(|c| c == first)
    {
        return Err(PasswordError::Trivial);
    }
    Ok(())
}

/// Hashes a password with a fresh random salt. Slow on purpose: run it off the async workers.
pub fn hash(password: &str, iterations: u32) -> Result<String, PasswordError> {
    let iterations = iterations.max(MIN_ITERATIONS);
    let mut salt = [0u8; SALT_LEN];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| PasswordError::Random)?;
    let mut out = [0u8; HASH_LEN];
    let rounds = NonZeroU32::new(iterations).ok_or(PasswordError::Malformed)?;
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        rounds,
        &salt,
        password.as_bytes(),
        &mut out,
    );
    Ok(format!(
        "$pbkdf2-sha256$i={iterations}${}${}",
        STANDARD_NO_PAD.encode(salt),
        STANDARD_NO_PAD.encode(out)
    ))
}

/// Verifies a password against a stored hash in constant time (ring compares for us).
pub fn verify(password: &str, stored: &str) -> Result<bool, PasswordError> {
    let mut parts = stored.split('$');
    let (Some(""), Some("pbkdf2-sha256"), Some(params), Some(salt), Some(expected), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(PasswordError::Malformed);
    };
    let iterations: u32 = params
        .strip_prefix("i=")
        .and_then(|i| i.parse().ok())
        .ok_or(PasswordError::Malformed)?;
    let rounds = NonZeroU32::new(iterations).ok_or(PasswordError::Malformed)?;
    let salt = STANDARD_NO_PAD
        .decode(salt)
        .map_err(|_| PasswordError::Malformed)?;
    let expected = STANDARD_NO_PAD
        .decode(expected)
        .map_err(|_| PasswordError::Malformed)?;
    Ok(ring::pbkdf2::verify(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        rounds,
        &salt,
        password.as_bytes(),
        &expected,
    )
    .is_ok())
}

/// The iteration count recorded in a stored hash, for raising old hashes at the next login.
pub fn iterations_of(stored: &str) -> Option<u32> {
    stored.split('$').nth(2)?.strip_prefix("i=")?.parse().ok()
}

/// Whether a stored hash was made with fewer iterations than `configured` asks for now (and so is
/// replaced at the holder's next sign-in). A hash this node cannot read is left alone.
pub fn needs_rehash(stored: &str, configured: u32) -> bool {
    iterations_of(stored).is_some_and(|i| i < configured.max(MIN_ITERATIONS))
}

/// A hash that no password matches, verified against when the username is unknown so that timing
/// does not reveal which usernames exist.
pub fn decoy_hash() -> &'static str {
    "$pbkdf2-sha256$i=600000$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
}

/// A random password for accounts created without one; printed once, never stored in clear.
pub fn generate() -> Result<String, PasswordError> {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut bytes = [0u8; 20];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PasswordError::Random)?;
    Ok(bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect())
}

/// Runs PBKDF2 off the async workers, at most a few at once: it is slow on purpose, and a burst of
/// sign-ins or account creations must not starve the rest of the node.
pub struct Hasher {
    iterations: u32,
    permits: tokio::sync::Semaphore,
}

/// Why hashing did not happen.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error(transparent)]
    Password(#[from] PasswordError),
    #[error("the node is shutting down")]
    ShuttingDown,
}

impl Hasher {
    /// Hashes with `iterations` (raised to [`MIN_ITERATIONS`]), `concurrent` at a time.
    pub fn new(iterations: u32, concurrent: usize) -> Hasher {
        Hasher {
            iterations: iterations.max(MIN_ITERATIONS),
            permits: tokio::sync::Semaphore::new(concurrent.max(1)),
        }
    }

    pub fn iterations(&self) -> u32 {
        self.iterations
    }

    /// Checks a new password against the policy, then hashes it.
    pub async fn hash_new(&self, password: &crate::config::Secret) -> Result<String, HashError> {
        check_policy(password.expose())?;
        let given = password.expose().to_string();
        Ok(self
            .run(move |iterations| hash(&given, iterations))
            .await??)
    }

    /// Whether `given` matches `stored`; an unreadable stored hash matches nothing.
    pub async fn verify(&self, given: String, stored: String) -> Result<bool, HashError> {
        self.run(move |_| verify(&given, &stored).unwrap_or(false))
            .await
    }

    /// Hashes a password already known to be the holder's (no policy check: it was accepted when
    /// set), for [`needs_rehash`].
    pub async fn rehash(&self, given: String) -> Result<String, HashError> {
        Ok(self
            .run(move |iterations| hash(&given, iterations))
            .await??)
    }

    pub fn needs_rehash(&self, stored: &str) -> bool {
        needs_rehash(stored, self.iterations)
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(u32) -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| HashError::ShuttingDown)?;
        let iterations = self.iterations;
        tokio::task::spawn_blocking(move || work(iterations))
            .await
            .map_err(|_| HashError::ShuttingDown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hash_and_verify() {
        let stored = hash("correct horse", MIN_ITERATIONS).unwrap();
        assert!(stored.starts_with("$pbkdf2-sha256$i=600000$"));
        assert!(verify("correct horse", &stored).unwrap());
        assert!(!verify("correct horsf", &stored).unwrap());
        assert_eq!(iterations_of(&stored), Some(600_000));
        // Lower iteration requests are raised to the floor.
        assert_eq!(
            iterations_of(&hash("another one", 10).unwrap()),
            Some(600_000)
        );
        assert!(!verify("anything", decoy_hash()).unwrap());
        assert!(!needs_rehash(&stored, MIN_ITERATIONS));
        assert!(needs_rehash(&stored, 700_000));
        assert!(!needs_rehash("not a hash", 700_000));
        let a = hash("same password", MIN_ITERATIONS).unwrap();
        let b = hash("same password", MIN_ITERATIONS).unwrap();
        assert_ne!(a, b, "salted");
    }

    #[test]
    fn policy() {
        assert_eq!(check_policy("short"), Err(PasswordError::Length));
        assert_eq!(check_policy("aaaaaaaaaa"), Err(PasswordError::Trivial));
        assert!(check_policy("网格员密码2026").is_ok());
        assert_eq!(generate().unwrap().len(), 20);
    }

    proptest! {
        #[test]
        fn verify_never_panics_on_garbage(s in ".{0,120}") {
            let _ = verify("pw", &s);
            let _ = iterations_of(&s);
        }
    }
}

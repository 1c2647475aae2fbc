//! AES-256-GCM sealing with key rotation, for everything Keygate hands out or stores that must
//! not be readable or forgeable: encrypted cookie values and vaulted token data. The newest key
//! seals; every key opens, so rotating is "prepend a key, wait, drop the old one".
//!
//! A sealed value is `base64url(version | key id | nonce | ciphertext+tag)`. The key id (the first
//! four bytes of the key's SHA-256) picks the key to open with, so opening costs one decryption
//! whatever the number of keys. The caller's `context` is bound as associated data: a value
//! sealed for one cookie or token cannot be replayed as another.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

const VERSION: u8 = 1;
const KEY_ID_LEN: usize = 4;
const HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN;

/// Why a key cannot be used. Names the key's position, never its bytes.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// The key is not base64 of 32 bytes.
    #[error("key {0} must be 32 random bytes, base64-encoded (e.g. `openssl rand -base64 32`)")]
    Malformed(usize),
    /// No key was given.
    #[error("at least one key is needed")]
    Empty,
}

/// A sealed value that cannot be opened: tampered, truncated, or sealed under a key no longer held.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
#[error("the value cannot be decrypted")]
pub struct OpenError;

/// A ring of AES-256-GCM keys: the first seals, all open.
pub struct Sealer {
    keys: Vec<([u8; KEY_ID_LEN], LessSafeKey)>,
}

/// Keys never print.
impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealer({} keys)", self.keys.len())
    }
}

impl Sealer {
    /// Builds a ring from base64 keys (standard or URL-safe alphabet; surrounding whitespace,
    /// such as the newline `echo` leaves, is ignored), newest first.
    pub fn new<S: AsRef<str>>(keys: &[S]) -> Result<Sealer, KeyError> {
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        let keys = keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let k = k.as_ref().trim();
                let bytes = STANDARD
                    .decode(k)
                    .or_else(|_| URL_SAFE_NO_PAD.decode(k.trim_end_matches('=')))
                    .map_err(|_| KeyError::Malformed(i))?;
                let unbound = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| KeyError::Malformed(i))?;
                let mut id = [0; KEY_ID_LEN];
                id.copy_from_slice(&Sha256::digest(&bytes)[..KEY_ID_LEN]);
                Ok((id, LessSafeKey::new(unbound)))
            })
            .collect::<Result<_, _>>()?;
        Ok(Sealer { keys })
    }

    /// Seals `plaintext` under the newest key, bound to `context`.
    pub fn seal(&self, plaintext: &[u8], context: &[u8]) -> String {
        let (id, key) = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the operating system's random source failed");
        let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + AES_256_GCM.tag_len());
        out.push(VERSION);
        out.extend_from_slice(id);
        out.extend_from_slice(&nonce);
        let mut body = plaintext.to_vec();
        key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(context), &mut body)
            .expect("AES-GCM sealing fails only for inputs of many gigabytes");
        out.extend_from_slice(&body);
        URL_SAFE_NO_PAD.encode(out)
    }

    /// Opens a value [`Sealer::seal`] produced under any key of the ring, for the same `context`.
    pub fn open(&self, sealed: &str, context: &[u8]) -> Result<Vec<u8>, OpenError> {
        let raw = URL_SAFE_NO_PAD.decode(sealed).map_err(|_| OpenError)?;
        if raw.len() < HEADER_LEN + AES_256_GCM.tag_len() || raw[0] != VERSION {
            return Err(OpenError);
        }
        let (id, rest) = raw[1..].split_at(KEY_ID_LEN);
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let (_, key) = self.keys.iter().find(|(k, _)| k == id).ok_or(OpenError)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| OpenError)?;
        let mut body = body.to_vec();
        let plain = key
            .open_in_place(nonce, Aad::from(context), &mut body)
            .map_err(|_| OpenError)?;
        Ok(plain.to_vec())
    }
}

/// `n` random bytes from the operating system, URL-safe base64: session ids, cookie handles, CSRF
/// tokens and token ids.
pub fn random_token(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the operating system's random source failed");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Compares two secrets in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    const K2: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";

    #[test]
    fn round_trip_and_rotation() {
        let old = Sealer::new(&[K1]).unwrap();
        let sealed_old = old.seal(b"token", b"ctx");
        assert_eq!(old.open(&sealed_old, b"ctx").unwrap(), b"token");
        let rotated = Sealer::new(&[K2, K1]).unwrap();
        assert_eq!(
            rotated.open(&sealed_old, b"ctx").unwrap(),
            b"token",
            "old values still open"
        );
        let sealed_new = rotated.seal(b"token", b"ctx");
        assert_eq!(old.open(&sealed_new, b"ctx"), Err(OpenError), "the newest key seals");
        assert_eq!(Sealer::new(&[K2]).unwrap().open(&sealed_old, b"ctx"), Err(OpenError));
        assert_ne!(
            rotated.seal(b"token", b"ctx"),
            sealed_new,
            "every seal has its own nonce"
        );
    }

    #[test]
    fn tampering_and_other_contexts_fail() {
        let s = Sealer::new(&[K1]).unwrap();
        let sealed = s.seal(b"token", b"ctx");
        assert_eq!(s.open(&sealed, b"other"), Err(OpenError));
        let mut raw = URL_SAFE_NO_PAD.decode(&sealed).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        assert_eq!(s.open(&URL_SAFE_NO_PAD.encode(&raw), b"ctx"), Err(OpenError));
        for junk in ["", "a", "!!!", &sealed[..sealed.len() - 3]] {
            assert_eq!(s.open(junk, b"ctx"), Err(OpenError), "{junk:?}");
        }
    }

    #[test]
    fn bad_keys_are_named_by_position() {
        assert_eq!(Sealer::new::<&str>(&[]).unwrap_err(), KeyError::Empty);
        assert_eq!(Sealer::new(&[K1, "c2hvcnQ="]).unwrap_err(), KeyError::Malformed(1));
        assert!(
            Sealer::new(&[format!("{K1}\n")]).is_ok(),
            "a trailing newline is ignored"
        );
    }
}

//! What proves a session-chain link, one small strategy per `SessionChainPolicy.spec.proof`.
//! [`super::chain`] runs the same check for all three; a mode only decides how the next link is
//! computed, what a session registers at creation, and whether a request must be signed.
//!
//! - `hash`: `next = SHA256_hex(last)`. Anyone who saw the session id can compute every link.
//! - `hmac`: `next = HMAC-SHA256_hex(chain_key, last)`. The chain key is
//!   `HMAC-SHA256(secret, "keygate chain key\n" + session_id)`: derived, so every replica computes
//!   it from the request alone and the store never holds it; it is handed out once, at creation.
//! - `signature`: `next = SHA256_hex(last)`, and each request carries an ECDSA P-256 signature
//!   (IEEE P1363 `r||s`, as WebCrypto makes it) by the key registered at creation over
//!   [`signed_message`]. The store holds only the public key; the private one never leaves the
//!   browser.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keygate_crds::SecretSnapshot;
use keygate_crds::resources::session::{ChainProof, MIN_CHAIN_KEY_SECRET_BYTES, SessionChainPolicySpec};
use keygate_crds::snapshot::secret_id;
use ring::hmac;
use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
use sha2::{Digest, Sha256};

use crate::error::ProxyError;

/// Domain separation of chain keys from any other use of the secret.
const CHAIN_KEY_CONTEXT: &[u8] = b"keygate chain key\n";
/// First line of every signed message: a signature made for anything else never verifies here.
const SIGNATURE_CONTEXT: &str = "keygate-chain-v1";
/// An uncompressed P-256 point: `0x04 || x || y`, what WebCrypto's `exportKey('raw')` returns.
const PUBLIC_KEY_BYTES: usize = 65;
const CREATE_PUBLIC_KEY_HELP: &str = r#"the body must carry "public_key": the base64url (no padding) of the 65-byte uncompressed P-256 public key, as WebCrypto exportKey('raw') returns it"#;

/// One policy's proof mode, ready to serve.
pub enum Proof {
    /// `SHA256_hex(last)`.
    Hash,
    /// `HMAC-SHA256_hex(chain_key, last)`; holds the policy's secret, never a chain key.
    Hmac(hmac::Key),
    /// `SHA256_hex(last)` plus a signature by the session's registered key.
    Signature,
}

/// What a new session adds: `tail` is appended to its store record after the link (the public
/// key in `signature` mode); `chain_key` goes into the create answer, once (`hmac` mode).
pub struct Registration {
    /// Appended to the record; empty but in `signature` mode.
    pub tail: Vec<u8>,
    /// The `hmac` chain key, 64 lowercase hex digits, for the create answer only.
    pub chain_key: Option<String>,
}

impl Proof {
    /// The policy's mode. Fails with `(field, message)`; compile() refuses the same cases, so
    /// this only guards a hand-written snapshot.
    pub fn build(
        spec: &SessionChainPolicySpec,
        secrets: &SecretSnapshot,
        namespace: &str,
    ) -> Result<Proof, (&'static str, String)> {
        match spec.proof {
            ChainProof::Hash => Ok(Proof::Hash),
            ChainProof::Signature => Ok(Proof::Signature),
            ChainProof::Hmac => {
                let field = "chainKeySecretRef";
                let r = spec
                    .chain_key_secret_ref
                    .as_ref()
                    .ok_or((field, "proof: hmac needs chainKeySecretRef".to_string()))?;
                let id = secret_id(namespace, &r.name, &r.key);
                let secret = secrets
                    .values
                    .get(&id)
                    .ok_or_else(|| (field, format!("secret {id} is missing from the secret snapshot")))?;
                if secret.len() < MIN_CHAIN_KEY_SECRET_BYTES {
                    return Err((
                        field,
                        format!("secret {id} must hold at least {MIN_CHAIN_KEY_SECRET_BYTES} bytes"),
                    ));
                }
                Ok(Proof::Hmac(hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes())))
            }
        }
    }

    /// The link that must follow `last` in session `session_id`, as 64 lowercase hex digits.
    pub fn next(&self, session_id: &[u8], last: &[u8]) -> String {
        match self {
            Proof::Hash | Proof::Signature => hex::encode(Sha256::digest(last)),
            Proof::Hmac(secret) => {
                let chain_key = hmac::Key::new(hmac::HMAC_SHA256, chain_key(secret, session_id).as_ref());
                hex::encode(hmac::sign(&chain_key, last))
            }
        }
    }

    /// What session `session_id` registers, from the create body's `public_key`.
    pub fn register(&self, session_id: &[u8], public_key: Option<&str>) -> Result<Registration, ProxyError> {
        Ok(match self {
            Proof::Hash => Registration {
                tail: Vec::new(),
                chain_key: None,
            },
            Proof::Hmac(secret) => Registration {
                tail: Vec::new(),
                chain_key: Some(hex::encode(chain_key(secret, session_id))),
            },
            Proof::Signature => {
                let raw = public_key
                    .and_then(|k| URL_SAFE_NO_PAD.decode(k).ok())
                    // Only the shape can be checked here: ring parses the point when it verifies.
                    .filter(|k| k.len() == PUBLIC_KEY_BYTES && k[0] == 0x04)
                    .ok_or(ProxyError::BadRequest(CREATE_PUBLIC_KEY_HELP))?;
                Registration {
                    tail: [b"\n", URL_SAFE_NO_PAD.encode(raw).as_bytes()].concat(),
                    chain_key: None,
                }
            }
        })
    }

    /// Whether each request must be signed, which needs its body and the stored public key.
    pub fn signs(&self) -> bool {
        matches!(self, Proof::Signature)
    }
}

fn chain_key(secret: &hmac::Key, session_id: &[u8]) -> hmac::Tag {
    hmac::sign(secret, &[CHAIN_KEY_CONTEXT, session_id].concat())
}

/// What a `signature`-mode request signs: `keygate-chain-v1\n<METHOD>\n<path and query as
/// sent>\n<SHA256_hex(body)>\n<x-request-id>`. Every part an attacker could change to reuse a
/// signature elsewhere is in it; the link makes each signature good for one request only.
pub fn signed_message(method: &str, target: &str, body: &[u8], link: &[u8]) -> Vec<u8> {
    let digest = hex::encode(Sha256::digest(body));
    [
        SIGNATURE_CONTEXT.as_bytes(),
        b"\n",
        method.as_bytes(),
        b"\n",
        target.as_bytes(),
        b"\n",
        digest.as_bytes(),
        b"\n",
        link,
    ]
    .concat()
}

/// Checks `signature` (base64url, no padding, 64 bytes `r||s`) over `message` with the public
/// key in a record's `tail` (as [`Proof::register`] made it).
pub fn verify(tail: &[u8], message: &[u8], signature: &[u8]) -> Result<(), ProxyError> {
    let public_key = tail
        .strip_prefix(b"\n")
        .and_then(|k| URL_SAFE_NO_PAD.decode(k).ok())
        .ok_or(ProxyError::InvalidSignature)?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| ProxyError::InvalidSignature)?;
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, public_key)
        .verify(message, &signature)
        .map_err(|_| ProxyError::InvalidSignature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

    #[test]
    fn hmac_links_follow_the_documented_derivation() {
        let secret = "s".repeat(32);
        let proof = Proof::Hmac(hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()));
        let reg = proof.register(b"sid", None).unwrap();
        let key = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()),
            b"keygate chain key\nsid",
        );
        assert_eq!(reg.chain_key.as_deref(), Some(hex::encode(key).as_str()));
        let expected = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key.as_ref()), b"sid");
        assert_eq!(proof.next(b"sid", b"sid"), hex::encode(expected));
        assert_ne!(proof.next(b"sid", b"sid"), Proof::Hash.next(b"sid", b"sid"));
        assert!(reg.tail.is_empty(), "the chain key is never stored");
    }

    #[test]
    fn signatures_verify_only_over_what_was_signed() {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        let public = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        let tail = Proof::Signature.register(b"sid", Some(&public)).unwrap().tail;
        let message = signed_message("POST", "/a?b=1", b"{}", b"link");
        let sig = URL_SAFE_NO_PAD.encode(pair.sign(&rng, &message).unwrap());
        assert_eq!(verify(&tail, &message, sig.as_bytes()), Ok(()));
        let other = signed_message("POST", "/a?b=2", b"{}", b"link");
        assert_eq!(verify(&tail, &other, sig.as_bytes()), Err(ProxyError::InvalidSignature));
        assert_eq!(
            verify(&tail, &message, b"not base64!"),
            Err(ProxyError::InvalidSignature)
        );
        for bad in [None, Some("AAAA"), Some(&public[1..]), Some("!!")] {
            let err = Proof::Signature.register(b"sid", bad).err().unwrap();
            assert_eq!(err.code(), "BAD_REQUEST");
            assert!(err.to_string().contains("public_key"), "{err}");
        }
    }
}

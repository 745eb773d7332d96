//! Access tokens are JWTs signed with Ed25519 (`EdDSA`), so other services verify them with the public key
//! alone; only `EdDSA` is accepted when verifying, which rules out algorithm-confusion attacks (`none`, or an
//! HMAC keyed with the public key). Refresh tokens are random, opaque, and stored only as SHA-256 hashes.
//!
//! Verified access tokens are remembered until they expire: a client sends the same token with every request
//! for its whole lifetime, and checking the Ed25519 signature again each time was about 7 % of all the CPU of a
//! message-send run. The cache is keyed by the whole token, signature included, so only the exact bytes that
//! were verified hit it; a hit is re-checked against the expiry, so a cached token is refused from the same
//! second a fresh verification would refuse it.

use crate::config::AuthSettings;
use anyhow::Context as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use quick_cache::sync::Cache;
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::time::{SystemTime, UNIX_EPOCH};

/// Claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Workspace id of the user.
    pub ws: i64,
    /// Issuer.
    pub iss: String,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
    /// Expires at, seconds since the epoch.
    pub exp: u64,
}

/// How many verified access tokens are remembered: one per active client is enough, and the cache stays a few
/// MiB at most (a token and its claims are a few hundred bytes). Beyond it, the least useful entries are evicted
/// and their tokens simply verified again.
const VERIFIED_TOKENS: usize = 10_000;

/// Signing and verification keys.
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    issuer: String,
    /// Access token lifetime, seconds.
    pub access_ttl_seconds: u64,
    /// Tokens whose signature, issuer and expiry were checked, with their claims.
    verified: Cache<String, Claims>,
}

fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl JwtKeys {
    /// Reads the PEM files named in `settings`; an unset path is named with how to make the keys.
    pub fn load(settings: &AuthSettings) -> anyhow::Result<Self> {
        if settings.private_key_path.as_os_str().is_empty() {
            anyhow::bail!(
                "auth.private_key_path is required: an Ed25519 PKCS#8 PEM file (`fechatter_server gen-keys DIR` \
                 writes a pair)"
            );
        }
        if settings.public_key_path.as_os_str().is_empty() {
            anyhow::bail!("auth.public_key_path is required: the matching Ed25519 public key PEM file");
        }
        let private = std::fs::read(&settings.private_key_path).with_context(|| {
            format!(
                "Failed to read auth.private_key_path {}",
                settings.private_key_path.display()
            )
        })?;
        let public = std::fs::read(&settings.public_key_path).with_context(|| {
            format!(
                "Failed to read auth.public_key_path {}",
                settings.public_key_path.display()
            )
        })?;
        Self::from_pem(&private, &public, &settings.issuer, settings.access_token_ttl_seconds)
    }

    /// Keys from PEM bytes.
    pub fn from_pem(private: &[u8], public: &[u8], issuer: &str, access_ttl_seconds: u64) -> anyhow::Result<Self> {
        Ok(Self {
            encoding: EncodingKey::from_ed_pem(private)
                .context("auth.private_key_path is not an Ed25519 PKCS#8 PEM")?,
            decoding: DecodingKey::from_ed_pem(public)
                .context("auth.public_key_path is not an Ed25519 public key PEM")?,
            issuer: issuer.to_owned(),
            access_ttl_seconds,
            verified: Cache::new(VERIFIED_TOKENS),
        })
    }

    /// A new access token for `user_id` in `workspace_id`.
    pub fn issue(&self, user_id: i64, workspace_id: i64) -> anyhow::Result<String> {
        let iat = now_seconds();
        let claims = Claims {
            sub: user_id.to_string(),
            ws: workspace_id,
            iss: self.issuer.clone(),
            iat,
            exp: iat + self.access_ttl_seconds,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &self.encoding).context("Failed to sign token")
    }

    /// Verifies signature, algorithm, issuer and expiry (no leeway); a token verified before is only checked
    /// for expiry.
    pub fn verify(&self, token: &str) -> Result<Claims, jsonwebtoken::errors::Error> {
        if let Some(claims) = self.verified.get(token)
            && claims.exp >= now_seconds()
        {
            return Ok(claims);
        }
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[&self.issuer]);
        validation.leeway = 0;
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)?.claims;
        self.verified.insert(token.to_owned(), claims.clone());
        Ok(claims)
    }
}

/// A new random opaque token (256 bits, hex): refresh tokens and workspace invitations.
pub fn new_opaque_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// What is stored for an opaque token: its SHA-256, so a database leak yields no usable tokens.
pub fn hash_opaque_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A fresh Ed25519 key pair as (PKCS#8 private PEM, SPKI public PEM), for tests and development set-up.
pub fn generate_key_pair() -> anyhow::Result<(String, String)> {
    use ed25519_dalek::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _, spki::der::pem::LineEnding};
    let signing = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
    let private = signing.to_pkcs8_pem(LineEnding::LF).context("encode private key")?;
    let public = signing
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .context("encode public key")?;
    Ok((private.to_string(), public))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_key_paths_are_named_with_how_to_make_the_keys() {
        let settings = crate::config::AuthSettings {
            private_key_path: Default::default(),
            public_key_path: "/k/public.pem".into(),
            access_token_ttl_seconds: 60,
            refresh_token_ttl_seconds: 60,
            issuer: "fechatter".into(),
        };
        let err = JwtKeys::load(&settings).err().expect("refused").to_string();
        assert!(
            err.contains("auth.private_key_path") && err.contains("gen-keys"),
            "{err}"
        );
    }

    fn keys(ttl: u64) -> JwtKeys {
        let (private, public) = generate_key_pair().expect("keys");
        JwtKeys::from_pem(private.as_bytes(), public.as_bytes(), "fechatter", ttl).expect("valid pem")
    }

    #[test]
    fn an_issued_token_verifies_with_its_claims() {
        let k = keys(60);
        let claims = k.verify(&k.issue(42, 7).expect("issue")).expect("valid");
        assert_eq!(
            (claims.sub.as_str(), claims.ws, claims.iss.as_str()),
            ("42", 7, "fechatter")
        );
    }

    #[test]
    fn a_token_signed_by_another_key_is_refused() {
        let (a, b) = (keys(60), keys(60));
        assert!(b.verify(&a.issue(1, 1).expect("issue")).is_err());
    }

    #[test]
    fn a_tampered_token_is_refused() {
        let k = keys(60);
        let token = k.issue(1, 1).expect("issue");
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        // Swap in claims for another user, keeping the original signature.
        let other = k.issue(2, 1).expect("issue");
        parts[1] = other.split('.').nth(1).expect("claims").to_owned();
        assert!(k.verify(&parts.join(".")).is_err());
    }

    #[test]
    fn an_expired_token_is_refused() {
        let k = keys(0);
        let token = k.issue(1, 1).expect("issue");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert!(k.verify(&token).is_err());
    }

    #[test]
    fn a_remembered_token_is_refused_once_expired() {
        let k = keys(1);
        let token = k.issue(1, 1).expect("issue");
        k.verify(&token).expect("valid, and now remembered");
        // exp = iat + 1: at least one whole second past it.
        std::thread::sleep(std::time::Duration::from_millis(2100));
        assert!(k.verify(&token).is_err(), "an expired token was served from the cache");
    }

    #[test]
    fn a_remembered_token_does_not_vouch_for_a_tampered_copy() {
        let k = keys(60);
        let token = k.issue(1, 1).expect("issue");
        k.verify(&token).expect("valid");
        let other = k.issue(2, 1).expect("issue");
        let mut parts: Vec<&str> = token.split('.').collect();
        parts[1] = other.split('.').nth(1).expect("claims");
        assert!(k.verify(&parts.join(".")).is_err());
        assert_eq!(k.verify(&token).expect("still valid").sub, "1");
    }

    #[test]
    fn the_none_algorithm_is_refused() {
        let k = keys(60);
        let token = k.issue(1, 1).expect("issue");
        let claims = token.split('.').nth(1).expect("claims");
        // {"alg":"none","typ":"JWT"}
        let forged = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{claims}.");
        assert!(k.verify(&forged).is_err());
    }

    #[test]
    fn refresh_tokens_are_random_and_stored_hashed() {
        let (a, b) = (new_opaque_token(), new_opaque_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_ne!(hash_opaque_token(&a), a);
        assert_eq!(hash_opaque_token(&a), hash_opaque_token(&a));
    }
}

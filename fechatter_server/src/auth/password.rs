//! Argon2id password hashing, run on the blocking pool: a hash takes tens of milliseconds of CPU, which would
//! stall every other request on an async worker thread.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng};

/// Hashes `password` (PHC string with salt and parameters).
pub async fn hash(password: String) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| anyhow::anyhow!("failed to hash password: {e}"))
    })
    .await?
}

/// True when `password` matches `phc`. A malformed stored hash counts as no match.
pub async fn verify(password: String, phc: String) -> anyhow::Result<bool> {
    Ok(tokio::task::spawn_blocking(move || {
        PasswordHash::new(&phc)
            .map(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
            .unwrap_or(false)
    })
    .await?)
}

/// A valid hash of a random password, verified against when the e-mail is unknown, so that an unknown e-mail
/// and a wrong password take the same time and answer the same 401.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(uuid::Uuid::new_v4().as_bytes(), &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hash_verifies_its_password_only() {
        let phc = hash("password123".into()).await.expect("hash");
        assert!(phc.starts_with("$argon2id$"));
        assert!(verify("password123".into(), phc.clone()).await.expect("verify"));
        assert!(!verify("password124".into(), phc).await.expect("verify"));
        assert!(!verify("x".into(), "not a hash".into()).await.expect("verify"));
        assert!(!verify("x".into(), decoy_hash().to_owned()).await.expect("verify"));
    }
}

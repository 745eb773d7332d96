//! Argon2id password hashing, run on the blocking pool: a hash takes tens of milliseconds of CPU, which would
//! stall every other request on an async worker thread.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng};
use tokio::sync::Semaphore;

/// Hashes computed at once; the others wait their turn. Each takes ~19 MiB and tens of milliseconds of a core,
/// so more at once only add memory (a burst of sign-ins from many addresses could take gigabytes) and take the
/// blocking threads that file uploads and downloads also run on.
const MAX_CONCURRENT_HASHES: usize = 8;
static HASHING: Semaphore = Semaphore::const_new(MAX_CONCURRENT_HASHES);

/// Runs `work` on the blocking pool, at most [`MAX_CONCURRENT_HASHES`] at once.
async fn gated<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
    let turn = HASHING.acquire().await?;
    // The turn ends with the work, not with this future: a request dropped by its client leaves the hash running.
    Ok(tokio::task::spawn_blocking(move || {
        let _turn = turn;
        work()
    })
    .await?)
}

/// Hashes `password` (PHC string with salt and parameters).
pub async fn hash(password: String) -> anyhow::Result<String> {
    gated(move || {
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
    gated(move || {
        PasswordHash::new(&phc)
            .map(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
            .unwrap_or(false)
    })
    .await
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

    #[tokio::test]
    async fn no_more_than_the_limit_of_hashes_run_at_once() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::time::Duration;
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let work = |pause_ms: u64| {
            let (running, most) = (running.clone(), most.clone());
            gated(move || {
                most.fetch_max(running.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(pause_ms));
                running.fetch_sub(1, Ordering::SeqCst);
            })
        };
        // Requests abandoned by their clients while hashing: their hashes go on, and so must their turns.
        let abandoned = (0..MAX_CONCURRENT_HASHES).map(|_| tokio::time::timeout(Duration::from_millis(5), work(100)));
        futures::future::join_all(abandoned).await;
        for done in futures::future::join_all((0..3 * MAX_CONCURRENT_HASHES).map(|_| work(20))).await {
            done.expect("ran");
        }
        // Other tests of this process may hold turns meanwhile, so at most the limit, and more than one.
        let most = most.load(Ordering::SeqCst);
        assert!((2..=MAX_CONCURRENT_HASHES).contains(&most), "{most} at once");
    }
}

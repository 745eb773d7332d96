//! Authentication: Argon2id password hashes ([`password`]), Ed25519-signed access tokens and rotating refresh
//! tokens ([`tokens`]), refresh-token families in PostgreSQL ([`refresh`]), the deletion of expired ones
//! ([`prune`]), and the [`AuthUser`] extractor every protected route takes.

pub mod extractor;
pub mod password;
pub mod prune;
pub mod refresh;
pub mod tokens;

pub use extractor::{AuthUser, bearer_token};
pub use tokens::{Claims, JwtKeys};

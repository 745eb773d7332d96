//! Typed settings of `fechatter_server`, loaded from `chat.yml` and `FECHATTER__…` environment variables.
//!
//! The shipped `chat.yml` is compiled in as the defaults, so a deployment's file only needs the keys it changes.

use fechatter_service::ConfigError;
use fechatter_service::client_addr::TrustedProxies;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The shipped configuration file, which doubles as the defaults.
pub const DEFAULTS: &str = include_str!("../chat.yml");

/// Most `database.send_writers`: beyond a few, batches only get smaller (see `chat::send_queue`).
pub const MAX_SEND_WRITERS: u32 = 16;

/// Prefix of the environment variables that override keys.
pub const ENV_PREFIX: &str = "FECHATTER";
/// Environment variable naming the configuration file.
pub const CONFIG_PATH_VAR: &str = "FECHATTER_CONFIG";

/// Everything `fechatter_server` can be configured with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The HTTP API.
    pub server: ServerSettings,
    /// PostgreSQL.
    pub database: DatabaseSettings,
    /// Token signing.
    pub auth: AuthSettings,
    /// Feature switches (the seed document's `features` section).
    pub features: Features,
    /// NATS connection.
    pub messaging: MessagingSettings,
    /// The analytics outbox relay.
    pub analytics: AnalyticsSettings,
    /// Uploaded files.
    pub files: FileSettings,
}

/// The HTTP API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Address to bind.
    pub host: String,
    /// Port to bind (0 picks a free one, for tests).
    pub port: u16,
    /// Largest JSON request body.
    pub max_body_bytes: usize,
    /// Origins allowed by CORS.
    pub cors_origins: Vec<String>,
    /// Sign-in and sign-up attempts per client address per minute.
    pub auth_rate_limit_per_minute: u32,
    /// Reverse proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: TrustedProxies,
}

/// PostgreSQL.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// Connection URL (credentials never logged).
    pub url: String,
    /// Pool size.
    pub max_connections: u32,
    /// Connections that write message sends, each a batch at a time (see `chat::send_queue`), besides the pool.
    pub send_writers: u32,
}

/// Token signing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// Ed25519 private key, PKCS#8 PEM file.
    pub private_key_path: PathBuf,
    /// Ed25519 public key, SPKI PEM file.
    pub public_key_path: PathBuf,
    /// Lifetime of access tokens, seconds.
    pub access_token_ttl_seconds: u64,
    /// Lifetime of refresh tokens, seconds.
    pub refresh_token_ttl_seconds: u64,
    /// `iss` claim of access tokens.
    pub issuer: String,
}

/// Feature switches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Features {
    /// Analytics events.
    pub messaging: MessagingFeature,
}

/// The analytics feature switch.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessagingFeature {
    /// false: write no analytics events.
    pub enabled: bool,
}

/// NATS connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessagingSettings {
    /// NATS server URL.
    pub nats_url: String,
}

/// The analytics outbox relay.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalyticsSettings {
    /// Outbox rows published per round.
    pub batch_size: usize,
    /// Longest wait between rounds, milliseconds.
    pub flush_interval_ms: u64,
    /// Published and unacknowledged events, at most.
    pub max_in_flight: usize,
    /// Wait for one JetStream acknowledgement, milliseconds.
    pub ack_timeout_ms: u64,
}

/// Uploaded files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    /// Storage directory.
    pub dir: PathBuf,
    /// Largest upload, bytes.
    pub max_upload_bytes: usize,
    /// Most bytes of files one workspace may store (a file stored already costs nothing more).
    pub max_workspace_bytes: u64,
}

impl Settings {
    /// Loads the defaults, the file named by `FECHATTER_CONFIG` (if set) and the environment, then validates.
    pub fn from_env() -> Result<Self, ConfigError> {
        let path = std::env::var_os(CONFIG_PATH_VAR).map(PathBuf::from);
        Self::load(path.as_deref(), std::env::vars())
    }

    /// Loads the defaults, `path` and the overrides in `vars`, then validates.
    pub fn load(path: Option<&Path>, vars: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let settings: Self = fechatter_service::load(DEFAULTS, path, ENV_PREFIX, vars)?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| {
            Err(ConfigError::Validation {
                key: key.to_owned(),
                message: message.to_owned(),
            })
        };
        if self.analytics.batch_size == 0 {
            return invalid("analytics.batch_size", "must be at least 1");
        }
        if self.analytics.flush_interval_ms == 0 {
            return invalid("analytics.flush_interval_ms", "must be at least 1");
        }
        if self.analytics.max_in_flight == 0 || self.analytics.max_in_flight >= 5000 {
            return invalid("analytics.max_in_flight", "must be between 1 and 4999");
        }
        if self.database.max_connections == 0 {
            return invalid("database.max_connections", "must be at least 1");
        }
        if !(1..=MAX_SEND_WRITERS).contains(&self.database.send_writers) {
            return invalid(
                "database.send_writers",
                &format!("must be between 1 and {MAX_SEND_WRITERS}"),
            );
        }
        if self.files.max_workspace_bytes == 0 {
            return invalid("files.max_workspace_bytes", "must be at least 1");
        }
        if self.auth.access_token_ttl_seconds == 0 || self.auth.refresh_token_ttl_seconds == 0 {
            return invalid("auth.access_token_ttl_seconds", "token lifetimes must be positive");
        }
        Ok(())
    }

    /// The relay's flush interval.
    pub fn flush_interval(&self) -> Duration {
        Duration::from_millis(self.analytics.flush_interval_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Vec<(String, String)> {
        vec![
            ("FECHATTER__AUTH__PRIVATE_KEY_PATH".into(), "/k/private.pem".into()),
            ("FECHATTER__AUTH__PUBLIC_KEY_PATH".into(), "/k/public.pem".into()),
        ]
    }

    #[test]
    fn shipped_file_matches_the_seed_once_keys_are_given() {
        let s = Settings::load(None, keys()).expect("valid");
        assert_eq!(s.server.port, 6688);
        assert_eq!((s.analytics.batch_size, s.analytics.flush_interval_ms), (100, 5000));
        assert!(s.features.messaging.enabled);
        assert_eq!(s.messaging.nats_url, "nats://localhost:4222");
    }

    #[test]
    fn settings_load_without_signing_keys_for_the_commands_that_need_none() {
        // `seed` and `analytics-config` sign nothing; the server names the missing keys when it loads them.
        let s = Settings::load(None, Vec::new()).expect("valid without keys");
        assert!(s.auth.private_key_path.as_os_str().is_empty());
    }

    #[test]
    fn send_writers_outside_1_to_16_are_refused_by_name() {
        assert_eq!(Settings::load(None, keys()).expect("valid").database.send_writers, 1);
        for writers in ["0", "17"] {
            let mut vars = keys();
            vars.push(("FECHATTER__DATABASE__SEND_WRITERS".into(), writers.into()));
            let err = Settings::load(None, vars).expect_err("out of range");
            assert!(err.to_string().contains("database.send_writers"), "{err}");
        }
        let mut vars = keys();
        vars.push(("FECHATTER__DATABASE__SEND_WRITERS".into(), "4".into()));
        assert_eq!(Settings::load(None, vars).expect("valid").database.send_writers, 4);
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let mut vars = keys();
        vars.push(("FECHATTER__FEATURES__MESSAGING__ENABLE".into(), "true".into()));
        let err = Settings::load(None, vars).expect_err("unknown");
        assert!(err.to_string().contains("features.messaging.enable"), "{err}");
    }
}

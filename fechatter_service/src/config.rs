//! Configuration loading shared by `fechatter_server` and `analytics_server`.
//!
//! A service's settings come from one YAML file, then from environment variables that override any key:
//! `PREFIX__SECTION__KEY=value` (double underscores separate levels, so keys keep their single underscores;
//! `ANALYTICS__INTEGRATIONS__MESSAGING__NATS_URL` overrides `integrations.messaging.nats_url`).
//!
//! The merged tree is deserialized into the service's typed structs, which use `deny_unknown_fields`, through
//! `serde_path_to_error`, so a misspelt or invalid key stops start-up with a message naming the full key and,
//! for overrides, the environment variable it came from.

use serde::de::DeserializeOwned;
use serde_norway::{Mapping, Value};
use std::path::{Path, PathBuf};

/// Why a configuration could not be loaded. Every variant names the file, variable or key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("failed to read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid YAML: {source}")]
    Parse { path: PathBuf, source: serde_norway::Error },
    #[error("environment variable {variable} names no key (expected {prefix}__SECTION__KEY)")]
    EmptyEnvKey { variable: String, prefix: String },
    #[error("environment variable {variable} overrides `{key}`, but `{parent}` is not a section")]
    NotASection {
        variable: String,
        key: String,
        parent: String,
    },
    #[error("invalid configuration key `{key}`{origin}: {message}")]
    Invalid {
        key: String,
        origin: String,
        message: String,
    },
    #[error("invalid value for `{key}`: {message}")]
    Validation { key: String, message: String },
}

/// Loads the service's settings: `defaults` (the YAML shipped with the service, compiled in), then the file at
/// `path` if one is given (its keys replace the defaults'), then the `prefix__…` environment overrides in `vars`.
///
/// `vars` is passed in (usually `std::env::vars()`) so tests can supply their own environment.
pub fn load<T: DeserializeOwned>(
    defaults: &str,
    path: Option<&Path>,
    prefix: &str,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError> {
    let mut tree = parse(defaults, Path::new("<built-in defaults>"))?;
    if let Some(path) = path {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        merge(&mut tree, parse(&text, path)?);
    }
    from_tree(tree, prefix, vars)
}

fn parse(text: &str, path: &Path) -> Result<Value, ConfigError> {
    if text.trim().is_empty() {
        return Ok(Value::Mapping(Mapping::new()));
    }
    serde_norway::from_str(text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// Deep-merges `overlay` into `base`: sections merge key by key, anything else replaces.
fn merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Mapping(base), Value::Mapping(overlay)) => {
            for (key, value) in overlay {
                match base.get_mut(&key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, overlay) => *base = overlay,
    }
}

/// Like [`load`], starting from an already parsed tree (the service's defaults when no file is given).
pub fn from_tree<T: DeserializeOwned>(
    mut tree: Value,
    prefix: &str,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError> {
    let mut overridden = Vec::new();
    let marker = format!("{prefix}__");
    let mut vars: Vec<(String, String)> = vars.into_iter().filter(|(name, _)| name.starts_with(&marker)).collect();
    // Sorted so that the outcome does not depend on the order the OS lists variables in.
    vars.sort();
    for (variable, raw) in vars {
        let path: Vec<String> = variable[marker.len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::EmptyEnvKey {
                variable,
                prefix: prefix.to_owned(),
            });
        }
        set_path(&mut tree, &path, &raw, &variable)?;
        overridden.push((path.join("."), variable));
    }
    serde_path_to_error::deserialize(tree).map_err(|err| {
        let key = err.path().to_string();
        let origin = overridden
            .iter()
            .find(|(k, _)| key.starts_with(k.as_str()) || k.starts_with(&key))
            .map(|(_, variable)| format!(" (from environment variable {variable})"))
            .unwrap_or_default();
        ConfigError::Invalid {
            key,
            origin,
            message: err.into_inner().to_string(),
        }
    })
}

/// Sets `path` in `tree` to `raw`, creating sections on the way.
///
/// The new value keeps the type of the value it replaces when that was a string (so a password of `12345`
/// stays a string) or a list (comma-separated items); otherwise the text is read as a YAML scalar (`true`,
/// `100`, `2.5`, or a string).
fn set_path(tree: &mut Value, path: &[String], raw: &str, variable: &str) -> Result<(), ConfigError> {
    let mut node = tree;
    for (depth, part) in path.iter().enumerate() {
        if node.is_null() {
            *node = Value::Mapping(Mapping::new());
        }
        let Value::Mapping(map) = node else {
            return Err(ConfigError::NotASection {
                variable: variable.to_owned(),
                key: path.join("."),
                parent: path[..depth].join("."),
            });
        };
        node = map.entry(Value::String(part.clone())).or_insert(Value::Null);
    }
    *node = match node {
        Value::String(_) => Value::String(raw.to_owned()),
        // Lists come comma-separated: FECHATTER__SERVER__CORS_ORIGINS=https://a.example,https://b.example
        Value::Sequence(_) => Value::Sequence(
            raw.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(scalar)
                .collect(),
        ),
        _ => scalar(raw),
    };
    Ok(())
}

/// Reads an environment value as a YAML scalar, falling back to the plain string.
fn scalar(raw: &str) -> Value {
    if raw.is_empty() {
        return Value::String(String::new());
    }
    match serde_norway::from_str::<Value>(raw) {
        Ok(value @ (Value::Bool(_) | Value::Number(_))) => value,
        _ => Value::String(raw.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        name: String,
        batch_size: u32,
        inner: Inner,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        enabled: bool,
        password: String,
    }

    fn tree() -> Value {
        serde_norway::from_str("name: a\nbatch_size: 1\ninner:\n  enabled: false\n  password: x\n").expect("valid yaml")
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn environment_overrides_any_key_with_typed_values() {
        let cfg: Outer = from_tree(
            tree(),
            "APP",
            env(&[
                ("APP__BATCH_SIZE", "500"),
                ("APP__INNER__ENABLED", "true"),
                ("APP__INNER__PASSWORD", "12345"),
                ("OTHER__NAME", "ignored"),
            ]),
        )
        .expect("valid config");
        assert_eq!(cfg.batch_size, 500);
        assert!(cfg.inner.enabled);
        assert_eq!(cfg.inner.password, "12345");
        assert_eq!(cfg.name, "a");
    }

    #[test]
    fn unknown_key_in_the_environment_is_named_with_its_variable() {
        let err = from_tree::<Outer>(tree(), "APP", env(&[("APP__INNER__PASWORD", "x")])).expect_err("unknown key");
        let text = err.to_string();
        assert!(text.contains("inner.pasword"), "{text}");
        assert!(text.contains("APP__INNER__PASWORD"), "{text}");
    }

    #[test]
    fn invalid_value_names_the_key() {
        let err = from_tree::<Outer>(tree(), "APP", env(&[("APP__BATCH_SIZE", "many")])).expect_err("not a number");
        assert!(err.to_string().contains("`batch_size`"), "{err}");
    }

    #[test]
    fn unknown_key_in_the_file_is_named() {
        let mut t = tree();
        if let Value::Mapping(m) = &mut t {
            m.insert(Value::String("bach_size".into()), Value::Number(3.into()));
        }
        let err = from_tree::<Outer>(t, "APP", env(&[])).expect_err("unknown key");
        assert!(err.to_string().contains("bach_size"), "{err}");
    }

    #[test]
    fn a_list_is_overridden_by_comma_separated_items() {
        #[derive(Debug, Deserialize)]
        struct Lists {
            origins: Vec<String>,
        }
        let tree: Value = serde_norway::from_str("origins: [a]").expect("yaml");
        let cfg: Lists = from_tree(
            tree,
            "APP",
            env(&[("APP__ORIGINS", "https://x.example, https://y.example")]),
        )
        .expect("valid");
        assert_eq!(cfg.origins, vec!["https://x.example", "https://y.example"]);
    }

    #[test]
    fn a_file_overrides_only_the_defaults_it_names() {
        let dir = std::env::temp_dir().join(format!("fechatter_config_{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("app.yml");
        std::fs::write(&file, "inner:\n  enabled: true\n").expect("write");
        let defaults = "name: a\nbatch_size: 1\ninner:\n  enabled: false\n  password: x\n";
        let cfg: Outer = load(defaults, Some(&file), "APP", env(&[])).expect("valid");
        assert!(cfg.inner.enabled);
        assert_eq!(cfg.inner.password, "x");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn overriding_below_a_scalar_is_refused() {
        let err = from_tree::<Outer>(tree(), "APP", env(&[("APP__NAME__X", "1")])).expect_err("name is not a section");
        assert!(err.to_string().contains("APP__NAME__X"), "{err}");
    }
}

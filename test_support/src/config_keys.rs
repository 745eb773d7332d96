//! Configuration keys as README.md, a service's YAML file and its settings structs know them, so that tests can
//! check that the three agree.
//!
//! * [`yaml_keys`] — the dotted path of every leaf (scalar or list) of a YAML file.
//! * [`readme_keys`] — the (key, environment variable) pairs of README.md's configuration reference tables.
//! * [`env_name`] — the environment variable that overrides a key (`ANALYTICS__JETSTREAM__MAX_ACK_PENDING`).
//! * [`sections`] and [`accepted_fields`] — to ask the code itself which keys a section takes: override an unknown
//!   key in a section, and read the fields serde lists in its refusal.
//! * [`readme_problems`] and [`section_problems`] — the whole comparisons, as each service's `config_reference`
//!   test runs them.
//!
//! The helpers panic on malformed input: they are meant for tests, where a panic is a failure with a message.

use std::collections::{BTreeMap, BTreeSet};

use serde_norway::Value;

/// The dotted path of every leaf (scalar or sequence) of the YAML mapping `yaml_text`, sorted.
///
/// A list such as `server.cors_origins` is one key; an empty section contributes no key.
///
/// # Panics
///
/// When `yaml_text` is not valid YAML, is not a mapping, or has a key that is not a string.
pub fn yaml_keys(yaml_text: &str) -> Vec<String> {
    let root: Value = serde_norway::from_str(yaml_text).expect("yaml_keys: the text is not valid YAML");
    let Value::Mapping(_) = root else {
        panic!("yaml_keys: the document is not a mapping");
    };
    let mut keys = Vec::new();
    collect_leaves(&root, "", &mut keys);
    keys.sort();
    keys
}

fn collect_leaves(node: &Value, path: &str, keys: &mut Vec<String>) {
    match node {
        Value::Mapping(map) => {
            for (key, value) in map {
                let Value::String(name) = key else {
                    panic!("yaml_keys: key {key:?} under `{path}` is not a string");
                };
                let child = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}.{name}")
                };
                collect_leaves(value, &child, keys);
            }
        }
        _ => keys.push(path.to_owned()),
    }
}

/// The (dotted key, environment variable) pairs of the Markdown table rows in `readme_text` whose environment
/// variable starts with `{env_prefix}__`, sorted.
///
/// A row counts when its first cell is a code span (the key) and a later cell is a code span starting with
/// `{env_prefix}__` (the variable), as in
/// ``| `jetstream.max_ack_pending` | `20000` | `ANALYTICS__JETSTREAM__MAX_ACK_PENDING` | … |``.
/// Duplicate rows are kept, so that a caller can report them.
pub fn readme_keys(readme_text: &str, env_prefix: &str) -> Vec<(String, String)> {
    let marker = format!("{env_prefix}__");
    let mut pairs: Vec<(String, String)> = readme_text
        .lines()
        .filter_map(|line| {
            let row = line.trim().strip_prefix('|')?;
            let mut cells = row.split('|').map(code_span);
            let key = cells.next()??;
            let variable = cells.flatten().find(|cell| cell.starts_with(&marker))?;
            Some((key.to_owned(), variable.to_owned()))
        })
        .collect();
    pairs.sort();
    pairs
}

/// The text of `cell` when the whole cell is one code span (`` `text` ``).
fn code_span(cell: &str) -> Option<&str> {
    let text = cell.trim().strip_prefix('`')?.strip_suffix('`')?;
    (!text.is_empty() && !text.contains('`')).then_some(text)
}

/// The environment variable overriding `dotted` (e.g. `jetstream.max_ack_pending`) for a service whose prefix
/// is `prefix` (e.g. `ANALYTICS`): `ANALYTICS__JETSTREAM__MAX_ACK_PENDING`.
pub fn env_name(prefix: &str, dotted: &str) -> String {
    format!("{prefix}__{}", dotted.to_ascii_uppercase().replace('.', "__"))
}

/// Every section of the configuration whose leaves are `keys` (dotted paths), with the names of its direct
/// children. The top level is the section `""`.
///
/// `["a.b", "a.c.d", "e"]` gives `"" → {a, e}`, `"a" → {b, c}`, `"a.c" → {d}`.
pub fn sections<S: AsRef<str>>(keys: &[S]) -> BTreeMap<String, BTreeSet<String>> {
    let mut sections: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for key in keys {
        let parts: Vec<&str> = key.as_ref().split('.').collect();
        for depth in 0..parts.len() {
            sections
                .entry(parts[..depth].join("."))
                .or_default()
                .insert(parts[depth].to_owned());
        }
    }
    sections
}

/// The fields serde names in an "unknown field" error (`` unknown field `x`, expected one of `a`, `b` ``), sorted:
/// the keys the refusing struct accepts. `None` when `message` holds no such list.
pub fn accepted_fields(message: &str) -> Option<Vec<String>> {
    let (_, tail) = message.split_once("unknown field `")?;
    let (_, rest) = tail.split_once('`')?;
    let rest = rest.strip_prefix(", ")?;
    if rest.starts_with("there are no fields") {
        return Some(Vec::new());
    }
    let list = rest
        .strip_prefix("expected one of ")
        .or_else(|| rest.strip_prefix("expected "))?;
    let mut fields = Vec::new();
    let mut items = list.split('`');
    // Backtick-separated: text before the first name, then alternately a name and its separator (serde writes
    // "`a`", "`a` or `b`", or "one of `a`, `b`, `c`").
    items.next()?;
    while let Some(name) = items.next() {
        fields.push(name.to_owned());
        match items.next() {
            Some(", " | " or ") => {}
            _ => break,
        }
    }
    fields.sort();
    (!fields.is_empty()).then_some(fields)
}

/// How README.md's table for the service with `env_prefix` disagrees with its YAML defaults `defaults_yaml`
/// (named `file` in messages): keys missing from README.md, rows naming no key, keys listed twice, and rows whose
/// variable does not follow the naming rule. Empty when they agree.
pub fn readme_problems(readme_text: &str, defaults_yaml: &str, env_prefix: &str, file: &str) -> Vec<String> {
    let yaml: BTreeSet<String> = yaml_keys(defaults_yaml).into_iter().collect();
    let rows = readme_keys(readme_text, env_prefix);
    let readme: BTreeSet<String> = rows.iter().map(|(key, _)| key.clone()).collect();
    let mut problems = Vec::new();
    let missing: Vec<&String> = yaml.difference(&readme).collect();
    if !missing.is_empty() {
        problems.push(format!("keys of {file} missing from README.md: {missing:?}"));
    }
    let extra: Vec<&String> = readme.difference(&yaml).collect();
    if !extra.is_empty() {
        problems.push(format!("README.md rows naming no key of {file}: {extra:?}"));
    }
    let duplicated: Vec<&String> = rows.windows(2).filter(|w| w[0].0 == w[1].0).map(|w| &w[0].0).collect();
    if !duplicated.is_empty() {
        problems.push(format!("keys listed twice in README.md: {duplicated:?}"));
    }
    for (key, variable) in &rows {
        let expected = env_name(env_prefix, key);
        if *variable != expected {
            problems.push(format!("README.md row `{key}` lists {variable}, expected {expected}"));
        }
    }
    problems
}

/// Asks the code which keys each section of `defaults_yaml` takes and compares with the file: `load` is called
/// with one override of an unknown key per section and must refuse it, naming it and listing the section's
/// fields, which must be the file's keys. Empty when they agree.
pub fn section_problems<E: std::fmt::Display>(
    defaults_yaml: &str,
    env_prefix: &str,
    file: &str,
    load: impl Fn(Vec<(String, String)>) -> Result<(), E>,
) -> Vec<String> {
    let keys = yaml_keys(defaults_yaml);
    let mut problems = Vec::new();
    for (section, children) in sections(&keys) {
        let unknown = if section.is_empty() {
            "zz_no_such_key".to_owned()
        } else {
            format!("{section}.zz_no_such_key")
        };
        let variable = env_name(env_prefix, &unknown);
        let message = match load(vec![(variable.clone(), "1".to_owned())]) {
            Ok(()) => {
                problems.push(format!("{variable} was accepted: `{unknown}` is not refused"));
                continue;
            }
            Err(err) => err.to_string(),
        };
        if !message.contains(&format!("`{unknown}`")) {
            problems.push(format!("{variable} was refused without naming `{unknown}`: {message}"));
        }
        let Some(accepted) = accepted_fields(&message) else {
            problems.push(format!("{variable} was refused without listing the fields: {message}"));
            continue;
        };
        let accepted: BTreeSet<String> = accepted.into_iter().collect();
        let name = if section.is_empty() { "the top level" } else { &section };
        let not_in_yml: Vec<&String> = accepted.difference(&children).collect();
        let not_in_code: Vec<&String> = children.difference(&accepted).collect();
        if !not_in_yml.is_empty() || !not_in_code.is_empty() {
            problems.push(format!(
                "{name}: fields of the code missing from {file}: {not_in_yml:?}; \
                 keys of {file} the code does not take: {not_in_code:?}"
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|item| (*item).to_owned()).collect()
    }

    #[test]
    fn yaml_keys_lists_every_leaf_sorted_with_lists_as_one_key() {
        let yaml = "\
# comment
server:
  port: 1
  cors_origins:
    - http://a
    - http://b
  host: \"\"
messaging:
  subjects:
    events: \"a.>\"
batch_size: 100
empty:
nothing: {}
";
        assert_eq!(
            yaml_keys(yaml),
            strings(&[
                "batch_size",
                "empty",
                "messaging.subjects.events",
                "server.cors_origins",
                "server.host",
                "server.port",
            ])
        );
    }

    #[test]
    #[should_panic(expected = "not a mapping")]
    fn yaml_keys_refuses_a_document_that_is_not_a_mapping() {
        yaml_keys("- a\n- b\n");
    }

    #[test]
    fn readme_keys_reads_the_rows_of_one_prefix() {
        let readme = "\
Override with `APP__` + the key (`APP__A__B`).

| key | default | environment override | meaning |
|---|---|---|---|
| `server.port` | `6690` | `APP__SERVER__PORT` | HTTP port |
| `batch_size` | `100` | `APP__BATCH_SIZE` | rows per INSERT |
| `user` | `default` | `APP__USER` | |
| `other.key` | `1` | `OTHER__OTHER__KEY` | another service |
| not code | `1` | `APP__NOT_CODE` | ignored |

| `a.b` | `x` | `APP__A__B` | a second table |
";
        assert_eq!(
            readme_keys(readme, "APP"),
            vec![
                ("a.b".to_owned(), "APP__A__B".to_owned()),
                ("batch_size".to_owned(), "APP__BATCH_SIZE".to_owned()),
                ("server.port".to_owned(), "APP__SERVER__PORT".to_owned()),
                ("user".to_owned(), "APP__USER".to_owned()),
            ]
        );
        assert_eq!(
            readme_keys(readme, "OTHER"),
            vec![("other.key".to_owned(), "OTHER__OTHER__KEY".to_owned())]
        );
        assert!(readme_keys(readme, "NONE").is_empty());
    }

    #[test]
    fn env_name_upper_cases_and_separates_levels_with_double_underscores() {
        assert_eq!(
            env_name("ANALYTICS", "jetstream.max_ack_pending"),
            "ANALYTICS__JETSTREAM__MAX_ACK_PENDING"
        );
        assert_eq!(env_name("ANALYTICS", "batch_size"), "ANALYTICS__BATCH_SIZE");
        assert_eq!(
            env_name("FECHATTER", "features.messaging.enabled"),
            "FECHATTER__FEATURES__MESSAGING__ENABLED"
        );
    }

    #[test]
    fn sections_maps_each_section_to_its_children() {
        let sections = sections(&["a.b", "a.c.d", "e"]);
        let expected: BTreeMap<String, BTreeSet<String>> =
            [("", &["a", "e"][..]), ("a", &["b", "c"][..]), ("a.c", &["d"][..])]
                .into_iter()
                .map(|(section, children)| (section.to_owned(), children.iter().map(|c| (*c).to_owned()).collect()))
                .collect();
        assert_eq!(sections, expected);
    }

    #[test]
    fn accepted_fields_reads_serde_unknown_field_errors() {
        assert_eq!(
            accepted_fields(
                "invalid configuration key `server.zz` (from environment variable APP__SERVER__ZZ): \
                 unknown field `zz`, expected one of `port`, `host`"
            ),
            Some(strings(&["host", "port"]))
        );
        assert_eq!(
            accepted_fields("unknown field `zz`, expected `url` or `max_connections`"),
            Some(strings(&["max_connections", "url"]))
        );
        assert_eq!(
            accepted_fields("unknown field `zz`, expected `enabled`"),
            Some(strings(&["enabled"]))
        );
        assert_eq!(
            accepted_fields("unknown field `zz`, there are no fields"),
            Some(Vec::new())
        );
        assert_eq!(accepted_fields("invalid type: string \"x\", expected u16"), None);
    }
}

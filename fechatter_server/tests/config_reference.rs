//! README.md's configuration reference for `fechatter_server` must list exactly the keys the service reads.
//!
//! Operators configure the service from that table (mostly through `FECHATTER__…` variables), so a key missing
//! from it is invisible and a row naming a key that does not exist makes start-up fail with "unknown key". These
//! tests compare the table with `chat.yml` (the compiled-in defaults, every key present), check each row's
//! variable name, and ask the code itself which keys it takes: the file must load on its own (no key the structs
//! lack, no field the file lacks), and an unknown key in any section must be refused, naming it and listing the
//! section's fields, which must be the file's.

use std::collections::BTreeSet;

use fechatter_server::config::{DEFAULTS, ENV_PREFIX, Settings};
use test_support::config_keys::{accepted_fields, env_name, readme_keys, sections, yaml_keys};

const README: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"));

/// The two keys chat.yml leaves empty on purpose (they must name real files), set so that validation passes.
fn signing_keys() -> Vec<(String, String)> {
    vec![
        (
            env_name(ENV_PREFIX, "auth.private_key_path"),
            "/keys/private.pem".to_owned(),
        ),
        (
            env_name(ENV_PREFIX, "auth.public_key_path"),
            "/keys/public.pem".to_owned(),
        ),
    ]
}

#[test]
fn readme_lists_every_key_of_chat_yml_and_no_other() {
    let yaml: BTreeSet<String> = yaml_keys(DEFAULTS).into_iter().collect();
    let rows = readme_keys(README, ENV_PREFIX);
    let readme: BTreeSet<String> = rows.iter().map(|(key, _)| key.clone()).collect();
    let missing: Vec<&String> = yaml.difference(&readme).collect();
    let extra: Vec<&String> = readme.difference(&yaml).collect();
    let duplicated: Vec<&String> = rows.windows(2).filter(|w| w[0].0 == w[1].0).map(|w| &w[0].0).collect();
    assert!(
        missing.is_empty() && extra.is_empty() && duplicated.is_empty(),
        "README.md's fechatter_server configuration table and chat.yml disagree\n  \
         keys missing from README.md: {missing:?}\n  README.md rows naming no key of chat.yml: {extra:?}\n  \
         keys listed twice: {duplicated:?}"
    );
}

#[test]
fn readme_environment_variables_follow_the_naming_rule() {
    let wrong: Vec<String> = readme_keys(README, ENV_PREFIX)
        .into_iter()
        .filter(|(key, variable)| *variable != env_name(ENV_PREFIX, key))
        .map(|(key, variable)| format!("`{key}` lists {variable}, expected {}", env_name(ENV_PREFIX, &key)))
        .collect();
    assert!(wrong.is_empty(), "README.md rows with a wrong variable: {wrong:#?}");
}

#[test]
fn chat_yml_loads_on_its_own() {
    // deny_unknown_fields refuses a key the structs lack, a field without a default refuses its absence.
    let settings: Settings = fechatter_service::load(DEFAULTS, None, ENV_PREFIX, signing_keys())
        .unwrap_or_else(|err| panic!("chat.yml does not match the settings structs: {err}"));
    settings
        .validate()
        .unwrap_or_else(|err| panic!("chat.yml is not valid: {err}"));
}

#[test]
fn every_section_takes_exactly_the_keys_of_chat_yml() {
    let keys = yaml_keys(DEFAULTS);
    let mut problems = Vec::new();
    for (section, children) in sections(&keys) {
        let unknown = if section.is_empty() {
            "zz_no_such_key".to_owned()
        } else {
            format!("{section}.zz_no_such_key")
        };
        let variable = env_name(ENV_PREFIX, &unknown);
        let mut vars = signing_keys();
        vars.push((variable.clone(), "1".to_owned()));
        let message = match Settings::load(None, vars) {
            Ok(_) => {
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
                "{name}: fields of the code missing from chat.yml: {not_in_yml:?}; \
                 keys of chat.yml the code does not take: {not_in_code:?}"
            ));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

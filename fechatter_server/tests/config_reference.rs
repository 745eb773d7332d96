//! README.md's configuration reference for `fechatter_server` must list exactly the keys the service reads.
//!
//! Operators configure the service from that table (mostly through `FECHATTER__…` variables), so a key missing
//! from it is invisible and a row naming a key that does not exist makes start-up fail with "unknown key". These
//! tests compare the table with `chat.yml` (the compiled-in defaults, every key present), check each row's
//! variable name, and ask the code itself which keys it takes: the file must load on its own (no key the structs
//! lack, no field the file lacks), and an unknown key in any section must be refused, naming it and listing the
//! section's fields, which must be the file's.

use fechatter_server::config::{DEFAULTS, ENV_PREFIX, Settings};
use test_support::config_keys::{env_name, readme_problems, section_problems};

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
fn readme_lists_every_key_of_chat_yml_and_no_other_with_its_variable() {
    let problems = readme_problems(README, DEFAULTS, ENV_PREFIX, "chat.yml");
    assert!(problems.is_empty(), "{problems:#?}");
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
    let problems = section_problems(DEFAULTS, ENV_PREFIX, "chat.yml", |vars| {
        let mut all = signing_keys();
        all.extend(vars);
        Settings::load(None, all).map(|_| ())
    });
    assert!(problems.is_empty(), "{problems:#?}");
}

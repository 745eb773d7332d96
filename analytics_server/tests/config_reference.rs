//! README.md's configuration reference for `analytics_server` must list exactly the keys the service reads.
//!
//! Operators configure the service from that table (mostly through `ANALYTICS__…` variables), so a key missing
//! from it is invisible and a row naming a key that does not exist makes start-up fail with "unknown key". These
//! tests compare the table with `analytics.yml` (the compiled-in defaults, every key present), check each row's
//! variable name, and ask the code itself which keys it takes: the file must load on its own (no key the structs
//! lack, no field the file lacks), and an unknown key in any section must be refused, naming it and listing the
//! section's fields, which must be the file's.

use analytics_server::config::{DEFAULTS, ENV_PREFIX, Settings};
use test_support::config_keys::{readme_problems, section_problems};

const README: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"));

#[test]
fn readme_lists_every_key_of_analytics_yml_and_no_other_with_its_variable() {
    let problems = readme_problems(README, DEFAULTS, ENV_PREFIX, "analytics.yml");
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn analytics_yml_loads_on_its_own() {
    // deny_unknown_fields refuses a key the structs lack, a field without a default refuses its absence.
    let settings: Settings = fechatter_service::load(DEFAULTS, None, ENV_PREFIX, Vec::new())
        .unwrap_or_else(|err| panic!("analytics.yml does not match the settings structs: {err}"));
    settings
        .validate()
        .unwrap_or_else(|err| panic!("analytics.yml is not valid: {err}"));
}

#[test]
fn every_section_takes_exactly_the_keys_of_analytics_yml() {
    let problems = section_problems(DEFAULTS, ENV_PREFIX, "analytics.yml", |vars| {
        Settings::load(None, vars).map(|_| ())
    });
    assert!(problems.is_empty(), "{problems:#?}");
}

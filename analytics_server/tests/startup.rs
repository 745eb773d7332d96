//! Start-up refuses bad configuration with a message naming the key, before touching any server.

use std::process::Command;

fn run_with(vars: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_analytics_server"))
        .envs(vars.iter().copied())
        .output()
        .expect("binary runs");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn an_unknown_key_stops_start_up_naming_it_and_its_variable() {
    let (ok, stderr) = run_with(&[("ANALYTICS__INTEGRATIONS__MESSAGING__NATS_URI", "nats://x:4222")]);
    assert!(!ok);
    assert!(stderr.contains("integrations.messaging.nats_uri"), "{stderr}");
    assert!(
        stderr.contains("ANALYTICS__INTEGRATIONS__MESSAGING__NATS_URI"),
        "{stderr}"
    );
}

#[test]
fn an_invalid_value_stops_start_up_naming_the_key() {
    let (ok, stderr) = run_with(&[("ANALYTICS__BATCH_SIZE", "lots")]);
    assert!(!ok);
    assert!(stderr.contains("batch_size"), "{stderr}");
}

#[test]
fn a_missing_config_file_is_named() {
    let (ok, stderr) = run_with(&[("ANALYTICS_CONFIG", "/nonexistent/analytics.yml")]);
    assert!(!ok);
    assert!(stderr.contains("/nonexistent/analytics.yml"), "{stderr}");
}

//! The schema and every query also run on a current ClickHouse (the engine docker-compose pins), not only on
//! 18.16: they are executed by chDB, which embeds a current ClickHouse engine (installed by
//! `scripts/install-deps.sh` as the `chdb-core` Python package).

use analytics_server::schema::all_statements;
use std::process::Command;

const RUNNER: &str = r#"
import json, sys
import chdb
from chdb import session
statements = json.load(sys.stdin)
s = session.Session()
print("version", s.query("SELECT version()", "TSVRaw").bytes().decode().strip())
for sql in statements:
    try:
        s.query(sql, "TSVRaw")
    except Exception as e:
        print("FAILED:", sql, "->", e)
        sys.exit(1)
print("ok", len(statements))
"#;

#[test]
fn schema_and_queries_are_valid_on_a_current_clickhouse() {
    let mut statements = all_statements("fechatter_analytics");
    // The sink's INSERT names every field of EventRow; check that column list against the current engine too.
    let columns = <analytics_server::row::EventRow as clickhouse::Row>::COLUMN_NAMES.join(", ");
    statements.push(format!(
        "INSERT INTO analytics_events ({columns}) SELECT {columns} FROM analytics_events WHERE 0"
    ));
    let input = serde_json::to_vec(&statements).expect("json");
    let mut child = Command::new("python3")
        .args(["-c", RUNNER])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs (scripts/install-deps.sh installs chdb-core)");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&input)
        .expect("write statements");
    let out = child.wait_with_output().expect("runner finishes");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains(&format!("ok {}", statements.len())), "{stdout}");
    eprintln!("{stdout}");
}

//! Starts each private server, checks that it answers, restarts it (gracefully and after a
//! kill) and checks that it answers again with its data intact; also runs two ClickHouse servers
//! side by side and checks that dropped servers are gone.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use test_support::{ClickHouseServer, NatsServer, PostgresServer, wait_until};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Sends one request over the raw NATS protocol and returns the reply payload. Enough to drive
/// the JetStream API without a NATS client crate.
async fn nats_request(port: u16, subject: &str, payload: &str) -> Result<String> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut line = String::new();
    read.read_line(&mut line).await?;
    ensure!(line.starts_with("INFO "), "expected INFO, got {line:?}");
    let request = format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":false}}\r\n\
         SUB _INBOX.test 1\r\n\
         PUB {subject} _INBOX.test {}\r\n{payload}\r\n",
        payload.len()
    );
    write.write_all(request.as_bytes()).await?;
    let reply = async {
        loop {
            line.clear();
            if read.read_line(&mut line).await? == 0 {
                bail!("connection closed before a reply");
            }
            if line.starts_with("PING") {
                write.write_all(b"PONG\r\n").await?;
            } else if line.starts_with("-ERR") {
                bail!("server error: {line}");
            } else if line.starts_with("MSG ") {
                let size: usize = line.split_whitespace().last().context("MSG without size")?.parse()?;
                let mut body = vec![0; size + 2];
                read.read_exact(&mut body).await?;
                body.truncate(size);
                return Ok(String::from_utf8(body)?);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), reply)
        .await
        .context("no reply within 10 s")?
}

/// Checks that the NATS server answers on TCP and reports the stream with `messages` messages.
async fn check_nats(nats: &NatsServer, messages: u64) -> Result<()> {
    let mut stream = TcpStream::connect(("127.0.0.1", nats.port())).await?;
    let mut info = [0u8; 5];
    stream.read_exact(&mut info).await?;
    ensure!(&info == b"INFO ", "unexpected greeting {info:?}");
    let jsz: Value = nats.jsz().await?;
    ensure!(jsz["streams"] == 1, "expected 1 stream: {jsz}");
    ensure!(jsz["messages"] == messages, "expected {messages} messages: {jsz}");
    let stream_name = &jsz["account_details"][0]["stream_detail"][0]["name"];
    ensure!(stream_name == "EVENTS", "unexpected stream detail: {jsz}");
    Ok(())
}

#[tokio::test]
async fn nats_answers_and_keeps_jetstream_data_across_restarts() -> Result<()> {
    let mut nats = NatsServer::start().await?;
    ensure!(nats.url() == format!("nats://127.0.0.1:{}", nats.port()));
    ensure!(nats.monitor_url() == format!("http://127.0.0.1:{}", nats.monitor_port()));

    let jsz = nats.jsz().await?;
    ensure!(jsz["streams"] == 0, "fresh server has streams: {jsz}");
    let created = nats_request(
        nats.port(),
        "$JS.API.STREAM.CREATE.EVENTS",
        r#"{"name":"EVENTS","subjects":["events.>"],"storage":"file"}"#,
    )
    .await?;
    ensure!(!created.contains("\"error\""), "stream create failed: {created}");
    let ack = nats_request(nats.port(), "events.one", "hello").await?;
    ensure!(ack.contains("\"seq\":1"), "unexpected publish ack: {ack}");
    check_nats(&nats, 1).await?;

    let port = nats.port();
    nats.restart().await?;
    ensure!(nats.port() == port, "restart changed the port");
    check_nats(&nats, 1).await?;

    // A crash: the store survives too.
    nats.kill().await;
    ensure!(!nats.is_running());
    ensure!(
        TcpStream::connect(("127.0.0.1", port)).await.is_err(),
        "killed server still listens"
    );
    nats.restart().await?;
    let ack = nats_request(nats.port(), "events.two", "again").await?;
    ensure!(ack.contains("\"seq\":2"), "unexpected publish ack: {ack}");
    check_nats(&nats, 2).await?;

    nats.stop().await;
    ensure!(!nats.is_running());
    Ok(())
}

#[tokio::test]
async fn clickhouse_answers_and_keeps_data_across_restarts() -> Result<()> {
    let mut ch = ClickHouseServer::start().await?;
    ensure!(ch.http_url() == format!("http://127.0.0.1:{}", ch.http_port()));
    let version = ch.query("SELECT version()").await?;
    ensure!(
        version.trim().chars().next().is_some_and(|c| c.is_ascii_digit()),
        "unexpected version {version:?}"
    );
    ch.query("CREATE TABLE t (id UInt64, name LowCardinality(String)) ENGINE = MergeTree ORDER BY id")
        .await?;
    ch.query("INSERT INTO t VALUES (1, 'a'), (2, 'b')").await?;

    let Err(err) = ch.query("SELECT nonsense FROM nowhere").await else {
        bail!("a query of a missing table succeeded");
    };
    ensure!(
        format!("{err:#}").contains("nowhere"),
        "error lacks the server message: {err:#}"
    );

    let port = ch.http_port();
    let started = std::time::Instant::now();
    ch.restart().await?;
    // A graceful stop that had to fall back to SIGKILL would take over 5 s.
    ensure!(
        started.elapsed() < Duration::from_secs(5),
        "restart took {:?}",
        started.elapsed()
    );
    ensure!(ch.http_port() == port);
    ensure!(ch.query("SELECT count() FROM t").await?.trim() == "2");

    ch.kill().await;
    ensure!(!ch.is_running());
    ch.restart().await?;
    ensure!(ch.query("SELECT sum(id) FROM t").await?.trim() == "3");
    let timezone = ch.query("SELECT timezone()").await?;
    ensure!(timezone.trim().ends_with("UTC"), "unexpected timezone {timezone:?}");
    Ok(())
}

#[tokio::test]
async fn two_clickhouse_servers_run_side_by_side() -> Result<()> {
    let (a, b) = tokio::join!(ClickHouseServer::start(), ClickHouseServer::start());
    let (a, b) = (a?, b?);
    ensure!(a.http_port() != b.http_port() && a.tcp_port() != b.tcp_port());
    ensure!(a.data_dir() != b.data_dir());
    a.query("CREATE TABLE only_in_a (x UInt8) ENGINE = Memory").await?;
    let in_a = a.query("EXISTS TABLE only_in_a").await?;
    let in_b = b.query("EXISTS TABLE only_in_a").await?;
    ensure!(in_a.trim() == "1" && in_b.trim() == "0", "a: {in_a:?}, b: {in_b:?}");

    let url = a.http_url();
    drop(a);
    let gone = reqwest::Client::builder()
        .no_proxy()
        .build()?
        .get(format!("{url}/ping"))
        .send()
        .await
        .is_err();
    ensure!(gone, "dropped ClickHouse server still answers");
    ensure!(b.query("SELECT 1").await?.trim() == "1");
    Ok(())
}

#[tokio::test]
async fn postgres_creates_databases_and_keeps_data_across_restarts() -> Result<()> {
    let mut pg = PostgresServer::start().await?;
    let url = pg.create_database("app_test-1").await?;
    ensure!(url == format!("postgres://postgres@127.0.0.1:{}/app_test-1", pg.port()));
    ensure!(pg.url("app_test-1") == url);
    ensure!(pg.psql("app_test-1", "SELECT 1").await? == "1");
    pg.psql("app_test-1", "CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2)")
        .await?;
    ensure!(pg.create_database("bad name").await.is_err());
    ensure!(pg.psql("app_test-1", "SELECT nonsense").await.is_err());

    let port = pg.port();
    pg.restart().await?;
    ensure!(pg.port() == port);
    ensure!(pg.psql("app_test-1", "SELECT count(*) FROM t").await? == "2");

    pg.kill().await;
    ensure!(
        pg.psql("postgres", "SELECT 1").await.is_err(),
        "killed server still answers"
    );
    pg.restart().await?;
    ensure!(pg.psql("app_test-1", "SELECT sum(id) FROM t").await? == "3");

    drop(pg);
    let refused = wait_until(
        "the dropped PostgreSQL to stop listening",
        Duration::from_secs(5),
        || async { TcpStream::connect(("127.0.0.1", port)).await.is_err().then_some(()) },
    )
    .await;
    ensure!(refused.is_ok(), "dropped PostgreSQL server still listens");
    Ok(())
}

#[tokio::test]
async fn dropped_nats_server_is_gone() -> Result<()> {
    let nats = NatsServer::start().await?;
    let port = nats.port();
    let store = nats.store_dir();
    drop(nats);
    ensure!(
        TcpStream::connect(("127.0.0.1", port)).await.is_err(),
        "dropped server still listens"
    );
    ensure!(!store.exists(), "temporary directory left behind");
    Ok(())
}

/// Reads the greeting of the NATS server on `port`: its `INFO` line.
async fn nats_greeting(port: u16) -> Result<String> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).await?;
    ensure!(line.starts_with("INFO "), "expected INFO, got {line:?}");
    Ok(line)
}

#[tokio::test]
async fn nats_starts_with_or_without_jetstream_and_says_which() -> Result<()> {
    let (with, without) = tokio::join!(NatsServer::start(), NatsServer::start_without_jetstream());
    let (with, mut without) = (with?, without?);
    let greeting = nats_greeting(with.port()).await?;
    ensure!(greeting.contains("\"jetstream\":true"), "JetStream missing: {greeting}");
    let greeting = nats_greeting(without.port()).await?;
    ensure!(!greeting.contains("\"jetstream\":true"), "JetStream on: {greeting}");
    // A restart keeps the choice.
    without.restart().await?;
    let greeting = nats_greeting(without.port()).await?;
    ensure!(
        !greeting.contains("\"jetstream\":true"),
        "JetStream on after a restart: {greeting}"
    );
    Ok(())
}

//! Faults on the chat API's analytics path, on real servers (private PostgreSQL, NATS JetStream and ClickHouse,
//! analytics_server in process): what README.md promises in "Every action is an event, never lost" and "Delivery
//! guarantees", measured while several clients send messages (`POST /api/chats/{id}/messages` with idempotency
//! keys).
//!
//! * NATS restarted during the sends: the API keeps answering (every send 201, none slower than the NATS ack
//!   timeout), the events wait in the outbox and drain once NATS is back, and every `message_sent` event is in
//!   ClickHouse exactly once.
//! * `fechatter_server` (the binary) killed with SIGKILL during the sends, then restarted, more than once: the
//!   clients retry failed sends with the same idempotency key, and every message committed in PostgreSQL has its
//!   `message_sent` event in ClickHouse exactly once, however the kill cut the send or the outbox relay.
//!
//! "Exactly once" is checked per message, not only in total: the event does not carry the message id, so each
//! client sends to its own chat and its message `k` has `MIN_CONTENT + k` bytes; (sender, chat, size) then names one
//! message both in the `messages` table and in the event (`user_id`, `chatId`, `size`). Lost = committed messages
//! without their event; duplicates = events beyond one per committed message (as seen with `FINAL`).
//!
//! Each test prints its figures on one stdout line starting with `FIGURES <test name>:` (`--nocapture` shows it).
//! `FECHATTER_TEST_FULL=1` runs larger sizes (more clients, ~10x the messages, a longer outage, more kills).

mod common;

use common::{Ingester, TestApp, User};
use reqwest::StatusCode;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use test_support::{ChildProcess, free_port, wait_until};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The default size, or the larger one when `FECHATTER_TEST_FULL=1`.
fn sized<T>(default: T, full: T) -> T {
    if std::env::var("FECHATTER_TEST_FULL").is_ok_and(|v| v == "1") {
        full
    } else {
        default
    }
}

/// Held by each test for its whole run: the tests load both cores, and each one's figures (latencies above all)
/// should describe its own fault, not the other test's load.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Bytes of a client's first message; message `k` has `MIN_CONTENT + k`.
const MIN_CONTENT: usize = 16;
/// Most messages one client can send with distinct sizes (contents have at most 4000 characters).
const MAX_PER_CLIENT: usize = 4000 - MIN_CONTENT;

/// The content of a client's message `k`: `MIN_CONTENT + k` ASCII bytes.
fn content(k: usize) -> String {
    let mut text = format!("message {k} ");
    let len = MIN_CONTENT + k;
    assert!(text.len() <= len, "k {k} too large for MIN_CONTENT");
    text.extend(std::iter::repeat_n('.', len - text.len()));
    text
}

/// One sending client: its own user, in its own workspace, sending to its own group chat.
#[derive(Clone)]
struct Client {
    id: usize,
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Client {
    /// A user and a chat for client `id`, created on `app` (whichever server its port names).
    async fn create(app: &TestApp, id: usize) -> Client {
        let user: User = app.direct_user(&format!("Client {id}"), None).await;
        let (status, chat) = app
            .post(
                "/api/chats",
                &user,
                json!({ "name": format!("load {id}"), "chat_type": "group", "members": [] }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{chat}");
        let chat = chat["id"].as_i64().expect("chat id");
        Client {
            id,
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(15))
                .build()
                .expect("http client"),
            url: app.url(&format!("/api/chats/{chat}/messages")),
            token: user.access_token,
        }
    }

    /// Sends message `k` (idempotency key `c<id>-m<k>`); the answer's status, or why there was none.
    async fn send(&self, k: usize) -> Result<StatusCode, String> {
        let response = self
            .http
            .post(&self.url)
            .bearer_auth(&self.token)
            .json(&json!({ "content": content(k), "idempotency_key": format!("c{}-m{k}", self.id) }))
            .send()
            .await
            .map_err(|e| format!("{e:?}"))?;
        let status = response.status();
        // Read the body so the connection is reused; the status already says what happened.
        let _ = response.bytes().await;
        Ok(status)
    }
}

async fn clients(app: &TestApp, n: usize) -> Vec<Client> {
    let mut all = Vec::with_capacity(n);
    for id in 0..n {
        all.push(Client::create(app, id).await);
    }
    all
}

/// Samples the outbox depth every 20 ms until the token is cancelled; returns (when, depth) samples.
fn sample_outbox_depth(pool: sqlx::PgPool, stop: CancellationToken) -> JoinHandle<Vec<(Instant, i64)>> {
    tokio::spawn(async move {
        let mut samples = Vec::new();
        while !stop.is_cancelled() {
            if let Ok(depth) = fechatter_server::analytics::outbox::depth(&pool).await {
                samples.push((Instant::now(), depth));
            }
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
        samples
    })
}

/// The `q` quantile of `values` (sorted in place), in milliseconds.
fn quantile_ms(values: &mut [Duration], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_unstable();
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1].as_secs_f64() * 1000.0
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// Messages committed in PostgreSQL against `message_sent` events in ClickHouse, message by message.
#[derive(Debug)]
struct Tally {
    /// Rows in `messages`.
    committed: i64,
    /// Messages stored more than once (the same client's message `k` twice): idempotency broken.
    duplicate_messages: i64,
    /// `count() FINAL` of `message_sent`.
    events: i64,
    /// `uniqExact(event_id)` of `message_sent`.
    unique_event_ids: i64,
    /// `message_sent` rows without `FINAL` (copies not merged yet count).
    raw_rows: i64,
    /// Committed messages without their event.
    lost: i64,
    /// Events beyond one per committed message.
    duplicates: i64,
}

async fn clickhouse(ingester: &Ingester, sql: &str) -> String {
    ingester
        .clickhouse
        .query(&sql.replace("{db}", &ingester.database))
        .await
        .expect("ClickHouse answers")
}

async fn clickhouse_count(ingester: &Ingester, sql: &str) -> i64 {
    clickhouse(ingester, sql).await.trim().parse().expect("a count")
}

const EVENTS_FINAL: &str = "SELECT count() FROM {db}.analytics_events FINAL WHERE event_type = 'message_sent'";

async fn tally(app: &TestApp, ingester: &Ingester) -> Tally {
    type Key = (i64, i64, i64);
    let rows: Vec<(i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT sender_id, chat_id, octet_length(content)::bigint, count(*) FROM messages GROUP BY 1, 2, 3",
    )
    .fetch_all(&app.pool)
    .await
    .expect("messages");
    let committed_by_key: HashMap<Key, i64> = rows.iter().map(|&(s, c, n, count)| ((s, c, n), count)).collect();
    let text = clickhouse(
        ingester,
        "SELECT user_id AS sender, visitParamExtractString(payload, 'chatId') AS chat, \
         visitParamExtractUInt(payload, 'size') AS size, count() FROM {db}.analytics_events FINAL \
         WHERE event_type = 'message_sent' GROUP BY sender, chat, size FORMAT TabSeparated",
    )
    .await;
    let mut events_by_key: HashMap<Key, i64> = HashMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let fields: Vec<i64> = line
            .split('\t')
            .map(|f| f.parse().unwrap_or_else(|_| panic!("numeric fields in {line:?}")))
            .collect();
        let [sender, chat, size, count] = fields[..] else {
            panic!("four fields in {line:?}");
        };
        *events_by_key.entry((sender, chat, size)).or_default() += count;
    }
    let lost = committed_by_key
        .iter()
        .map(|(key, &n)| (n - events_by_key.get(key).copied().unwrap_or(0)).max(0))
        .sum();
    let duplicates = events_by_key
        .iter()
        .map(|(key, &n)| (n - committed_by_key.get(key).copied().unwrap_or(0)).max(0))
        .sum();
    Tally {
        committed: committed_by_key.values().sum(),
        duplicate_messages: committed_by_key.values().map(|&n| n - 1).sum(),
        events: clickhouse_count(ingester, EVENTS_FINAL).await,
        unique_event_ids: clickhouse_count(
            ingester,
            "SELECT uniqExact(event_id) FROM {db}.analytics_events WHERE event_type = 'message_sent'",
        )
        .await,
        raw_rows: clickhouse_count(
            ingester,
            "SELECT count() FROM {db}.analytics_events WHERE event_type = 'message_sent'",
        )
        .await,
        lost,
        duplicates,
    }
}

/// Waits until the outbox is empty and ClickHouse holds as many `message_sent` events as there are messages,
/// then lets one more flush interval pass (a late copy would show) and counts, message by message.
async fn settled_tally(app: &TestApp, ingester: &Ingester, timeout: Duration) -> Tally {
    wait_until("the outbox to drain", timeout, || async {
        (app.outbox_depth().await == 0).then_some(())
    })
    .await
    .expect("the outbox drains");
    let committed: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    let landed = wait_until("every message_sent event in ClickHouse", timeout, || async {
        let events = ingester.scalar(EVENTS_FINAL).await.parse::<i64>().ok()?;
        (events >= committed).then_some(())
    })
    .await;
    if landed.is_ok() {
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    tally(app, ingester).await
}

/// What a client saw in one send.
struct Sent {
    started: Instant,
    latency: Duration,
    answer: Result<StatusCode, String>,
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_restarted_during_sends_the_api_keeps_answering_and_every_message_sent_lands_once() {
    let test = "nats_restarted_during_sends_the_api_keeps_answering_and_every_message_sent_lands_once";
    let _alone = ONE_AT_A_TIME.lock().await;
    let n_clients = sized(4, 6);
    let before = Duration::from_secs(sized(1, 2));
    let outage = Duration::from_secs(sized(5, 50));
    let after = Duration::from_secs(sized(2, 5));
    // Each client sends at most one message per `pace`: well below what a debug build serves on two cores
    // (~50 sends/s with everything else running), so the latencies describe the outage, not a queue.
    let pace = Duration::from_millis(150);

    let mut app = TestApp::start(&[]).await;
    let ingester = Ingester::start(&app).await;
    let clients = clients(&app, n_clients).await;

    let stop_sampling = CancellationToken::new();
    let sampler = sample_outbox_depth(app.pool.clone(), stop_sampling.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<JoinHandle<Vec<Sent>>> = clients
        .into_iter()
        .map(|client| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut sent = Vec::new();
                let mut next = tokio::time::Instant::now();
                for k in 0..MAX_PER_CLIENT {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let started = Instant::now();
                    let answer = client.send(k).await;
                    sent.push(Sent {
                        started,
                        latency: started.elapsed(),
                        answer,
                    });
                    next = (next + pace).max(tokio::time::Instant::now());
                    tokio::time::sleep_until(next).await;
                }
                sent
            })
        })
        .collect();

    tokio::time::sleep(before).await;
    let outage_started = Instant::now();
    app.nats.stop().await;
    tokio::time::sleep(outage).await;
    app.nats.restart().await.expect("NATS comes back");
    let nats_back = Instant::now();
    tokio::time::sleep(after).await;
    stop.store(true, Ordering::Relaxed);
    let mut sent = Vec::new();
    for sender in senders {
        sent.extend(sender.await.expect("client task"));
    }
    let drained = wait_until("the outbox to drain", Duration::from_secs(sized(60, 180)), || async {
        (app.outbox_depth().await == 0).then(Instant::now)
    })
    .await
    .expect("the outbox drains once NATS is back");
    stop_sampling.cancel();
    let samples = sampler.await.expect("sampler");
    let max_depth = samples.iter().map(|&(_, d)| d).max().unwrap_or(0);
    // The first moment after NATS came back that the outbox was seen empty.
    let drained_at = samples
        .iter()
        .find(|&&(at, depth)| at >= nats_back && depth == 0)
        .map_or(drained, |&(at, _)| at);
    let tally = settled_tally(&app, &ingester, Duration::from_secs(sized(60, 180))).await;

    let not_2xx: Vec<&Sent> = sent
        .iter()
        .filter(|s| !matches!(s.answer, Ok(status) if status.is_success()))
        .collect();
    let created = sent
        .iter()
        .filter(|s| matches!(s.answer, Ok(StatusCode::CREATED)))
        .count();
    let mut during: Vec<Duration> = sent
        .iter()
        .filter(|s| s.started >= outage_started && s.started < nats_back)
        .map(|s| s.latency)
        .collect();
    let mut outside: Vec<Duration> = sent
        .iter()
        .filter(|s| s.started < outage_started || s.started >= nats_back)
        .map(|s| s.latency)
        .collect();
    let max_during = during.iter().max().copied().unwrap_or_default();
    println!(
        "FIGURES {test}: clients={n_clients} messages_sent={} sent_during_outage={} not_2xx={} outage_ms={} \
         p50_outage_ms={:.1} p99_outage_ms={:.1} max_outage_ms={} p50_outside_outage_ms={:.1} \
         p99_outside_outage_ms={:.1} max_outbox_depth={max_depth} drain_ms={} committed={} clickhouse_final={} \
         uniq_event_ids={} raw_rows={} lost={} duplicates={}",
        sent.len(),
        during.len(),
        not_2xx.len(),
        ms(nats_back - outage_started),
        quantile_ms(&mut during, 0.50),
        quantile_ms(&mut during, 0.99),
        ms(max_during),
        quantile_ms(&mut outside, 0.50),
        quantile_ms(&mut outside, 0.99),
        ms(drained_at.saturating_duration_since(nats_back)),
        tally.committed,
        tally.events,
        tally.unique_event_ids,
        tally.raw_rows,
        tally.lost,
        tally.duplicates,
    );

    let examples: Vec<String> = not_2xx.iter().take(5).map(|s| format!("{:?}", s.answer)).collect();
    assert_eq!(not_2xx.len(), 0, "every send answers 2xx, NATS or not: {examples:?}");
    assert_eq!(created, sent.len(), "every send is a new message");
    assert!(!during.is_empty(), "the clients sent during the outage");
    assert!(
        max_during < Duration::from_secs(5),
        "no send waits for NATS (its ack timeout is 5 s): slowest during the outage {max_during:?}"
    );
    assert!(max_depth > 0, "the events waited in the outbox during the outage");
    assert_eq!(app.outbox_depth().await, 0);
    assert_eq!(
        tally.committed,
        sent.len() as i64,
        "every answered send committed one message"
    );
    assert_eq!(tally.duplicate_messages, 0);
    assert_eq!(tally.lost, 0, "{tally:?}");
    assert_eq!(tally.duplicates, 0, "{tally:?}");
    assert_eq!(tally.events, tally.committed, "{tally:?}");
    assert_eq!(tally.unique_event_ids, tally.committed, "{tally:?}");
}

/// `fechatter_server` as a child process on a fixed port.
async fn spawn_chat_server(env: &[(String, String)], port: u16) -> ChildProcess {
    let process = ChildProcess::spawn(
        env!("CARGO_BIN_EXE_fechatter_server"),
        Vec::<String>::new(),
        env.iter().cloned(),
    )
    .expect("fechatter_server spawns");
    let http = reqwest::Client::builder().no_proxy().build().expect("http client");
    let url = format!("http://127.0.0.1:{port}/health");
    wait_until(
        "fechatter_server to answer /health",
        Duration::from_secs(60),
        || async {
            let response = http.get(&url).send().await.ok()?;
            response.status().is_success().then_some(())
        },
    )
    .await
    .expect("fechatter_server starts");
    process
}

/// What one client saw: each message sent until a 2xx answer, the same idempotency key every time.
#[derive(Default)]
struct Retried {
    created: usize,
    replayed: usize,
    failed_attempts: usize,
    error_statuses: usize,
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_api_killed_with_sigkill_during_sends_every_committed_message_lands_exactly_once() {
    let test = "chat_api_killed_with_sigkill_during_sends_every_committed_message_lands_exactly_once";
    let _alone = ONE_AT_A_TIME.lock().await;
    let n_clients = sized(4, 8);
    let per_client = sized(250, 1250);
    let kills = sized(2, 5);
    let down = Duration::from_millis(300);
    let total = n_clients * per_client;
    assert!(per_client <= MAX_PER_CLIENT);

    // The in-process service creates the schema; then the binary takes over on a fixed port, so clients reach
    // every incarnation at the same address.
    let mut app = TestApp::start(&[]).await;
    app.stop().await;
    let ingester = Ingester::start(&app).await;
    let port = free_port();
    let mut env: Vec<(String, String)> = app
        .env()
        .into_iter()
        .filter(|(k, _)| k != "FECHATTER__SERVER__PORT")
        .collect();
    env.push(("FECHATTER__SERVER__PORT".into(), port.to_string()));
    env.push(("RUST_LOG".into(), "info,sqlx=warn".into()));
    app.port = port;
    let mut server = spawn_chat_server(&env, port).await;
    let clients = clients(&app, n_clients).await;

    let stop_sampling = CancellationToken::new();
    let sampler = sample_outbox_depth(app.pool.clone(), stop_sampling.clone());
    let confirmed = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let senders: Vec<JoinHandle<Retried>> = clients
        .into_iter()
        .map(|client| {
            let confirmed = confirmed.clone();
            tokio::spawn(async move {
                let mut seen = Retried::default();
                for k in 0..per_client {
                    loop {
                        match client.send(k).await {
                            Ok(StatusCode::CREATED) => seen.created += 1,
                            Ok(StatusCode::OK) => seen.replayed += 1,
                            Ok(status) if status.is_server_error() => {
                                seen.error_statuses += 1;
                                tokio::time::sleep(Duration::from_millis(20)).await;
                                continue;
                            }
                            Ok(status) => panic!("client {} message {k}: unexpected {status}", client.id),
                            Err(_) => {
                                // The server is gone (or going): try again, same key.
                                seen.failed_attempts += 1;
                                tokio::time::sleep(Duration::from_millis(20)).await;
                                continue;
                            }
                        }
                        confirmed.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
                seen
            })
        })
        .collect();

    let mut downtime = Duration::ZERO;
    for kill in 1..=kills {
        let at = total * kill / (kills + 1);
        wait_until("the clients to progress", Duration::from_secs(120), || async {
            (confirmed.load(Ordering::Relaxed) >= at).then_some(())
        })
        .await
        .expect("sends progress");
        let killed = Instant::now();
        server.kill().await;
        tokio::time::sleep(down).await;
        server = spawn_chat_server(&env, port).await;
        downtime += killed.elapsed();
    }
    let mut seen = Retried::default();
    for sender in senders {
        let client = sender.await.expect("client task");
        seen.created += client.created;
        seen.replayed += client.replayed;
        seen.failed_attempts += client.failed_attempts;
        seen.error_statuses += client.error_statuses;
    }
    let sending = started.elapsed();
    let tally = settled_tally(&app, &ingester, Duration::from_secs(sized(60, 180))).await;
    stop_sampling.cancel();
    let max_depth = sampler
        .await
        .expect("sampler")
        .iter()
        .map(|&(_, d)| d)
        .max()
        .unwrap_or(0);

    println!(
        "FIGURES {test}: clients={n_clients} messages={total} kills={kills} downtime_ms={} sending_ms={} \
         created_201={} replayed_200={} failed_attempts={} error_5xx={} max_outbox_depth={max_depth} \
         committed={} clickhouse_final={} uniq_event_ids={} raw_rows={} duplicates={} lost={}",
        ms(downtime),
        ms(sending),
        seen.created,
        seen.replayed,
        seen.failed_attempts,
        seen.error_statuses,
        tally.committed,
        tally.events,
        tally.unique_event_ids,
        tally.raw_rows,
        tally.duplicates,
        tally.lost,
    );

    assert!(server.is_running(), "the last incarnation still runs");
    assert!(seen.failed_attempts > 0, "the kills hit the clients' sends");
    assert_eq!(seen.created + seen.replayed, total, "every message was confirmed once");
    assert_eq!(
        tally.committed, total as i64,
        "retried sends committed each message once"
    );
    assert_eq!(tally.duplicate_messages, 0);
    assert_eq!(app.outbox_depth().await, 0);
    assert_eq!(tally.lost, 0, "{tally:?}");
    assert_eq!(tally.duplicates, 0, "{tally:?}");
    assert_eq!(tally.events, tally.committed, "{tally:?}");
    assert_eq!(tally.unique_event_ids, tally.committed, "{tally:?}");
}

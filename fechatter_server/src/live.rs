//! Live updates (server-sent events) of new, edited and deleted messages and membership changes, across
//! several server instances.
//!
//! A change and its notification commit together: the handler runs `pg_notify('chat_events', …)` in the
//! change's transaction ([`notify`]), and PostgreSQL delivers notifications only on commit, in commit order, to
//! every instance listening. So a client never hears of a change that rolled back, and every instance hears of
//! every change, whichever instance made it. The payload is a small [`Notice`] (kind, chat id, ids, and the
//! message itself when it fits PostgreSQL's 8000-byte limit); the receiving instance loads a message that did
//! not fit from the database.
//!
//! [`LiveHub::run`] holds one `LISTEN` connection per instance and fans each notice out to the instance's
//! subscribers through one bounded broadcast channel: the notice is parsed and its SSE data serialized once,
//! however many clients are connected. A subscriber that falls more than [`BUFFER_EVENTS`] behind loses the
//! oldest events rather than making the buffer grow; it is told to `resync` (refetch what it shows), as is
//! everyone when the `LISTEN` connection was lost, since notifications sent meanwhile are gone.
//!
//! Each [`Subscription`] filters by membership: it loads the caller's chat ids once, then keeps them current
//! from the member events that flow past (joins and leaves of the caller, deleted chats), reloading from the
//! database after any `resync`. Nobody receives events of a chat they are not a member of.

use crate::chat::Message;
use crate::chat::store;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, watch};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// The PostgreSQL notification channel of chat changes.
pub const CHANNEL: &str = "chat_events";
/// Largest notification payload sent; PostgreSQL refuses 8000 bytes and more.
pub const MAX_PAYLOAD_BYTES: usize = 7900;
/// Most ids in one notification (a 19-digit id and a comma each: well below the payload limit).
pub const MAX_IDS_PER_NOTICE: usize = 200;
/// Events a subscriber may fall behind before it loses the oldest and is told to resync.
pub const BUFFER_EVENTS: usize = 1024;
/// Open event streams per instance; more are refused with 429.
pub const MAX_SUBSCRIBERS: usize = 10_000;
/// Longest wait before listening again after the `LISTEN` connection failed.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LiveKind {
    /// A message was sent.
    MessageCreated,
    /// A message was edited.
    MessageUpdated,
    /// A message was deleted.
    MessageDeleted,
    /// A user became a member (also sent for every member of a new chat).
    MemberJoined,
    /// A user left or was removed.
    MemberLeft,
    /// The chat was renamed.
    ChatUpdated,
    /// The chat was deleted.
    ChatDeleted,
}

impl LiveKind {
    /// The SSE event name, also the `kind` field of its data.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MessageCreated => "message_created",
            Self::MessageUpdated => "message_updated",
            Self::MessageDeleted => "message_deleted",
            Self::MemberJoined => "member_joined",
            Self::MemberLeft => "member_left",
            Self::ChatUpdated => "chat_updated",
            Self::ChatDeleted => "chat_deleted",
        }
    }
}

/// A committed change, as carried by a notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// What changed.
    pub kind: LiveKind,
    /// The chat it changed in.
    pub chat_id: i64,
    /// Message ids (message kinds) or user ids (member kinds); empty for chat kinds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<i64>,
    /// The created or updated message, when it fits in the payload; otherwise receivers load it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Message>,
}

impl Notice {
    /// A message was created, updated or deleted.
    pub fn message(kind: LiveKind, message: &Message) -> Self {
        Self {
            kind,
            chat_id: message.chat_id,
            ids: vec![message.id],
            message: (kind != LiveKind::MessageDeleted).then(|| message.clone()),
        }
    }

    /// Users joined or left.
    pub fn members(kind: LiveKind, chat_id: i64, user_ids: &[i64]) -> Self {
        Self {
            kind,
            chat_id,
            ids: user_ids.to_vec(),
            message: None,
        }
    }

    /// The chat itself changed.
    pub fn chat(kind: LiveKind, chat_id: i64) -> Self {
        Self {
            kind,
            chat_id,
            ids: Vec::new(),
            message: None,
        }
    }

    /// The notification payloads: one per [`MAX_IDS_PER_NOTICE`] ids, each under [`MAX_PAYLOAD_BYTES`]; a
    /// message that would not fit is left out (receivers load it by id).
    pub fn payloads(&self) -> Result<Vec<String>, serde_json::Error> {
        let chunks: Vec<&[i64]> = if self.ids.is_empty() {
            vec![&[]]
        } else {
            self.ids.chunks(MAX_IDS_PER_NOTICE).collect()
        };
        let mut out = Vec::with_capacity(chunks.len());
        for ids in chunks {
            let mut notice = Self {
                kind: self.kind,
                chat_id: self.chat_id,
                ids: ids.to_vec(),
                message: self.message.clone(),
            };
            let mut payload = serde_json::to_string(&notice)?;
            if payload.len() > MAX_PAYLOAD_BYTES {
                notice.message = None;
                payload = serde_json::to_string(&notice)?;
            }
            out.push(payload);
        }
        Ok(out)
    }

    /// Message ids whose message this notice lacks and receivers must load.
    fn missing_messages(&self) -> &[i64] {
        match self.kind {
            LiveKind::MessageCreated | LiveKind::MessageUpdated if self.message.is_none() => &self.ids,
            _ => &[],
        }
    }

    /// The events to deliver; `loaded` holds the messages this notice lacked (one deleted since is skipped).
    pub fn into_events(self, loaded: &HashMap<i64, Message>) -> Vec<LiveEvent> {
        let Self {
            kind,
            chat_id,
            ids,
            message,
        } = self;
        let event = |user_id: Option<i64>, data: serde_json::Value| LiveEvent {
            kind,
            chat_id,
            user_id,
            data: data.to_string(),
        };
        let base = serde_json::json!({ "kind": kind.as_str(), "chat_id": chat_id });
        let with = |mut value: serde_json::Value, key: &str, extra: serde_json::Value| {
            value[key] = extra;
            value
        };
        match kind {
            LiveKind::MessageDeleted => ids
                .iter()
                .map(|&id| event(None, with(base.clone(), "message_id", id.into())))
                .collect(),
            LiveKind::MessageCreated | LiveKind::MessageUpdated => ids
                .iter()
                .filter_map(|id| message.as_ref().filter(|m| m.id == *id).or_else(|| loaded.get(id)))
                .filter(|m| m.chat_id == chat_id)
                .map(|m| {
                    let data = with(base.clone(), "message_id", m.id.into());
                    event(None, with(data, "message", serde_json::json!(m)))
                })
                .collect(),
            LiveKind::MemberJoined | LiveKind::MemberLeft => ids
                .iter()
                .map(|&id| event(Some(id), with(base.clone(), "user_id", id.into())))
                .collect(),
            LiveKind::ChatUpdated | LiveKind::ChatDeleted => vec![event(None, base)],
        }
    }
}

/// Notifies every instance of `notice` when the transaction on `conn` commits (and never if it rolls back).
pub async fn notify(conn: &mut PgConnection, notice: &Notice) -> Result<(), sqlx::Error> {
    let payloads = notice.payloads().map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    for payload in payloads {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(payload)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// One change as delivered to subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveEvent {
    /// What changed.
    pub kind: LiveKind,
    /// The chat it changed in; only its members receive it.
    pub chat_id: i64,
    /// The user who joined or left, for member events.
    pub user_id: Option<i64>,
    /// The SSE data: JSON with `kind`, `chat_id` and `message_id` + `message`, or `user_id`.
    pub data: String,
}

/// What the hub broadcasts.
#[derive(Debug, Clone)]
enum Broadcast {
    /// A change.
    Event(Arc<LiveEvent>),
    /// Changes may have been missed (the `LISTEN` connection was lost, or a message could not be loaded).
    Resync,
}

/// The chats one subscriber is a member of, kept current by the member events it sees.
#[derive(Debug, Clone)]
pub struct Membership {
    /// The subscriber.
    user_id: i64,
    /// Chats they are a member of.
    chats: HashSet<i64>,
}

impl Membership {
    /// `user_id`'s membership, currently `chats`.
    pub fn new(user_id: i64, chats: impl IntoIterator<Item = i64>) -> Self {
        Self {
            user_id,
            chats: chats.into_iter().collect(),
        }
    }

    /// How many chats.
    pub fn len(&self) -> usize {
        self.chats.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.chats.is_empty()
    }

    /// Whether the subscriber receives `event`, updating the membership from it: a user who joins receives the
    /// join and everything after; a user who leaves receives the leave and nothing after.
    pub fn admit(&mut self, event: &LiveEvent) -> bool {
        let mine = event.user_id == Some(self.user_id);
        match event.kind {
            LiveKind::MemberJoined if mine => {
                self.chats.insert(event.chat_id);
                true
            }
            LiveKind::MemberLeft if mine => self.chats.remove(&event.chat_id),
            LiveKind::ChatDeleted => self.chats.remove(&event.chat_id),
            _ => self.chats.contains(&event.chat_id),
        }
    }
}

/// Fans committed chat changes out to the connected clients of this instance.
#[derive(Clone)]
pub struct LiveHub {
    /// Shared by every clone: the handlers' (subscribe) and the listener task's (broadcast).
    inner: Arc<Inner>,
}

struct Inner {
    /// Every change, to every subscriber of this instance (bounded: laggards lose the oldest).
    events: broadcast::Sender<Broadcast>,
    /// Whether `LISTEN` is active, so subscribers announce `ready` only when no change can slip by.
    listening: watch::Sender<bool>,
    /// Cancelled when [`LiveHub::run`] returns, which ends every stream (graceful shutdown waits for them).
    stopped: CancellationToken,
    /// Permits for open streams.
    subscribers: Arc<Semaphore>,
}

impl Default for LiveHub {
    fn default() -> Self {
        Self::new()
    }
}

impl LiveHub {
    /// An empty hub.
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(BUFFER_EVENTS);
        Self {
            inner: Arc::new(Inner {
                events,
                listening: watch::Sender::new(false),
                stopped: CancellationToken::new(),
                subscribers: Arc::new(Semaphore::new(MAX_SUBSCRIBERS)),
            }),
        }
    }

    /// A subscription for `user_id`, or `None` when [`MAX_SUBSCRIBERS`] streams are open.
    pub fn subscribe(&self, pool: PgPool, user_id: i64) -> Option<Subscription> {
        let permit = self.inner.subscribers.clone().try_acquire_owned().ok()?;
        Some(Subscription {
            receiver: self.inner.events.subscribe(),
            listening: self.inner.listening.subscribe(),
            pool,
            user_id,
            membership: None,
            _permit: permit,
        })
    }

    /// Resolves when the hub has stopped; streams end then.
    pub fn stopped(&self) -> WaitForCancellationFutureOwned {
        self.inner.stopped.clone().cancelled_owned()
    }

    /// Listens for changes committed by any instance until `shutdown` is cancelled.
    pub async fn run(self, pool: PgPool, shutdown: CancellationToken) {
        let mut failures = 0u32;
        let mut listened_before = false;
        'connect: while !shutdown.is_cancelled() {
            let connected = tokio::select! {
                _ = shutdown.cancelled() => break 'connect,
                connected = listen(&pool) => connected,
            };
            match connected {
                Ok(mut listener) => {
                    failures = 0;
                    self.inner.listening.send_replace(true);
                    if listened_before {
                        // Notifications sent while we were not listening are gone.
                        self.resync();
                    }
                    listened_before = true;
                    tracing::info!(channel = CHANNEL, "live updates listening");
                    loop {
                        let received = tokio::select! {
                            _ = shutdown.cancelled() => break 'connect,
                            received = listener.try_recv() => received,
                        };
                        match received {
                            Ok(Some(notification)) => self.dispatch(&pool, notification.payload()).await,
                            Ok(None) => {
                                // sqlx has connected and listened again already; what was sent meanwhile is gone.
                                tracing::warn!("live updates connection lost and re-established");
                                self.resync();
                            }
                            Err(err) => {
                                tracing::warn!(error = %crate::error_chain(&err), "live updates connection failed");
                                break;
                            }
                        }
                    }
                    self.inner.listening.send_replace(false);
                }
                Err(err) => {
                    tracing::warn!(error = %crate::error_chain(&err), "live updates cannot listen");
                }
            }
            failures = failures.saturating_add(1);
            tokio::select! {
                _ = shutdown.cancelled() => break 'connect,
                _ = tokio::time::sleep(backoff(failures)) => {}
            }
        }
        self.inner.listening.send_replace(false);
        self.inner.stopped.cancel();
        tracing::info!("live updates stopped");
    }

    /// Parses a notification, loads what it lacks, and broadcasts its events.
    async fn dispatch(&self, pool: &PgPool, payload: &str) {
        if self.inner.events.receiver_count() == 0 {
            return;
        }
        let notice: Notice = match serde_json::from_str(payload) {
            Ok(notice) => notice,
            Err(err) => {
                // Only this service notifies on the channel, so this is a bug, not an attack; say so loudly.
                tracing::error!(error = %err, "undecodable live update notification ignored");
                return;
            }
        };
        let mut loaded = HashMap::new();
        if !notice.missing_messages().is_empty() {
            match load_messages(pool, notice.missing_messages()).await {
                Ok(messages) => loaded.extend(messages.into_iter().map(|m| (m.id, m))),
                Err(err) => {
                    tracing::warn!(error = %crate::error_chain(&err), "could not load a notified message");
                    self.resync();
                    return;
                }
            }
        }
        for event in notice.into_events(&loaded) {
            // Err means nobody is subscribed any more: nothing to do.
            let _ = self.inner.events.send(Broadcast::Event(Arc::new(event)));
        }
    }

    fn resync(&self) {
        let _ = self.inner.events.send(Broadcast::Resync);
    }
}

async fn listen(pool: &PgPool) -> Result<sqlx::postgres::PgListener, sqlx::Error> {
    let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

async fn load_messages(pool: &PgPool, ids: &[i64]) -> Result<Vec<Message>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    store::messages_by_ids(&mut conn, ids).await
}

/// Wait before the `failures`-th attempt to listen again: doubling from 100 ms, capped at [`MAX_BACKOFF`],
/// with up to 50% jitter so instances do not reconnect in lockstep.
pub fn backoff(failures: u32) -> Duration {
    let base = (Duration::from_millis(100) * 2u32.saturating_pow(failures.min(16))).min(MAX_BACKOFF);
    base + base.mul_f64(rand::random::<f64>() / 2.0)
}

/// What a subscriber receives.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// The stream is live: the membership is loaded and every later change will be delivered.
    Ready {
        /// Chats the subscriber is a member of.
        chats: usize,
    },
    /// A change in one of the subscriber's chats.
    Event(Arc<LiveEvent>),
    /// Changes may have been missed; the client should refetch what it shows.
    Resync {
        /// Events this subscriber lost by falling behind (0 when the hub lost its connection).
        missed: u64,
    },
}

/// One client's stream of changes in the chats they are a member of.
pub struct Subscription {
    /// The hub's broadcast, subscribed before the membership is loaded so no change can fall in between.
    receiver: broadcast::Receiver<Broadcast>,
    /// Whether the hub listens.
    listening: watch::Receiver<bool>,
    /// To load the membership.
    pool: PgPool,
    /// The subscriber.
    user_id: i64,
    /// `None` until loaded, after the hub listens.
    membership: Option<Membership>,
    /// Counts this stream against [`MAX_SUBSCRIBERS`] until dropped.
    _permit: OwnedSemaphorePermit,
}

impl Subscription {
    /// The next delivery; `None` ends the stream (the hub stopped, or the membership could not be loaded, in
    /// which case the client reconnects).
    pub async fn next(&mut self) -> Option<Delivery> {
        let Some(membership) = self.membership.as_mut() else {
            // Load only once the hub listens: a membership change committed before would otherwise be missed.
            self.listening.wait_for(|listening| *listening).await.ok()?;
            let membership = self.load().await?;
            let chats = membership.len();
            self.membership = Some(membership);
            return Some(Delivery::Ready { chats });
        };
        loop {
            match self.receiver.recv().await {
                Ok(Broadcast::Event(event)) => {
                    if membership.admit(&event) {
                        return Some(Delivery::Event(event));
                    }
                }
                Ok(Broadcast::Resync) => return self.reload(0).await,
                Err(RecvError::Lagged(missed)) => return self.reload(missed).await,
                Err(RecvError::Closed) => return None,
            }
        }
    }

    async fn reload(&mut self, missed: u64) -> Option<Delivery> {
        self.membership = Some(self.load().await?);
        Some(Delivery::Resync { missed })
    }

    async fn load(&self) -> Option<Membership> {
        let loaded = async {
            let mut conn = self.pool.acquire().await?;
            store::chat_ids_of(&mut conn, self.user_id).await
        };
        match loaded.await {
            Ok(chats) => Some(Membership::new(self.user_id, chats)),
            Err(err) => {
                tracing::warn!(user_id = self.user_id, error = %crate::error_chain(&err), "event stream ended: membership not loaded");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn message(id: i64, chat_id: i64, content: &str) -> Message {
        Message {
            id,
            chat_id,
            sender_id: 7,
            content: content.to_owned(),
            files: Vec::new(),
            created_at: Utc::now(),
            edited_at: None,
        }
    }

    fn decode(payload: &str) -> Notice {
        serde_json::from_str(payload).expect("notice")
    }

    #[test]
    fn a_small_message_travels_inside_its_notification() {
        let m = message(5, 2, "hello");
        let payloads = Notice::message(LiveKind::MessageCreated, &m)
            .payloads()
            .expect("payloads");
        assert_eq!(payloads.len(), 1);
        let notice = decode(&payloads[0]);
        assert_eq!(notice.message.as_ref(), Some(&m));
        assert!(notice.missing_messages().is_empty());
    }

    #[test]
    fn a_message_too_large_for_a_notification_is_left_for_receivers_to_load() {
        let m = message(5, 2, &"€".repeat(4000));
        let payloads = Notice::message(LiveKind::MessageCreated, &m)
            .payloads()
            .expect("payloads");
        assert!(payloads[0].len() <= MAX_PAYLOAD_BYTES);
        let notice = decode(&payloads[0]);
        assert_eq!((notice.message, notice.ids.as_slice()), (None, &[5][..]));
    }

    #[test]
    fn many_member_ids_are_split_into_notifications_below_the_limit() {
        let ids: Vec<i64> = (0..1000).map(|i| i64::MAX - i).collect();
        let payloads = Notice::members(LiveKind::MemberJoined, 1, &ids)
            .payloads()
            .expect("payloads");
        assert_eq!(payloads.len(), 5);
        assert!(payloads.iter().all(|p| p.len() < MAX_PAYLOAD_BYTES));
        let carried: Vec<i64> = payloads.iter().flat_map(|p| decode(p).ids).collect();
        assert_eq!(carried, ids);
    }

    #[test]
    fn events_carry_the_kind_chat_and_message_or_user_as_json() {
        let m = message(5, 2, "hi");
        let events = decode(&Notice::message(LiveKind::MessageCreated, &m).payloads().expect("p")[0])
            .into_events(&HashMap::new());
        let data: serde_json::Value = serde_json::from_str(&events[0].data).expect("json");
        assert_eq!(data["kind"], "message_created");
        assert_eq!(
            (data["chat_id"].as_i64(), data["message_id"].as_i64()),
            (Some(2), Some(5))
        );
        assert_eq!(data["message"]["content"], "hi");

        let events = Notice::members(LiveKind::MemberLeft, 2, &[8, 9]).into_events(&HashMap::new());
        assert_eq!(
            events.iter().map(|e| e.user_id).collect::<Vec<_>>(),
            vec![Some(8), Some(9)]
        );
        let data: serde_json::Value = serde_json::from_str(&events[1].data).expect("json");
        assert_eq!(
            (data["kind"].as_str(), data["user_id"].as_i64()),
            (Some("member_left"), Some(9))
        );
    }

    #[test]
    fn a_loaded_message_fills_in_and_a_vanished_one_is_skipped() {
        let notice = Notice {
            kind: LiveKind::MessageUpdated,
            chat_id: 2,
            ids: vec![5, 6],
            message: None,
        };
        let loaded = HashMap::from([(5, message(5, 2, "loaded"))]);
        let events = notice.into_events(&loaded);
        assert_eq!(events.len(), 1);
        assert!(events[0].data.contains("loaded"));
    }

    fn event(kind: LiveKind, chat_id: i64, user_id: Option<i64>) -> LiveEvent {
        LiveEvent {
            kind,
            chat_id,
            user_id,
            data: String::new(),
        }
    }

    #[test]
    fn subscribers_receive_only_events_of_their_chats() {
        let mut m = Membership::new(1, [10]);
        assert!(m.admit(&event(LiveKind::MessageCreated, 10, None)));
        assert!(!m.admit(&event(LiveKind::MessageCreated, 11, None)));
        assert!(!m.admit(&event(LiveKind::MemberJoined, 11, Some(2))));
        assert!(m.admit(&event(LiveKind::MemberJoined, 10, Some(2))));
    }

    #[test]
    fn joining_and_leaving_update_the_membership_as_the_events_pass() {
        let mut m = Membership::new(1, []);
        assert!(m.admit(&event(LiveKind::MemberJoined, 11, Some(1))));
        assert!(m.admit(&event(LiveKind::MessageCreated, 11, None)));
        assert!(m.admit(&event(LiveKind::MemberLeft, 11, Some(1))));
        assert!(!m.admit(&event(LiveKind::MessageCreated, 11, None)));
        assert!(m.admit(&event(LiveKind::MemberJoined, 12, Some(1))));
        assert!(m.admit(&event(LiveKind::ChatDeleted, 12, None)));
        assert!(!m.admit(&event(LiveKind::MessageCreated, 12, None)));
        assert!(m.is_empty());
    }

    #[test]
    fn backoff_doubles_up_to_five_seconds_with_bounded_jitter() {
        let first = backoff(1);
        assert!(
            first >= Duration::from_millis(200) && first <= Duration::from_millis(300),
            "{first:?}"
        );
        for failures in [10, 100, u32::MAX] {
            let wait = backoff(failures);
            assert!(wait >= MAX_BACKOFF && wait <= MAX_BACKOFF.mul_f64(1.5), "{wait:?}");
        }
    }
}

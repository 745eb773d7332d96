//! Live updates (server-sent events) of new, edited and deleted messages and membership changes, across
//! several server instances.
//!
//! A change and its notice commit together: the handler writes a [`Notice`] (kind, chat id, ids, and the
//! message itself) to the journal in the change's transaction ([`notify`], [`journal`]), so a client never
//! hears of a change that rolled back, and every instance reads every change, whichever instance made it.
//!
//! [`LiveHub::run`] reads the journal from one task per instance and fans each notice out to the instance's
//! subscribers through one bounded broadcast channel: the notice is parsed and its SSE data serialized once,
//! however many clients are connected. It reads when woken, three ways:
//! - a change committed by this instance: the handler calls [`LiveHub::committed`] (in memory);
//! - a change committed by another instance: that instance's hub, having read it, sends one `NOTIFY` on
//!   [`WAKE_CHANNEL`] (its own transaction, not the change's: see [`journal`] for why) to the others;
//! - every [`POLL_INTERVAL`], for a change whose instance stopped before waking anyone.
//!
//! A subscriber that falls more than [`BUFFER_EVENTS`] behind loses the oldest events rather than making the
//! buffer grow; it is told to `resync` (refetch what it shows), as is everyone when the hub could not read the
//! journal for [`journal::STALE_AFTER`]. A shorter outage loses nothing: the hub resumes where it was.
//!
//! Each [`Subscription`] filters by membership: it loads the caller's chat ids once, then keeps them current
//! from the member events that flow past (joins and leaves of the caller, deleted chats), reloading from the
//! database after any `resync`. Nobody receives events of a chat they are not a member of.

pub mod journal;
pub mod slots;

pub use slots::{MAX_STREAMS_PER_USER, MAX_SUBSCRIBERS, Refused};
use slots::{Slot, Slots};

use crate::chat::Message;
use crate::chat::store;
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{Notify, Semaphore, broadcast, watch};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// The PostgreSQL notification channel on which hubs wake each other after reading their own instance's changes.
pub const WAKE_CHANNEL: &str = "chat_events";
/// Longest time between two reads of the journal.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Most notices one read returns; a hub that finds more tells its subscribers to resync. Reads follow each
/// other within milliseconds under load, so only an outage fills one; the bound keeps a read's memory under
/// ~45 MB even when every notice carries a 4,000-character message with 10 file references. Above
/// [`BUFFER_EVENTS`], a subscriber would lose the oldest anyway.
pub const MAX_NOTICES_PER_READ: usize = 2_000;
/// How long a woken hub waits for the changes committing alongside the one that woke it. Each read is a query;
/// under load, at 2 ms the hub read a few hundred times a second and sends ran 7-10 % slower than at 10 ms
/// (`send_bench`, noisy). 10 ms is well below what a person in a chat notices.
const COALESCE: Duration = Duration::from_millis(10);
/// Most subscribers of one instance loading their membership at once. A resync reaches every stream together (up
/// to [`MAX_SUBSCRIBERS`]), and each reloads its chats on a connection of the server's pool: unbounded, they would
/// take every connection, and the API's requests would time out waiting for one. Loads queue for these instead.
pub const MAX_CONCURRENT_LOADS: usize = 4;

/// Events a subscriber may fall behind before it loses the oldest and is told to resync.
pub const BUFFER_EVENTS: usize = 1024;
/// Longest wait before reading the journal again after a failed read.
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
    /// Whether it changes who is in a chat (joins, leaves, the chat's deletion).
    pub fn is_membership(self) -> bool {
        matches!(self, Self::MemberJoined | Self::MemberLeft | Self::ChatDeleted)
    }

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

/// A committed change, as written to the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// What changed.
    pub kind: LiveKind,
    /// The chat it changed in.
    pub chat_id: i64,
    /// Message ids (message kinds) or user ids (member kinds); empty for chat kinds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<i64>,
    /// The created or updated message (none for the other kinds).
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

    /// The events to deliver.
    pub fn into_events(self) -> Vec<LiveEvent> {
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
            withheld_from: Vec::new(),
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
                .filter_map(|id| message.as_ref().filter(|m| m.id == *id))
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

/// Tells every instance of `notice` when the transaction on `conn` commits (and never if it rolls back). Call
/// [`LiveHub::committed`] once it has.
pub async fn notify(conn: &mut PgConnection, notice: &Notice) -> Result<(), sqlx::Error> {
    let notice = serde_json::to_string(notice).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    journal::append(conn, &notice).await
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
    /// Members who do not receive it although the chat is theirs when it comes: they leave the chat in the same
    /// journal read (see `withheld_from_leavers`).
    pub withheld_from: Vec<i64>,
}

/// What the hub broadcasts.
#[derive(Debug, Clone)]
enum Broadcast {
    /// A change.
    Event(Arc<LiveEvent>),
    /// Changes may have been missed (the journal could not be read for a while, or a read overflowed).
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
            _ => self.chats.contains(&event.chat_id) && !event.withheld_from.contains(&self.user_id),
        }
    }
}

/// A notice read from the journal; `None` (logged) when it does not parse.
fn parse(notice: &str) -> Option<Notice> {
    serde_json::from_str(notice)
        .inspect_err(|err| {
            // Only this service writes the journal, so this is a bug, not an attack; say so loudly.
            tracing::error!(error = %err, "undecodable live update notice ignored");
        })
        .ok()
}

/// The events of one read's notices, in read order, each chat's messages and chat changes withheld from the
/// members who leave that chat in the same read.
///
/// Why: a read returns the changes of several transactions in transaction-id order, which is not always their
/// commit order. A message committed just after a member's removal could come before the removal and reach the
/// removed member, whom the API would refuse it. So a member removed in a read receives none of that read's
/// messages of the chat (at worst missing one committed just before the removal, within the same few
/// milliseconds), while everyone else receives everything in read order.
fn withheld_from_leavers(notices: Vec<Notice>) -> Vec<LiveEvent> {
    let mut leaving: HashMap<i64, Vec<i64>> = HashMap::new();
    for notice in notices.iter().filter(|n| n.kind == LiveKind::MemberLeft) {
        leaving.entry(notice.chat_id).or_default().extend(&notice.ids);
    }
    let mut events: Vec<LiveEvent> = notices.into_iter().flat_map(Notice::into_events).collect();
    for event in &mut events {
        if !event.kind.is_membership()
            && let Some(leavers) = leaving.get(&event.chat_id)
        {
            event.withheld_from.clone_from(leavers);
        }
    }
    events
}

/// Fans committed chat changes out to the connected clients of this instance.
#[derive(Clone)]
pub struct LiveHub {
    /// Shared by every clone: the handlers' (subscribe, committed) and the reader task's (broadcast).
    inner: Arc<Inner>,
}

struct Inner {
    /// Every change, to every subscriber of this instance (bounded: laggards lose the oldest).
    events: broadcast::Sender<Broadcast>,
    /// Whether the hub holds a journal cursor, so subscribers announce `ready` only when no change can slip by.
    following: watch::Sender<bool>,
    /// Woken by this instance's handlers once a change committed.
    committed: Notify,
    /// This hub's payload on [`WAKE_CHANNEL`], so that it ignores its own wake-ups.
    name: String,
    /// Longest time between two reads ([`POLL_INTERVAL`] but in tests).
    poll_interval: Duration,
    /// Cancelled when [`LiveHub::run`] returns, which ends every stream (graceful shutdown waits for them).
    stopped: CancellationToken,
    /// Places for open streams.
    slots: Slots,
    /// Permits to load a membership, [`MAX_CONCURRENT_LOADS`] in all.
    loads: Arc<Semaphore>,
}

impl Default for LiveHub {
    fn default() -> Self {
        Self::new()
    }
}

impl LiveHub {
    /// An empty hub.
    pub fn new() -> Self {
        Self::polling_every(POLL_INTERVAL)
    }

    /// An empty hub that reads the journal at least every `poll_interval`.
    pub fn polling_every(poll_interval: Duration) -> Self {
        let (events, _) = broadcast::channel(BUFFER_EVENTS);
        Self {
            inner: Arc::new(Inner {
                events,
                following: watch::Sender::new(false),
                committed: Notify::new(),
                name: uuid::Uuid::new_v4().to_string(),
                poll_interval,
                stopped: CancellationToken::new(),
                slots: Slots::default(),
                loads: Arc::new(Semaphore::new(MAX_CONCURRENT_LOADS)),
            }),
        }
    }

    /// A subscription for `user_id`, refused when [`MAX_SUBSCRIBERS`] streams are open, or
    /// [`MAX_STREAMS_PER_USER`] of the user's.
    pub fn subscribe(&self, pool: PgPool, user_id: i64) -> Result<Subscription, Refused> {
        let slot = self.inner.slots.take(user_id)?;
        Ok(Subscription {
            receiver: self.inner.events.subscribe(),
            following: self.inner.following.subscribe(),
            pool,
            loads: self.inner.loads.clone(),
            user_id,
            membership: None,
            _slot: slot,
        })
    }

    /// Resolves when the hub has stopped; streams end then.
    pub fn stopped(&self) -> WaitForCancellationFutureOwned {
        self.inner.stopped.clone().cancelled_owned()
    }

    /// Wakes the hub to read the journal: call it once a transaction that called [`notify`] has committed.
    /// Without it the change still arrives, within [`POLL_INTERVAL`].
    pub fn committed(&self) {
        self.inner.committed.notify_one();
    }

    /// Reads the changes committed by any instance until `shutdown` is cancelled.
    pub async fn run(self, pool: PgPool, shutdown: CancellationToken) {
        let mut cursor: Option<journal::Cursor> = None;
        let mut pruner = journal::Pruner::default();
        let mut listener: Option<PgListener> = None;
        let mut listen_again_at = tokio::time::Instant::now();
        let mut failures = 0u32;
        let mut woken_here = false;
        while !shutdown.is_cancelled() {
            // Cancelling a round is safe: the cursor moves only once a read returned.
            let round = tokio::select! {
                _ = shutdown.cancelled() => break,
                round = self.round(&pool, &mut cursor, &mut pruner) => round,
            };
            match round {
                Ok(read) => {
                    if failures > 0 {
                        tracing::info!("live updates reading the journal again");
                    }
                    failures = 0;
                    if read > 0 && woken_here {
                        self.wake_others(&pool).await;
                    }
                }
                Err(err) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %crate::error_chain(&err), "live updates cannot read the journal");
                }
            }
            if listener.is_none() && failures == 0 && tokio::time::Instant::now() >= listen_again_at {
                listener = listen(&pool).await;
                listen_again_at = tokio::time::Instant::now() + self.inner.poll_interval.min(POLL_INTERVAL);
            }
            woken_here = false;
            let wait = if failures == 0 {
                self.inner.poll_interval
            } else {
                backoff(failures)
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
                () = self.inner.committed.notified(), if failures == 0 => {
                    // The changes committing alongside join this read; their own wake-ups are stored as one
                    // permit, so at most one nearly empty read follows.
                    woken_here = true;
                    tokio::time::sleep(COALESCE).await;
                }
                woken = wake(&mut listener, &self.inner.name), if failures == 0 => {
                    if !woken {
                        listener = None;
                    }
                }
            }
        }
        self.inner.following.send_replace(false);
        self.inner.stopped.cancel();
        tracing::info!("live updates stopped");
    }

    /// One read of the journal: from a new cursor when there is none or it went stale (subscribers resync
    /// then), broadcasting what was committed since. Returns how many notices were read.
    async fn round(
        &self,
        pool: &PgPool,
        cursor: &mut Option<journal::Cursor>,
        pruner: &mut journal::Pruner,
    ) -> Result<usize, sqlx::Error> {
        if cursor.as_ref().is_some_and(journal::Cursor::is_stale) {
            tracing::warn!("live updates fell behind the journal; subscribers resync");
            *cursor = None;
            self.inner.following.send_replace(false);
            self.resync();
        }
        let cursor = match cursor {
            Some(cursor) => cursor,
            None => {
                let fresh = cursor.insert(journal::Cursor::now(pool).await?);
                self.inner.following.send_replace(true);
                tracing::info!("live updates following the journal");
                fresh
            }
        };
        let read = match journal::read(pool, cursor, MAX_NOTICES_PER_READ).await? {
            journal::Read::Notices(notices) => {
                let read = notices.len();
                if self.inner.events.receiver_count() > 0 {
                    for event in withheld_from_leavers(notices.iter().filter_map(|n| parse(n)).collect()) {
                        // Err means nobody is subscribed any more: nothing to do.
                        let _ = self.inner.events.send(Broadcast::Event(Arc::new(event)));
                    }
                }
                read
            }
            journal::Read::Overflow => {
                tracing::warn!(
                    limit = MAX_NOTICES_PER_READ,
                    "live updates: more changes than one read holds; subscribers resync"
                );
                self.resync();
                MAX_NOTICES_PER_READ
            }
        };
        match pruner.maybe_prune(pool, cursor).await {
            Ok(0) => {}
            Ok(deleted) => tracing::debug!(deleted, "live updates journal pruned"),
            // Not fatal: the next prune deletes them.
            Err(err) => tracing::warn!(error = %crate::error_chain(&err), "live updates journal not pruned"),
        }
        Ok(read)
    }

    /// Tells the other instances' hubs to read now rather than at their next [`POLL_INTERVAL`].
    async fn wake_others(&self, pool: &PgPool) {
        let sent = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(WAKE_CHANNEL)
            .bind(&self.inner.name)
            .execute(pool)
            .await;
        if let Err(err) = sent {
            tracing::debug!(error = %crate::error_chain(&err), "live updates wake-up not sent; others poll");
        }
    }

    fn resync(&self) {
        let _ = self.inner.events.send(Broadcast::Resync);
    }
}

async fn listen(pool: &PgPool) -> Option<PgListener> {
    let listening = async {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(WAKE_CHANNEL).await?;
        Ok::<_, sqlx::Error>(listener)
    };
    match listening.await {
        Ok(listener) => Some(listener),
        Err(err) => {
            tracing::warn!(error = %crate::error_chain(&err), "live updates cannot listen for wake-ups; polling");
            None
        }
    }
}

/// Waits for another hub's wake-up, then for the wake-ups following it; false when the listener failed (the
/// hub polls until it listens again).
async fn wake(listener: &mut Option<PgListener>, own: &str) -> bool {
    let Some(l) = listener else {
        return std::future::pending().await;
    };
    loop {
        match l.try_recv().await {
            Ok(Some(notification)) if notification.payload() == own => continue,
            Ok(Some(_)) => break,
            // The connection was lost and is re-established by the next call: wake-ups sent meanwhile are
            // gone, so read now.
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
    tokio::time::sleep(COALESCE).await;
    while l.next_buffered().is_some() {}
    true
}

/// Wait before the `failures`-th attempt to read the journal again: doubling from 100 ms, capped at [`MAX_BACKOFF`],
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
        /// Events this subscriber lost by falling behind (0 when the hub fell behind the journal).
        missed: u64,
    },
}

/// One client's stream of changes in the chats they are a member of.
pub struct Subscription {
    /// The hub's broadcast, subscribed before the membership is loaded so no change can fall in between.
    receiver: broadcast::Receiver<Broadcast>,
    /// Whether the hub follows the journal.
    following: watch::Receiver<bool>,
    /// To load the membership.
    pool: PgPool,
    /// The hub's permits to load one ([`MAX_CONCURRENT_LOADS`]).
    loads: Arc<Semaphore>,
    /// The subscriber.
    user_id: i64,
    /// `None` until loaded, once the hub follows the journal.
    membership: Option<Membership>,
    /// This stream's place among the open ones, until dropped.
    _slot: Slot,
}

impl Subscription {
    /// The next delivery; `None` ends the stream (the hub stopped, or the membership could not be loaded, in
    /// which case the client reconnects).
    pub async fn next(&mut self) -> Option<Delivery> {
        let Some(membership) = self.membership.as_mut() else {
            // Load only once the hub follows the journal: a membership change committed before would otherwise
            // be missed.
            self.following.wait_for(|following| *following).await.ok()?;
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
            // The hub's semaphore is never closed.
            let _permit = self.loads.acquire().await.ok();
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

    /// A notice as the journal carries it.
    fn through_journal(notice: &Notice) -> Notice {
        serde_json::from_str(&serde_json::to_string(notice).expect("encode")).expect("decode")
    }

    #[test]
    fn a_member_removed_in_a_read_receives_none_of_its_messages_and_the_others_all_in_order() {
        // Read in transaction-id order: the message's transaction started first, but committed after the removal.
        let read = [
            Notice::message(LiveKind::MessageCreated, &message(5, 2, "after the removal")),
            Notice::members(LiveKind::MemberLeft, 2, &[1]),
            Notice::message(LiveKind::MessageUpdated, &message(4, 3, "elsewhere")),
        ];
        let events = withheld_from_leavers(read.iter().map(through_journal).collect());
        let admitted = |mut member: Membership| -> Vec<LiveKind> {
            events.iter().filter(|e| member.admit(e)).map(|e| e.kind).collect()
        };
        assert_eq!(
            admitted(Membership::new(1, [2, 3])),
            [LiveKind::MemberLeft, LiveKind::MessageUpdated],
            "the leave itself, and another chat's change"
        );
        assert_eq!(
            admitted(Membership::new(8, [2])),
            [LiveKind::MessageCreated, LiveKind::MemberLeft],
            "a bystander receives all, in read order"
        );
    }

    #[test]
    fn a_message_travels_whole_inside_its_notice() {
        let m = message(5, 2, &"€".repeat(4000));
        let notice = through_journal(&Notice::message(LiveKind::MessageCreated, &m));
        assert_eq!(notice.message.as_ref(), Some(&m));
        let deleted = through_journal(&Notice::message(LiveKind::MessageDeleted, &m));
        assert_eq!((deleted.message, deleted.ids), (None, vec![5]));
    }

    #[test]
    fn events_carry_the_kind_chat_and_message_or_user_as_json() {
        let m = message(5, 2, "hi");
        let events = through_journal(&Notice::message(LiveKind::MessageCreated, &m)).into_events();
        let data: serde_json::Value = serde_json::from_str(&events[0].data).expect("json");
        assert_eq!(data["kind"], "message_created");
        assert_eq!(
            (data["chat_id"].as_i64(), data["message_id"].as_i64()),
            (Some(2), Some(5))
        );
        assert_eq!(data["message"]["content"], "hi");

        let events = Notice::members(LiveKind::MemberLeft, 2, &[8, 9]).into_events();
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
    fn a_message_notice_of_another_chat_or_message_delivers_nothing() {
        let notice = Notice {
            kind: LiveKind::MessageUpdated,
            chat_id: 2,
            ids: vec![5, 6],
            message: Some(message(5, 3, "elsewhere")),
        };
        assert!(notice.into_events().is_empty());
    }

    fn event(kind: LiveKind, chat_id: i64, user_id: Option<i64>) -> LiveEvent {
        LiveEvent {
            kind,
            chat_id,
            user_id,
            data: String::new(),
            withheld_from: Vec::new(),
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

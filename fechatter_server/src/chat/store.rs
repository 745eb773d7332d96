//! The chat domain's SQL. Every function takes the connection to run on — a transaction when the statement is
//! part of a change that also writes an analytics event or a live-update notice, so all commit together.
//!
//! Every value is a bound parameter; no SQL text is ever built from input.

use super::model::{Chat, ChatType, Member, Message};
use super::policy::{self, Access, ChatHead};
use crate::analytics::outbox::OutboxRow;
use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::live::LiveKind;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Row as _};

/// Columns of [`Chat`], selected from `chats c`. `last_activity_at` is the newest message's time (one probe of
/// `messages_chat_id_idx`), or the chat's creation when it has none: derived rather than stored, because storing
/// it meant every send updating its chat's row, one row that all sends to a busy chat contend for (see
/// [`send_messages`]).
///
/// Macros rather than constants so that statements are `concat!`-ed into `&'static str` at compile time: no SQL
/// is ever assembled at run time.
macro_rules! chat_columns {
    () => {
        concat!(
            "c.id, c.name, c.chat_type, c.owner_id, c.workspace_id, c.created_at, ",
            chat_activity!(),
            " AS last_activity_at, \
             ARRAY(SELECT m.user_id FROM chat_members m WHERE m.chat_id = c.id ORDER BY m.user_id LIMIT 100) \
                 AS members, \
             (SELECT count(*) FROM chat_members m WHERE m.chat_id = c.id) AS member_count"
        )
    };
}

/// The `last_activity_at` of chat `c` (see [`chat_columns`]).
macro_rules! chat_activity {
    () => {
        "GREATEST(c.last_activity_at, (SELECT lm.created_at FROM messages lm WHERE lm.chat_id = c.id \
             ORDER BY lm.id DESC LIMIT 1))"
    };
}

/// Columns of [`Message`].
macro_rules! message_columns {
    () => {
        "id, chat_id, sender_id, content, files, created_at, edited_at"
    };
}

/// The statement of [`access`] and [`access_for_change`]: the chat's head and whether `$2` is a member of it.
macro_rules! access_query {
    () => {
        "SELECT c.workspace_id, c.owner_id, c.chat_type, \
         EXISTS (SELECT 1 FROM chat_members m WHERE m.chat_id = c.id AND m.user_id = $2) AS is_member \
         FROM chats c WHERE c.id = $1"
    };
}

/// The caller's access to chat `chat_id`; 404 when it does not exist or must look absent to them.
pub async fn access(conn: &mut PgConnection, chat_id: i64, caller: AuthUser) -> Result<Access, ApiError> {
    let row = sqlx::query(access_query!())
        .bind(chat_id)
        .bind(caller.user_id)
        .fetch_optional(&mut *conn)
        .await?;
    access_of(row, chat_id, caller)
}

/// [`access`] for a transaction that adds rows referencing the chat (members): it also holds the chat's row
/// (`FOR KEY SHARE`, the lock the foreign-key check of such an insert takes anyway) until the transaction ends.
/// Without it, a chat deleted between the check and the insert failed the insert with a foreign-key violation
/// (500); now the deletion waits for the change, or the change waits for the deletion and gets 404 here.
pub async fn access_for_change(conn: &mut PgConnection, chat_id: i64, caller: AuthUser) -> Result<Access, ApiError> {
    let row = sqlx::query(concat!(access_query!(), " FOR KEY SHARE OF c"))
        .bind(chat_id)
        .bind(caller.user_id)
        .fetch_optional(&mut *conn)
        .await?;
    access_of(row, chat_id, caller)
}

/// The access an [`access_query!`] row grants `caller`; 404 without a row or a role.
fn access_of(row: Option<sqlx::postgres::PgRow>, chat_id: i64, caller: AuthUser) -> Result<Access, ApiError> {
    let row = row.ok_or(ApiError::NotFound("chat"))?;
    let chat_type: String = row.try_get("chat_type")?;
    let chat = ChatHead {
        id: chat_id,
        workspace_id: row.try_get("workspace_id")?,
        owner_id: row.try_get("owner_id")?,
        chat_type: ChatType::try_from(chat_type).map_err(|e| ApiError::Internal(anyhow::anyhow!(e)))?,
    };
    let is_member: bool = row.try_get("is_member")?;
    let role = policy::role(&chat, caller, is_member).ok_or(ApiError::NotFound("chat"))?;
    Ok(Access { chat, role })
}

/// Chat `chat_id` with its members.
pub async fn chat(conn: &mut PgConnection, chat_id: i64) -> Result<Chat, ApiError> {
    sqlx::query_as::<_, Chat>(concat!("SELECT ", chat_columns!(), " FROM chats c WHERE c.id = $1"))
        .bind(chat_id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(ApiError::NotFound("chat"))
}

/// Where a page of a caller's chats starts: after the chat with this activity time and id, the last of the
/// previous page (chats are ordered by both, newest first, so that chats active at the same instant are neither
/// skipped nor repeated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatCursor {
    /// The previous page's last `last_activity_at`.
    pub activity: DateTime<Utc>,
    /// The previous page's last chat id.
    pub id: i64,
}

/// Up to `limit` chats `caller` is a member of, most recently active first, after `after` (from the first when
/// `None`).
///
/// The activity of every chat of the caller is computed to order them (one index probe each); the members of the
/// page's chats only.
pub async fn chats_of(
    conn: &mut PgConnection,
    caller: AuthUser,
    after: Option<ChatCursor>,
    limit: i64,
) -> Result<Vec<Chat>, sqlx::Error> {
    sqlx::query_as::<_, Chat>(concat!(
        // Materialized: inlined, the activity would be computed twice per chat, for the filter and the order.
        "WITH mine AS MATERIALIZED ( \
             SELECT c.id, ",
        chat_activity!(),
        " AS activity \
             FROM chats c JOIN chat_members me ON me.chat_id = c.id AND me.user_id = $1 \
             WHERE c.workspace_id = $2), \
         page AS ( \
             SELECT id, activity FROM mine WHERE $3::timestamptz IS NULL OR (activity, id) < ($3, $4) \
             ORDER BY activity DESC, id DESC LIMIT $5) \
         SELECT ",
        chat_columns!(),
        " FROM page JOIN chats c ON c.id = page.id ORDER BY page.activity DESC, page.id DESC"
    ))
    .bind(caller.user_id)
    .bind(caller.workspace_id)
    .bind(after.map(|a| a.activity))
    .bind(after.map(|a| a.id))
    .bind(limit)
    .fetch_all(&mut *conn)
    .await
}

/// The ids among `user_ids` that are not users of `workspace_id`, ascending.
pub async fn not_in_workspace(
    conn: &mut PgConnection,
    user_ids: &[i64],
    workspace_id: i64,
) -> Result<Vec<i64>, sqlx::Error> {
    if user_ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_scalar(
        "SELECT t.id FROM unnest($1::bigint[]) AS t(id) \
         WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.id = t.id AND u.workspace_id = $2) ORDER BY t.id",
    )
    .bind(user_ids)
    .bind(workspace_id)
    .fetch_all(&mut *conn)
    .await
}

/// Creates a chat owned by `owner` with `owner` and `others` as members; returns it and all its member ids,
/// ascending (the chat lists at most [`super::MAX_LISTED_MEMBERS`]).
pub async fn create_chat(
    conn: &mut PgConnection,
    owner: AuthUser,
    name: &str,
    chat_type: ChatType,
    others: &[i64],
) -> Result<(Chat, Vec<i64>), ApiError> {
    let chat_id: i64 = sqlx::query_scalar(
        "INSERT INTO chats (workspace_id, name, chat_type, owner_id) VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(owner.workspace_id)
    .bind(name)
    .bind(chat_type.as_str())
    .bind(owner.user_id)
    .fetch_one(&mut *conn)
    .await?;
    let mut members = others.to_vec();
    members.push(owner.user_id);
    let members = add_members(conn, chat_id, &members).await?;
    Ok((chat(conn, chat_id).await?, members))
}

/// Renames chat `chat_id`.
pub async fn rename_chat(conn: &mut PgConnection, chat_id: i64, name: &str) -> Result<Chat, ApiError> {
    sqlx::query("UPDATE chats SET name = $2, updated_at = now() WHERE id = $1")
        .bind(chat_id)
        .bind(name)
        .execute(&mut *conn)
        .await?;
    chat(conn, chat_id).await
}

/// Deletes chat `chat_id` with its members and messages; returns the ids of the members it had, ascending, or
/// `None` when the chat was gone (deleted meanwhile).
pub async fn delete_chat(conn: &mut PgConnection, chat_id: i64) -> Result<Option<Vec<i64>>, sqlx::Error> {
    // The chat's row is locked first: a join running meanwhile (its foreign-key check) waits, then finds no chat,
    // so the members read here are all the deletion removes. A second deletion waits here, then finds no row:
    // it must answer 404, not delete the chat (and its members' leaving) a second time.
    let found = sqlx::query("SELECT 1 FROM chats WHERE id = $1 FOR UPDATE")
        .bind(chat_id)
        .fetch_optional(&mut *conn)
        .await?;
    if found.is_none() {
        return Ok(None);
    }
    let members = sqlx::query_scalar("SELECT user_id FROM chat_members WHERE chat_id = $1 ORDER BY user_id")
        .bind(chat_id)
        .fetch_all(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM chats WHERE id = $1")
        .bind(chat_id)
        .execute(&mut *conn)
        .await?;
    Ok(Some(members))
}

/// Makes `user_ids` members of chat `chat_id`; returns those who were not members already, ascending.
pub async fn add_members(conn: &mut PgConnection, chat_id: i64, user_ids: &[i64]) -> Result<Vec<i64>, sqlx::Error> {
    let mut added: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO chat_members (chat_id, user_id) SELECT $1, unnest($2::bigint[]) \
         ON CONFLICT DO NOTHING RETURNING user_id",
    )
    .bind(chat_id)
    .bind(user_ids)
    .fetch_all(&mut *conn)
    .await?;
    added.sort_unstable();
    Ok(added)
}

/// Removes `user_id` from chat `chat_id`; false when they were not a member.
pub async fn remove_member(conn: &mut PgConnection, chat_id: i64, user_id: i64) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM chat_members WHERE chat_id = $1 AND user_id = $2")
        .bind(chat_id)
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// Which members of a chat to read.
#[derive(Debug, Clone, Copy)]
pub enum MemberSelection<'a> {
    /// Up to `limit` members with a user id greater than `after`, by user id.
    Page { after: Option<i64>, limit: i64 },
    /// Those of these users who are members, by user id.
    Among(&'a [i64]),
}

/// The members of chat `chat_id` that `selection` names, by user id.
pub async fn members(
    conn: &mut PgConnection,
    chat_id: i64,
    selection: MemberSelection<'_>,
) -> Result<Vec<Member>, sqlx::Error> {
    let (after, among, limit) = match selection {
        MemberSelection::Page { after, limit } => (after, None, limit),
        MemberSelection::Among(ids) => (None, Some(ids), i64::MAX),
    };
    sqlx::query_as::<_, Member>(
        "SELECT m.user_id, u.fullname, m.joined_at FROM chat_members m JOIN users u ON u.id = m.user_id \
         WHERE m.chat_id = $1 AND m.user_id > $2 AND ($3::bigint[] IS NULL OR m.user_id = ANY($3)) \
         ORDER BY m.user_id LIMIT $4",
    )
    .bind(chat_id)
    .bind(after.unwrap_or(i64::MIN))
    .bind(among)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await
}

/// Ids of the chats `user_id` is a member of.
pub async fn chat_ids_of(conn: &mut PgConnection, user_id: i64) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT chat_id FROM chat_members WHERE user_id = $1")
        .bind(user_id)
        .fetch_all(&mut *conn)
        .await
}

/// A new message to store, with what its send writes beside it.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Author.
    pub sender: AuthUser,
    /// Chat it is sent to.
    pub chat_id: i64,
    /// Text.
    pub content: String,
    /// Attached file references.
    pub files: Vec<String>,
    /// The client's idempotency key, if any.
    pub idempotency_key: Option<String>,
    /// Its `message_sent` analytics event, when analytics is on.
    pub event: Option<OutboxRow>,
}

/// The message `sender_id` sent to `chat_id` with idempotency key `key`.
pub async fn message_by_key(
    conn: &mut PgConnection,
    chat_id: i64,
    sender_id: i64,
    key: &str,
) -> Result<Option<Message>, sqlx::Error> {
    sqlx::query_as::<_, Message>(concat!(
        "SELECT ",
        message_columns!(),
        " FROM messages WHERE chat_id = $1 AND sender_id = $2 AND idempotency_key = $3"
    ))
    .bind(chat_id)
    .bind(sender_id)
    .bind(key)
    .fetch_optional(&mut *conn)
    .await
}

/// What [`send_messages`] did with one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// The message was stored, with its event (when one was given) and its live-update notice.
    Created {
        /// The stored message.
        message: Message,
        /// Whether the analytics event was written (with the message's live-update notice, see
        /// `analytics::journal_relay`).
        event_written: bool,
    },
    /// A message with the same idempotency key from the same sender in the same chat exists already: nothing
    /// was written (see [`message_by_key`]).
    Replay,
    /// The sender is not a member of the chat (or the chat is not in their workspace, or does not exist):
    /// nothing was written; [`access`] tells which answer the caller gets.
    NotMember,
    /// The chat is being deleted (its deletion, the only change that locks its row against inserts, has not
    /// ended): nothing was written. Wait for the deletion to end ([`wait_for_chat`]), then send again.
    ChatBusy,
}

/// Waits until no change holds chat `chat_id`'s row against inserts: the end of its deletion, if one is under way.
/// Run it outside a transaction, so that the lock it takes is released at once.
pub async fn wait_for_chat(conn: &mut PgConnection, chat_id: i64) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1 FROM chats WHERE id = $1 FOR KEY SHARE")
        .bind(chat_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Sends `messages` in one statement, so one round trip and, run on its own, one atomic transaction (the
/// send queue, `chat::send_queue`, hands it the sends that arrive together). For each message it checks that
/// the sender is a member of the chat in their workspace, stores the message (nothing on an idempotency-key
/// conflict), and only when it was stored writes its live-update notice to the journal (`live::journal`), in
/// a row that also carries its analytics event when given (the relay reads it there:
/// `analytics::journal_relay`). So a message, its event and its notice exist together or not at all, once per
/// new message. Returns what was done with each message, in order. The caller wakes the outbox
/// relay and the live hub once the statement returned.
///
/// Message ids are drawn from the sequence in the order of `messages`, before the insert, so that each answer
/// row can be matched to its message; the rows are inserted in idempotency-key order so that two concurrent
/// statements holding the same keys wait for each other instead of deadlocking. The notice is the JSON
/// [`crate::live::Notice`] reads: `kind`, `chat_id`, `ids` and the message.
///
/// A send to a chat being deleted does not wait for the deletion: the chat's row is locked `SKIP LOCKED`, and the
/// send is answered [`Sent::ChatBusy`]. Waiting in the statement (as the message's foreign-key check would)
/// held up every other send of the statement, and with them the writer, for as long as the deletion took (its
/// cascade deletes every message of the chat); one client per writer sending to that chat stopped all sends.
///
/// The statement writes nothing but the messages, their events and their notices. No row that every send to a
/// chat shares: the chat's last activity is read from its newest message (see `chat_columns!`) instead of being
/// stored on the chat's row, which every send to a busy chat would update and wait for. And no `NOTIFY`:
/// PostgreSQL serializes the commits of notifying transactions, disk flush included (see `live::journal`).
/// `benches/send_statement/run.sh` measures this statement and its parts with pgbench (its `parts/` are this
/// statement; keep them alike).
pub async fn send_messages(conn: &mut PgConnection, messages: &[NewMessage]) -> Result<Vec<Sent>, sqlx::Error> {
    let column = |f: &dyn Fn(&NewMessage) -> i64| messages.iter().map(f).collect::<Vec<i64>>();
    let files = messages
        .iter()
        .map(|m| serde_json::to_string(&m.files))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| sqlx::Error::Encode(err.into()))?;
    // The data-modifying parts run whether read or not; the final SELECT reports, per message, what they did.
    let rows = sqlx::query(concat!(
        "WITH checked AS MATERIALIZED ( \
             SELECT i.*, EXISTS ( \
                     SELECT 1 FROM chats c WHERE c.id = i.chat_id AND c.workspace_id = i.workspace_id \
                     AND EXISTS (SELECT 1 FROM chat_members m WHERE m.chat_id = c.id AND m.user_id = i.sender_id)) \
                 AS is_member \
             FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[], \
                 $7::uuid[], $8::text[], $9::bytea[]) WITH ORDINALITY \
                 AS i (chat_id, sender_id, workspace_id, content, files, idempotency_key, event_id, subject, \
                     payload, ord)), \
         locked AS MATERIALIZED ( \
             SELECT checked.*, CASE WHEN is_member THEN EXISTS ( \
                     SELECT 1 FROM chats l WHERE l.id = checked.chat_id FOR KEY SHARE SKIP LOCKED) \
                 ELSE false END AS is_free \
             FROM checked), \
         input AS MATERIALIZED ( \
             SELECT locked.*, CASE WHEN is_free THEN nextval('messages_id_seq') END AS id FROM locked), \
         ins AS ( \
             INSERT INTO messages (id, chat_id, sender_id, content, files, idempotency_key) \
             SELECT id, chat_id, sender_id, content, ARRAY(SELECT json_array_elements_text(files::json)), \
                 idempotency_key \
             FROM input WHERE id IS NOT NULL ORDER BY chat_id, sender_id, idempotency_key \
             ON CONFLICT (chat_id, sender_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING \
             RETURNING ",
        message_columns!(),
        "), \
         live_notice AS ( \
             INSERT INTO live_events (notice, event_id, event_subject, event) \
             SELECT json_build_object('kind', $10::text, 'chat_id', ins.chat_id, 'ids', json_build_array(ins.id), \
                 'message', json_build_object('id', ins.id, 'chat_id', ins.chat_id, 'sender_id', ins.sender_id, \
                     'content', ins.content, 'files', ins.files, 'created_at', ins.created_at, \
                     'edited_at', ins.edited_at))::text, \
                 input.event_id, input.subject, input.payload \
             FROM ins JOIN input ON input.id = ins.id ORDER BY ins.id RETURNING id) \
         SELECT input.is_member, input.is_free, \
             ins.id IS NOT NULL AND input.payload IS NOT NULL AS event_written, \
             ins.id, ins.chat_id, ins.sender_id, ins.content, ins.files, ins.created_at, ins.edited_at \
         FROM input LEFT JOIN ins ON ins.id = input.id \
         ORDER BY input.ord"
    ))
    .bind(column(&|m| m.chat_id))
    .bind(column(&|m| m.sender.user_id))
    .bind(column(&|m| m.sender.workspace_id))
    .bind(messages.iter().map(|m| m.content.as_str()).collect::<Vec<_>>())
    .bind(files)
    .bind(
        messages
            .iter()
            .map(|m| m.idempotency_key.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(
        messages
            .iter()
            .map(|m| m.event.as_ref().map(|e| e.event_id))
            .collect::<Vec<_>>(),
    )
    .bind(
        messages
            .iter()
            .map(|m| m.event.as_ref().map(|e| e.subject.as_str()))
            .collect::<Vec<_>>(),
    )
    .bind(
        messages
            .iter()
            .map(|m| m.event.as_ref().map(|e| e.payload.as_slice()))
            .collect::<Vec<_>>(),
    )
    .bind(LiveKind::MessageCreated.as_str())
    .fetch_all(&mut *conn)
    .await?;
    if rows.len() != messages.len() {
        return Err(sqlx::Error::Protocol(format!(
            "send statement answered {} rows for {} messages",
            rows.len(),
            messages.len()
        )));
    }
    rows.iter().map(sent).collect()
}

/// What one answer row of [`send_messages`] says was done.
fn sent(row: &sqlx::postgres::PgRow) -> Result<Sent, sqlx::Error> {
    if !row.try_get::<bool, _>("is_member")? {
        return Ok(Sent::NotMember);
    }
    if !row.try_get::<bool, _>("is_free")? {
        return Ok(Sent::ChatBusy);
    }
    let Some(id) = row.try_get::<Option<i64>, _>("id")? else {
        return Ok(Sent::Replay);
    };
    let message = Message {
        id,
        chat_id: row.try_get("chat_id")?,
        sender_id: row.try_get("sender_id")?,
        content: row.try_get("content")?,
        files: row.try_get("files")?,
        created_at: row.try_get("created_at")?,
        edited_at: row.try_get("edited_at")?,
    };
    Ok(Sent::Created {
        message,
        event_written: row.try_get("event_written")?,
    })
}

/// Up to `limit` messages of chat `chat_id` older than message `before` (all when `None`), newest first.
pub async fn messages(
    conn: &mut PgConnection,
    chat_id: i64,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<Message>, sqlx::Error> {
    sqlx::query_as::<_, Message>(concat!(
        "SELECT ",
        message_columns!(),
        " FROM messages WHERE chat_id = $1 AND ($2::bigint IS NULL OR id < $2) \
         ORDER BY id DESC LIMIT $3"
    ))
    .bind(chat_id)
    .bind(before)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await
}

/// Message `message_id` of chat `chat_id`, locked for update until the transaction ends.
pub async fn lock_message(conn: &mut PgConnection, chat_id: i64, message_id: i64) -> Result<Message, ApiError> {
    sqlx::query_as::<_, Message>(concat!(
        "SELECT ",
        message_columns!(),
        " FROM messages WHERE id = $1 AND chat_id = $2 FOR UPDATE"
    ))
    .bind(message_id)
    .bind(chat_id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(ApiError::NotFound("message"))
}

/// Replaces the content of message `message_id` and stamps `edited_at`.
pub async fn edit_message(conn: &mut PgConnection, message_id: i64, content: &str) -> Result<Message, sqlx::Error> {
    sqlx::query_as::<_, Message>(concat!(
        "UPDATE messages SET content = $2, edited_at = now() WHERE id = $1 RETURNING ",
        message_columns!()
    ))
    .bind(message_id)
    .bind(content)
    .fetch_one(&mut *conn)
    .await
}

/// Deletes message `message_id`.
pub async fn delete_message(conn: &mut PgConnection, message_id: i64) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM messages WHERE id = $1")
        .bind(message_id)
        .execute(&mut *conn)
        .await
        .map(drop)
}

/// Up to `limit` messages of chat `chat_id` matching the web-search style query `q` (`simple` configuration,
/// the one the generated `messages.search` column uses), newest first.
pub async fn search_messages(
    conn: &mut PgConnection,
    chat_id: i64,
    q: &str,
    limit: i64,
) -> Result<Vec<Message>, sqlx::Error> {
    sqlx::query_as::<_, Message>(concat!(
        "SELECT ",
        message_columns!(),
        " FROM messages \
         WHERE chat_id = $1 AND search @@ websearch_to_tsquery('simple', $2) ORDER BY id DESC LIMIT $3"
    ))
    .bind(chat_id)
    .bind(q)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await
}

#[cfg(test)]
mod tests {
    use crate::chat::MAX_LISTED_MEMBERS;

    #[test]
    fn a_chat_lists_at_most_max_listed_members() {
        assert!(chat_columns!().contains(&format!("LIMIT {MAX_LISTED_MEMBERS})")));
    }
}

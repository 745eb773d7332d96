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
use sqlx::{PgConnection, Row as _};

/// Columns of [`Chat`], selected from `chats c`. `last_activity_at` is the newest message's time (one probe of
/// `messages_chat_id_idx`), or the chat's creation when it has none: derived rather than stored, because storing
/// it meant every send updating its chat's row, one row that all sends to a busy chat contend for (see
/// [`send_message`]).
///
/// Macros rather than constants so that statements are `concat!`-ed into `&'static str` at compile time: no SQL
/// is ever assembled at run time.
macro_rules! chat_columns {
    () => {
        "c.id, c.name, c.chat_type, c.owner_id, c.workspace_id, c.created_at, \
         GREATEST(c.last_activity_at, (SELECT lm.created_at FROM messages lm WHERE lm.chat_id = c.id \
             ORDER BY lm.id DESC LIMIT 1)) AS last_activity_at, \
         ARRAY(SELECT m.user_id FROM chat_members m WHERE m.chat_id = c.id ORDER BY m.user_id) AS members"
    };
}

/// Columns of [`Message`].
macro_rules! message_columns {
    () => {
        "id, chat_id, sender_id, content, files, created_at, edited_at"
    };
}

/// The caller's access to chat `chat_id`; 404 when it does not exist or must look absent to them.
pub async fn access(conn: &mut PgConnection, chat_id: i64, caller: AuthUser) -> Result<Access, ApiError> {
    let row = sqlx::query(
        "SELECT c.workspace_id, c.owner_id, c.chat_type, \
         EXISTS (SELECT 1 FROM chat_members m WHERE m.chat_id = c.id AND m.user_id = $2) AS is_member \
         FROM chats c WHERE c.id = $1",
    )
    .bind(chat_id)
    .bind(caller.user_id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(ApiError::NotFound("chat"))?;
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

/// The chats `caller` is a member of, most recently active first.
pub async fn chats_of(conn: &mut PgConnection, caller: AuthUser) -> Result<Vec<Chat>, sqlx::Error> {
    sqlx::query_as::<_, Chat>(concat!(
        "SELECT ",
        chat_columns!(),
        " FROM chats c \
         JOIN chat_members me ON me.chat_id = c.id AND me.user_id = $1 \
         WHERE c.workspace_id = $2 \
         ORDER BY last_activity_at DESC, c.id DESC"
    ))
    .bind(caller.user_id)
    .bind(caller.workspace_id)
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

/// Creates a chat owned by `owner` with `owner` and `others` as members.
pub async fn create_chat(
    conn: &mut PgConnection,
    owner: AuthUser,
    name: &str,
    chat_type: ChatType,
    others: &[i64],
) -> Result<Chat, ApiError> {
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
    add_members(conn, chat_id, &members).await?;
    chat(conn, chat_id).await
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

/// Deletes chat `chat_id` with its members and messages.
pub async fn delete_chat(conn: &mut PgConnection, chat_id: i64) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM chats WHERE id = $1")
        .bind(chat_id)
        .execute(&mut *conn)
        .await
        .map(drop)
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

/// The members of chat `chat_id`, in the order they joined.
pub async fn members(conn: &mut PgConnection, chat_id: i64) -> Result<Vec<Member>, sqlx::Error> {
    sqlx::query_as::<_, Member>(
        "SELECT m.user_id, u.fullname, m.joined_at FROM chat_members m JOIN users u ON u.id = m.user_id \
         WHERE m.chat_id = $1 ORDER BY m.joined_at, m.user_id",
    )
    .bind(chat_id)
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

/// A new message to store.
#[derive(Debug, Clone, Copy)]
pub struct NewMessage<'a> {
    /// Chat it is sent to.
    pub chat_id: i64,
    /// Author.
    pub sender_id: i64,
    /// Text.
    pub content: &'a str,
    /// Attached file references.
    pub files: &'a [String],
    /// The client's idempotency key, if any.
    pub idempotency_key: Option<&'a str>,
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

/// What [`send_message`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// The message was stored, with its event (when one was given) and its live-update notice.
    Created {
        /// The stored message.
        message: Message,
        /// Whether the analytics event was written to the outbox.
        event_written: bool,
    },
    /// A message with the same idempotency key from the same sender in the same chat exists already: nothing
    /// was written (see [`message_by_key`]).
    Replay,
    /// The sender is not a member of the chat (or the chat is not in their workspace, or does not exist):
    /// nothing was written; [`access`] tells which answer the caller gets.
    NotMember,
}

/// Sends `new` from `sender` in one statement, so one round trip and, run on its own, one atomic transaction:
/// checks that the sender is a member of the chat in their workspace, stores the message (nothing on an
/// idempotency-key conflict), and only when it was stored writes `event` to the outbox (when given) and the
/// live-update notice to the journal (`live::journal`). So the message, its event and its notice exist together
/// or not at all, once per new message. The caller wakes the outbox relay and the live hub once the statement
/// returned.
///
/// The notice is the JSON [`crate::live::Notice`] reads: `kind`, `chat_id`, `ids` and the message.
///
/// The statement writes nothing but the message, its event and its notice. No row that every send to a chat
/// shares: the chat's last activity is read from its newest message (see `chat_columns!`) instead of being
/// stored on the chat's row, which every send to a busy chat would update and wait for. And no `NOTIFY`:
/// PostgreSQL serializes the commits of notifying transactions, disk flush included (see `live::journal`).
/// `benches/send_statement/run.sh` measures this statement and its parts with pgbench (its `parts/` are this
/// statement; keep them alike).
pub async fn send_message(
    conn: &mut PgConnection,
    sender: AuthUser,
    new: NewMessage<'_>,
    event: Option<&OutboxRow>,
) -> Result<Sent, sqlx::Error> {
    // The data-modifying parts run whether read or not; the final SELECT counts their rows to report them.
    let row = sqlx::query(concat!(
        "WITH member AS ( \
             SELECT c.id FROM chats c WHERE c.id = $1 AND c.workspace_id = $3 \
             AND EXISTS (SELECT 1 FROM chat_members m WHERE m.chat_id = c.id AND m.user_id = $2)), \
         ins AS ( \
             INSERT INTO messages (chat_id, sender_id, content, files, idempotency_key) \
             SELECT id, $2, $4, $5, $6 FROM member \
             ON CONFLICT (chat_id, sender_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING \
             RETURNING ",
        message_columns!(),
        "), \
         event AS ( \
             INSERT INTO analytics_outbox (event_id, subject, payload) \
             SELECT $7, $8, $9 FROM ins WHERE $9::bytea IS NOT NULL RETURNING id), \
         live_notice AS ( \
             INSERT INTO live_events (notice) \
             SELECT json_build_object('kind', $10::text, 'chat_id', ins.chat_id, 'ids', json_build_array(ins.id), \
                 'message', json_build_object('id', ins.id, 'chat_id', ins.chat_id, 'sender_id', ins.sender_id, \
                     'content', ins.content, 'files', ins.files, 'created_at', ins.created_at, \
                     'edited_at', ins.edited_at))::text \
             FROM ins RETURNING id) \
         SELECT EXISTS (SELECT 1 FROM member) AS is_member, \
             (SELECT count(*) FROM event) AS events, (SELECT count(*) FROM live_notice) AS notices, \
             ins.* \
         FROM (SELECT) AS one LEFT JOIN ins ON true"
    ))
    .bind(new.chat_id)
    .bind(sender.user_id)
    .bind(sender.workspace_id)
    .bind(new.content)
    .bind(new.files)
    .bind(new.idempotency_key)
    .bind(event.map(|e| e.event_id))
    .bind(event.map(|e| e.subject.as_str()))
    .bind(event.map(|e| e.payload.as_slice()))
    .bind(LiveKind::MessageCreated.as_str())
    .fetch_one(&mut *conn)
    .await?;
    if !row.try_get::<bool, _>("is_member")? {
        return Ok(Sent::NotMember);
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
        event_written: row.try_get::<i64, _>("events")? > 0,
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

//! The `messages` routes: send (idempotently), page through history, edit and delete one's own, and search.
//!
//! Only members reach a chat's messages: outsiders get 404, users viewing a public channel they have not joined
//! get 403. Sending writes the message and its `message_sent` analytics event and notifies live streams, all in
//! one statement (one round trip, one transaction, shared with the sends that arrive at the same time: see
//! `store::send_messages` and `chat::send_queue`).

use crate::analytics::ClientInfo;
use crate::auth::AuthUser;
use crate::chat::store::{self, NewMessage, Sent};
use crate::chat::{Message, validate};
use crate::error::ApiError;
use crate::http::extract::{ApiJson, ApiPath, ApiQuery, empty_as_none};
use crate::http::files;
use crate::live::{self, LiveKind, Notice};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use fechatter_protos::v1::SearchPerformedEvent;
use fechatter_protos::v1::analytics_event::EventType;
use serde::Deserialize;
use std::time::Instant;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Routes of this resource.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(send_message, list_messages))
        .routes(routes!(search_messages))
        .routes(routes!(edit_message, delete_message))
}

/// A new message.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendMessage {
    /// Text, up to 4000 characters; may be empty when files are attached.
    #[serde(default)]
    #[schema(max_length = 4000)]
    pub content: String,
    /// Files of the sender's workspace, as the `url`s the upload route answered
    /// (`/api/files/{workspace_id}/{sha256}`), at most 10.
    #[serde(default)]
    pub files: Vec<String>,
    /// Sending again with the same key (same sender, same chat) returns the first message instead of
    /// creating another: retry safely. Deleting that message frees the key (deleted messages are removed, not
    /// hidden, so nothing remembers it). 1 to 128 characters.
    pub idempotency_key: Option<String>,
}

/// A message's new text.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditMessage {
    /// Text, up to 4000 characters; may be empty when the message has files.
    #[schema(max_length = 4000)]
    pub content: String,
}

/// A page of history.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Only messages older than this message id (the last id of the previous page); empty means absent.
    #[serde(default, deserialize_with = "empty_as_none")]
    pub before: Option<i64>,
    /// Messages per page, 1 to 100 (default 50, also when empty).
    #[serde(default, deserialize_with = "empty_as_none")]
    pub limit: Option<i64>,
}

/// A search.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// Words to find, 1 to 200 characters; web-search syntax: `"exact phrase"`, `or`, `-excluded`.
    pub q: String,
    /// Results, 1 to 100 (default 50, also when empty).
    #[serde(default, deserialize_with = "empty_as_none")]
    pub limit: Option<i64>,
}

/// Sends a message (members only). Idempotent with `idempotency_key`.
#[utoipa::path(
    post,
    path = "/api/chats/{id}/messages",
    tag = "messages",
    params(("id" = i64, Path, description = "Chat id")),
    request_body = SendMessage,
    responses(
        (status = 201, description = "Sent", body = Message),
        (status = 200, description = "Sent before with this idempotency key: the original message", body = Message),
        (status = 400, description = "Empty or too long content, too many files, a file that is not an upload of \
            the sender's workspace (`invalid_file`, `unknown_file`), or an invalid idempotency key"),
        (status = 401, description = "Missing or invalid access token"),
        (status = 403, description = "Not a member of this public channel"),
        (status = 404, description = "No such chat visible to the caller"),
        (status = 409, description = "The idempotency key's message was deleted while this send was answered \
            (`idempotency_key_reused`)"),
    ),
    security(("bearer" = []))
)]
async fn send_message(
    State(state): State<AppState>,
    user: AuthUser,
    client: ClientInfo,
    ApiPath(chat_id): ApiPath<i64>,
    ApiJson(body): ApiJson<SendMessage>,
) -> Result<(StatusCode, Json<Message>), ApiError> {
    let mut checked = validate::message_body(&body.content, &body.files)
        .and_then(|()| validate::idempotency_key(body.idempotency_key.as_deref()));
    if checked.is_ok()
        && let Err(refused) = files::check_references(&state.pool, user.workspace_id, &body.files).await
    {
        checked = Err(refused);
    }
    let key = match checked {
        Ok(key) => key.map(str::to_owned),
        Err(invalid) => {
            // Outsiders learn nothing, not even that their message was invalid: 404 (or 403) comes first.
            let mut conn = state.pool.acquire().await?;
            store::access(&mut conn, chat_id, user).await?.require_member()?;
            return Err(invalid);
        }
    };
    // Built before the statement: the event does not name the message, so the statement can write it.
    let kind = EventType::MessageSent(validate::message_sent(chat_id, &body.content, &body.files));
    let event = state
        .analytics
        .outbox_row(kind, &client.context(user.user_id, user.workspace_id))?;
    let new = NewMessage {
        sender: user,
        chat_id,
        content: body.content,
        files: body.files,
        idempotency_key: key,
        event,
    };
    // Three times at most: a caller who was not a member when the statement ran but is one when `access` looks
    // has just joined, and sends again; a send to a chat being deleted waits for the deletion's end, then finds
    // the chat gone (404) or, the deletion rolled back, sends again.
    for _ in 0..3 {
        match state.sends.send(new.clone()).await.map_err(anyhow::Error::from)? {
            Sent::Created { message, event_written } => {
                state.live.committed();
                if event_written && let Some(row) = &new.event {
                    state.analytics.written(row);
                }
                return Ok((StatusCode::CREATED, Json(message)));
            }
            Sent::Replay => {
                // The key's message exists (committed; a concurrent first attempt was waited for by the unique
                // index). Nothing was written, so no event either.
                let mut conn = state.pool.acquire().await?;
                let original = match new.idempotency_key.as_deref() {
                    Some(key) => store::message_by_key(&mut conn, chat_id, user.user_id, key).await?,
                    None => None,
                };
                return Ok((StatusCode::OK, Json(replayed(original)?)));
            }
            Sent::NotMember => {
                let mut conn = state.pool.acquire().await?;
                store::access(&mut conn, chat_id, user).await?.require_member()?;
            }
            // On a connection of the pool, not in the writers: only this send waits.
            Sent::ChatBusy => store::wait_for_chat(&mut *state.pool.acquire().await?, chat_id).await?,
        }
    }
    Err(anyhow::anyhow!("membership of chat {chat_id} changed during the send").into())
}

/// The answer to a send whose idempotency key is taken: the key's message, read after the statement. Absent when
/// it was deleted in between: the key's message existed but cannot be answered, and sending a new one would break
/// the key's promise, so 409.
fn replayed(original: Option<Message>) -> Result<Message, ApiError> {
    original.ok_or_else(|| {
        ApiError::Conflict(
            "idempotency_key_reused",
            "idempotency_key was used for a message that has since been deleted; send with a new key".into(),
        )
    })
}

/// A page of a chat's history, newest first (members only).
#[utoipa::path(
    get,
    path = "/api/chats/{id}/messages",
    tag = "messages",
    params(("id" = i64, Path, description = "Chat id"), HistoryQuery),
    responses(
        (status = 200, description = "Messages, newest first; pass the last id as `before` for the next page",
            body = Vec<Message>),
        (status = 400, description = "Invalid limit"),
        (status = 401, description = "Missing or invalid access token"),
        (status = 403, description = "Not a member of this public channel"),
        (status = 404, description = "No such chat visible to the caller"),
    ),
    security(("bearer" = []))
)]
async fn list_messages(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(chat_id): ApiPath<i64>,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> Result<Json<Vec<Message>>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    store::access(&mut conn, chat_id, user).await?.require_member()?;
    let limit = validate::page_limit(query.limit)?;
    Ok(Json(store::messages(&mut conn, chat_id, query.before, limit).await?))
}

/// Edits one's own message.
#[utoipa::path(
    patch,
    path = "/api/chats/{id}/messages/{message_id}",
    tag = "messages",
    params(
        ("id" = i64, Path, description = "Chat id"),
        ("message_id" = i64, Path, description = "Message id"),
    ),
    request_body = EditMessage,
    responses(
        (status = 200, description = "The edited message", body = Message),
        (status = 400, description = "Empty or too long content"),
        (status = 401, description = "Missing or invalid access token"),
        (status = 403, description = "Not the caller's message"),
        (status = 404, description = "No such chat visible to the caller, or no such message in it"),
    ),
    security(("bearer" = []))
)]
async fn edit_message(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath((chat_id, message_id)): ApiPath<(i64, i64)>,
    ApiJson(body): ApiJson<EditMessage>,
) -> Result<Json<Message>, ApiError> {
    let mut tx = state.pool.begin().await?;
    store::access(&mut tx, chat_id, user).await?.require_member()?;
    let message = store::lock_message(&mut tx, chat_id, message_id).await?;
    if message.sender_id != user.user_id {
        return Err(ApiError::Forbidden("only the sender may edit a message".into()));
    }
    validate::message_body(&body.content, &message.files)?;
    let edited = store::edit_message(&mut tx, message_id, &body.content).await?;
    live::notify(&mut tx, &Notice::message(LiveKind::MessageUpdated, &edited)).await?;
    tx.commit().await?;
    state.live.committed();
    Ok(Json(edited))
}

/// Deletes one's own message.
#[utoipa::path(
    delete,
    path = "/api/chats/{id}/messages/{message_id}",
    tag = "messages",
    params(
        ("id" = i64, Path, description = "Chat id"),
        ("message_id" = i64, Path, description = "Message id"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or invalid access token"),
        (status = 403, description = "Not the caller's message"),
        (status = 404, description = "No such chat visible to the caller, or no such message in it"),
    ),
    security(("bearer" = []))
)]
async fn delete_message(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath((chat_id, message_id)): ApiPath<(i64, i64)>,
) -> Result<StatusCode, ApiError> {
    let mut tx = state.pool.begin().await?;
    store::access(&mut tx, chat_id, user).await?.require_member()?;
    let message = store::lock_message(&mut tx, chat_id, message_id).await?;
    if message.sender_id != user.user_id {
        return Err(ApiError::Forbidden("only the sender may delete a message".into()));
    }
    store::delete_message(&mut tx, message_id).await?;
    live::notify(&mut tx, &Notice::message(LiveKind::MessageDeleted, &message)).await?;
    tx.commit().await?;
    state.live.committed();
    Ok(StatusCode::NO_CONTENT)
}

/// Full-text search in a chat's messages, newest first (members only).
#[utoipa::path(
    get,
    path = "/api/chats/{id}/messages/search",
    tag = "messages",
    params(("id" = i64, Path, description = "Chat id"), SearchQuery),
    responses(
        (status = 200, description = "Matching messages, newest first", body = Vec<Message>),
        (status = 400, description = "Missing, blank or too long query, or invalid limit"),
        (status = 401, description = "Missing or invalid access token"),
        (status = 403, description = "Not a member of this public channel"),
        (status = 404, description = "No such chat visible to the caller"),
    ),
    security(("bearer" = []))
)]
async fn search_messages(
    State(state): State<AppState>,
    user: AuthUser,
    client: ClientInfo,
    ApiPath(chat_id): ApiPath<i64>,
    ApiQuery(query): ApiQuery<SearchQuery>,
) -> Result<Json<Vec<Message>>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    store::access(&mut conn, chat_id, user).await?.require_member()?;
    let q = validate::search_query(&query.q)?;
    let limit = validate::page_limit(query.limit)?;
    let started = Instant::now();
    let found = store::search_messages(&mut conn, chat_id, q, limit).await?;
    let kind = EventType::SearchPerformed(SearchPerformedEvent {
        search_type: "messages".into(),
        query_length: q.chars().count().to_string(),
        results_count: i32::try_from(found.len()).unwrap_or(i32::MAX),
        search_duration_ms: i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX),
        has_filters: false,
    });
    // Outside a transaction: written is committed.
    let recorded = state
        .analytics
        .record(&mut conn, kind, &client.context(user.user_id, user.workspace_id))
        .await?;
    state.analytics.committed(recorded);
    Ok(Json(found))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_whose_message_was_deleted_meanwhile_is_a_409_naming_the_key() {
        let refused = replayed(None).expect_err("no message to answer");
        assert_eq!(refused.status(), StatusCode::CONFLICT);
        assert_eq!(refused.code(), "idempotency_key_reused");
        assert!(refused.to_string().contains("deleted"), "{refused}");
    }

    #[test]
    fn a_replay_answers_the_keys_message() {
        let original = Message {
            id: 7,
            chat_id: 1,
            sender_id: 2,
            content: "hello".into(),
            files: Vec::new(),
            created_at: chrono::Utc::now(),
            edited_at: None,
        };
        assert_eq!(replayed(Some(original.clone())).ok(), Some(original));
    }
}

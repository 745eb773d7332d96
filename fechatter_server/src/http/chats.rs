//! The `chats` routes: create, list, view, rename and delete chats.
//!
//! Outsiders get 404 for a chat, as if it did not exist ([`crate::chat::policy`]); users of the workspace may
//! view a `public_channel` they are not a member of. Renaming and deleting are the owner's (403 for others).

use crate::analytics::ClientInfo;
use crate::auth::AuthUser;
use crate::chat::store::ChatCursor;
use crate::chat::{Chat, ChatType, store, validate};
use crate::error::ApiError;
use crate::http::extract::{ApiJson, ApiPath, ApiQuery, empty_as_none};
use crate::live::{self, LiveKind, Notice};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use fechatter_protos::v1::analytics_event::EventType;
use fechatter_protos::v1::{ChatCreatedEvent, ChatJoinedEvent, ChatLeftEvent};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Routes of this resource.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_chat, list_chats))
        .routes(routes!(get_chat, update_chat, delete_chat))
}

/// A new chat.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateChat {
    /// Display name, 1 to 100 characters (trimmed).
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    /// Kind of chat.
    pub chat_type: ChatType,
    /// Users of the caller's workspace to add besides the caller (exactly one for `single`), at most 500.
    #[serde(default)]
    pub members: Vec<i64>,
}

/// A chat's new name.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateChat {
    /// Display name, 1 to 100 characters (trimmed).
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
}

/// Creates a chat owned by the caller, who is always a member.
#[utoipa::path(
    post,
    path = "/api/chats",
    tag = "chats",
    request_body = CreateChat,
    responses(
        (status = 201, description = "Created", body = Chat),
        (status = 400, description = "Invalid name or members; members outside the caller's workspace are named"),
        (status = 401, description = "Missing or invalid access token"),
    ),
    security(("bearer" = []))
)]
async fn create_chat(
    State(state): State<AppState>,
    user: AuthUser,
    client: ClientInfo,
    ApiJson(body): ApiJson<CreateChat>,
) -> Result<(StatusCode, Json<Chat>), ApiError> {
    let name = validate::chat_name(&body.name)?;
    let others = validate::initial_members(user.user_id, body.chat_type, &body.members)?;
    let mut tx = state.pool.begin().await?;
    let strangers = store::not_in_workspace(&mut tx, &others, user.workspace_id).await?;
    if !strangers.is_empty() {
        return Err(validate::unknown_users(&strangers));
    }
    let (chat, members) = store::create_chat(&mut tx, user, &name, body.chat_type, &others).await?;
    let kind = EventType::ChatCreated(ChatCreatedEvent {
        workspace_id: user.workspace_id.to_string(),
        chat_type: body.chat_type.as_str().to_owned(),
        initial_members_count: i32::try_from(members.len()).unwrap_or(i32::MAX),
    });
    // Every membership starts with a `chat_joined` and ends with a `chat_left`, the initial ones too, so that
    // joins minus leaves counts a chat's members downstream.
    let joins = members.iter().map(|&member| {
        let kind = EventType::ChatJoined(ChatJoinedEvent {
            chat_id: chat.id.to_string(),
            join_method: "created".into(),
        });
        (kind, client.context(member, user.workspace_id))
    });
    let created = (kind, client.context(user.user_id, user.workspace_id));
    let recorded = state
        .analytics
        .record_all(&mut tx, std::iter::once(created).chain(joins))
        .await?;
    // Every member's open streams learn of the chat (and start passing its messages).
    live::notify(&mut tx, &Notice::members(LiveKind::MemberJoined, chat.id, &members)).await?;
    tx.commit().await?;
    state.analytics.committed(recorded);
    state.live.committed();
    tracing::debug!(chat_id = chat.id, chat_type = chat.chat_type.as_str(), "chat created");
    Ok((StatusCode::CREATED, Json(chat)))
}

/// A page of the caller's chats.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ChatsQuery {
    /// Only chats after the previous page's last one: its `last_activity_at`, as the answer gave it; with
    /// `before_id`. Empty means absent.
    #[serde(default, deserialize_with = "empty_as_none")]
    #[param(value_type = Option<String>, format = DateTime)]
    pub before_activity: Option<DateTime<Utc>>,
    /// The previous page's last chat id; with `before_activity`. Empty means absent.
    #[serde(default, deserialize_with = "empty_as_none")]
    pub before_id: Option<i64>,
    /// Chats per page, 1 to 100 (default 50, also when empty).
    #[serde(default, deserialize_with = "empty_as_none")]
    pub limit: Option<i64>,
}

impl ChatsQuery {
    /// Where the page starts: both halves of the cursor, or neither.
    fn cursor(&self) -> Result<Option<ChatCursor>, ApiError> {
        match (self.before_activity, self.before_id) {
            (Some(activity), Some(id)) => Ok(Some(ChatCursor { activity, id })),
            (None, None) => Ok(None),
            _ => Err(ApiError::bad_request(
                "invalid_cursor",
                "before_activity and before_id go together: pass the last_activity_at and id of the previous \
                 page's last chat",
            )),
        }
    }
}

/// The caller's chats, most recently active first, a page at a time: a user may be in any number of chats, and
/// an answer holds at most 100.
#[utoipa::path(
    get,
    path = "/api/chats",
    tag = "chats",
    params(ChatsQuery),
    responses(
        (status = 200, description = "The chats the caller is a member of, most recently active first; pass the \
            last one's `last_activity_at` and `id` as `before_activity` and `before_id` for the next page (a short \
            page is the last)", body = Vec<Chat>),
        (status = 400, description = "Invalid limit or cursor"),
        (status = 401, description = "Missing or invalid access token"),
    ),
    security(("bearer" = []))
)]
async fn list_chats(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(query): ApiQuery<ChatsQuery>,
) -> Result<Json<Vec<Chat>>, ApiError> {
    let limit = validate::page_limit(query.limit)?;
    let cursor = query.cursor()?;
    let mut conn = state.pool.acquire().await?;
    Ok(Json(store::chats_of(&mut conn, user, cursor, limit).await?))
}

/// One chat.
#[utoipa::path(
    get,
    path = "/api/chats/{id}",
    tag = "chats",
    params(("id" = i64, Path, description = "Chat id")),
    responses(
        (status = 200, description = "The chat", body = Chat),
        (status = 401, description = "Missing or invalid access token"),
        (status = 404, description = "No such chat visible to the caller"),
    ),
    security(("bearer" = []))
)]
async fn get_chat(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(chat_id): ApiPath<i64>,
) -> Result<Json<Chat>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    store::access(&mut conn, chat_id, user).await?;
    Ok(Json(store::chat(&mut conn, chat_id).await?))
}

/// Renames a chat (owner only).
#[utoipa::path(
    patch,
    path = "/api/chats/{id}",
    tag = "chats",
    params(("id" = i64, Path, description = "Chat id")),
    request_body = UpdateChat,
    responses(
        (status = 200, description = "The renamed chat", body = Chat),
        (status = 400, description = "Invalid name"),
        (status = 401, description = "Missing or invalid access token"),
        (status = 403, description = "The caller is not the owner"),
        (status = 404, description = "No such chat visible to the caller"),
    ),
    security(("bearer" = []))
)]
async fn update_chat(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(chat_id): ApiPath<i64>,
    ApiJson(body): ApiJson<UpdateChat>,
) -> Result<Json<Chat>, ApiError> {
    let mut tx = state.pool.begin().await?;
    store::access(&mut tx, chat_id, user).await?.require_owner()?;
    let name = validate::chat_name(&body.name)?;
    let chat = store::rename_chat(&mut tx, chat_id, &name).await?;
    live::notify(&mut tx, &Notice::chat(LiveKind::ChatUpdated, chat_id)).await?;
    tx.commit().await?;
    state.live.committed();
    Ok(Json(chat))
}

/// Deletes a chat with its messages (owner only).
#[utoipa::path(
    delete,
    path = "/api/chats/{id}",
    tag = "chats",
    params(("id" = i64, Path, description = "Chat id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or invalid access token"),
        (status = 403, description = "The caller is not the owner"),
        (status = 404, description = "No such chat visible to the caller"),
    ),
    security(("bearer" = []))
)]
async fn delete_chat(
    State(state): State<AppState>,
    user: AuthUser,
    client: ClientInfo,
    ApiPath(chat_id): ApiPath<i64>,
) -> Result<StatusCode, ApiError> {
    let mut tx = state.pool.begin().await?;
    store::access(&mut tx, chat_id, user).await?.require_owner()?;
    let members = store::delete_chat(&mut tx, chat_id).await?;
    let leaves = members.ok_or(ApiError::NotFound("chat"))?.into_iter().map(|member| {
        let kind = EventType::ChatLeft(ChatLeftEvent {
            chat_id: chat_id.to_string(),
            leave_reason: "chat_deleted".into(),
        });
        (kind, client.context(member, user.workspace_id))
    });
    let recorded = state.analytics.record_all(&mut tx, leaves).await?;
    live::notify(&mut tx, &Notice::chat(LiveKind::ChatDeleted, chat_id)).await?;
    tx.commit().await?;
    state.analytics.committed(recorded);
    state.live.committed();
    Ok(StatusCode::NO_CONTENT)
}

//! The `members` routes: list, add (or join) and remove (or leave).
//!
//! The owner adds users of the workspace and removes anyone but themselves (the owner cannot leave: they delete
//! the chat instead). Any member may leave, and any user of the workspace may join a `public_channel` by adding
//! themselves. The members of a `single` chat never change. Every join and leave writes a `chat_joined` /
//! `chat_left` analytics event whose user is the one who joined or left, and notifies live streams.

use crate::analytics::ClientInfo;
use crate::auth::AuthUser;
use crate::chat::store::MemberSelection;
use crate::chat::{ChatType, Member, Role, store, validate};
use crate::error::ApiError;
use crate::http::extract::{ApiJson, ApiPath, ApiQuery};
use crate::http::users::MembersQuery;
use crate::live::{self, LiveKind, Notice};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use fechatter_protos::v1::analytics_event::EventType;
use fechatter_protos::v1::{ChatJoinedEvent, ChatLeftEvent};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Routes of this resource.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_members, add_members))
        .routes(routes!(remove_member))
}

/// Users to add.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMembers {
    /// Users of the caller's workspace (the owner), or just the caller (joining a public channel); 1 to 500.
    pub user_ids: Vec<i64>,
}

/// The members of a chat, by user id, a page at a time: a public channel may hold any number of users, and an
/// answer holds at most 100.
#[utoipa::path(
    get,
    path = "/api/chats/{id}/members",
    tag = "members",
    params(("id" = i64, Path, description = "Chat id"), MembersQuery),
    responses(
        (status = 200, body = Vec<Member>,
            description = "Members by user id; pass the last `user_id` as `after` for the next page (a short page \
                is the last)"),
        (status = 400, description = "Invalid limit or after"),
        (status = 401, description = "Missing or invalid access token"),
        (status = 404, description = "No such chat visible to the caller"),
    ),
    security(("bearer" = []))
)]
async fn list_members(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(chat_id): ApiPath<i64>,
    ApiQuery(query): ApiQuery<MembersQuery>,
) -> Result<Json<Vec<Member>>, ApiError> {
    let limit = validate::page_limit(query.limit)?;
    let mut conn = state.pool.acquire().await?;
    store::access(&mut conn, chat_id, user).await?;
    let page = MemberSelection::Page {
        after: query.after,
        limit,
    };
    Ok(Json(store::members(&mut conn, chat_id, page).await?))
}

/// Adds members (owner), or joins a public channel (anyone in the workspace, adding only themselves).
#[utoipa::path(
    post,
    path = "/api/chats/{id}/members",
    tag = "members",
    params(("id" = i64, Path, description = "Chat id")),
    request_body = AddMembers,
    responses(
        (status = 200, description = "The users named, as members now, by user id (`joined_at` tells the users \
            added now from those who were members already, who are left as they were)", body = Vec<Member>),
        (status = 400, description = "No or too many users, users outside the workspace (named), or a single chat"),
        (status = 401, description = "Missing or invalid access token"),
        (status = 403, description = "Only the owner adds others"),
        (status = 404, description = "No such chat visible to the caller"),
    ),
    security(("bearer" = []))
)]
async fn add_members(
    State(state): State<AppState>,
    user: AuthUser,
    client: ClientInfo,
    ApiPath(chat_id): ApiPath<i64>,
    ApiJson(body): ApiJson<AddMembers>,
) -> Result<Json<Vec<Member>>, ApiError> {
    let mut tx = state.pool.begin().await?;
    // Locked: a chat deleted meanwhile answers 404 here, not a foreign-key violation at the insert.
    let access = store::access_for_change(&mut tx, chat_id, user).await?;
    let ids = validate::user_ids(&body.user_ids)?;
    if ids.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_members",
            "user_ids must name at least one user",
        ));
    }
    let only_self = ids == [user.user_id];
    let join_method = match access.role {
        Role::Owner => "added",
        Role::Viewer | Role::Member if only_self => "self",
        Role::Viewer | Role::Member => {
            return Err(ApiError::Forbidden(
                "only the chat's owner adds others; anyone may join a public channel themselves".into(),
            ));
        }
    };
    if access.chat.chat_type == ChatType::Single {
        return Err(ApiError::bad_request(
            "single_chat",
            "the members of a single chat cannot change",
        ));
    }
    let strangers = store::not_in_workspace(&mut tx, &ids, user.workspace_id).await?;
    if !strangers.is_empty() {
        return Err(validate::unknown_users(&strangers));
    }
    let added = store::add_members(&mut tx, chat_id, &ids).await?;
    let joins = added.iter().map(|&user_id| {
        let kind = EventType::ChatJoined(ChatJoinedEvent {
            chat_id: chat_id.to_string(),
            join_method: join_method.to_owned(),
        });
        (kind, client.context(user_id, user.workspace_id))
    });
    let recorded = state.analytics.record_all(&mut tx, joins).await?;
    if !added.is_empty() {
        live::notify(&mut tx, &Notice::members(LiveKind::MemberJoined, chat_id, &added)).await?;
    }
    // The users named, not the whole chat: a channel may hold any number of members.
    let members = store::members(&mut tx, chat_id, MemberSelection::Among(&ids)).await?;
    tx.commit().await?;
    state.analytics.committed(recorded);
    state.live.committed();
    Ok(Json(members))
}

/// Removes a member (owner), or leaves (a member removing themselves).
#[utoipa::path(
    delete,
    path = "/api/chats/{id}/members/{user_id}",
    tag = "members",
    params(
        ("id" = i64, Path, description = "Chat id"),
        ("user_id" = i64, Path, description = "The member to remove; the caller's own id to leave"),
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "A single chat's members cannot change"),
        (status = 401, description = "Missing or invalid access token"),
        (status = 403, description = "Only the owner removes others, and the owner cannot leave"),
        (status = 404, description = "No such chat visible to the caller, or no such member"),
    ),
    security(("bearer" = []))
)]
async fn remove_member(
    State(state): State<AppState>,
    user: AuthUser,
    client: ClientInfo,
    ApiPath((chat_id, target)): ApiPath<(i64, i64)>,
) -> Result<StatusCode, ApiError> {
    let mut tx = state.pool.begin().await?;
    // Holds the chat against a concurrent deletion, which would otherwise also count this member as leaving.
    let access = store::access_for_change(&mut tx, chat_id, user).await?;
    let leave_reason = if target == user.user_id {
        if access.role == Role::Owner {
            return Err(ApiError::Forbidden(
                "the owner cannot leave the chat; delete it instead".into(),
            ));
        }
        "left"
    } else {
        access.require_owner()?;
        "removed"
    };
    if access.chat.chat_type == ChatType::Single {
        return Err(ApiError::bad_request(
            "single_chat",
            "the members of a single chat cannot change",
        ));
    }
    if !store::remove_member(&mut tx, chat_id, target).await? {
        return Err(ApiError::NotFound("member"));
    }
    let kind = EventType::ChatLeft(ChatLeftEvent {
        chat_id: chat_id.to_string(),
        leave_reason: leave_reason.to_owned(),
    });
    let recorded = state
        .analytics
        .record(&mut tx, kind, &client.context(target, user.workspace_id))
        .await?;
    live::notify(&mut tx, &Notice::members(LiveKind::MemberLeft, chat_id, &[target])).await?;
    tx.commit().await?;
    state.analytics.committed(recorded);
    state.live.committed();
    Ok(StatusCode::NO_CONTENT)
}

//! What the API shows of chats, members and messages. The structs double as database rows (`FromRow`) and as
//! OpenAPI schemas, so the three cannot drift apart.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The kind of a chat, which decides who may see and join it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChatType {
    /// A conversation between exactly two users.
    Single,
    /// A small group; members are added by the owner.
    Group,
    /// A channel visible to its members only.
    PrivateChannel,
    /// A channel every user of the workspace may view and join.
    PublicChannel,
}

impl ChatType {
    /// The name stored in `chats.chat_type` and used in analytics events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Single => "single",
            Self::Group => "group",
            Self::PrivateChannel => "private_channel",
            Self::PublicChannel => "public_channel",
        }
    }
}

impl TryFrom<String> for ChatType {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        match value.as_str() {
            "single" => Ok(Self::Single),
            "group" => Ok(Self::Group),
            "private_channel" => Ok(Self::PrivateChannel),
            "public_channel" => Ok(Self::PublicChannel),
            // The table's CHECK constraint allows nothing else.
            other => Err(format!("unknown chat_type {other:?}")),
        }
    }
}

/// Most member ids a [`Chat`] lists; `GET /api/chats/{id}/members` pages through any number. It bounds a chat's
/// answer, and a page of chats: a public channel may hold the whole workspace.
pub const MAX_LISTED_MEMBERS: usize = 100;

/// A chat with (up to [`MAX_LISTED_MEMBERS`] of) its member ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Chat {
    /// Chat id.
    pub id: i64,
    /// Display name, 1 to 100 characters.
    pub name: String,
    /// Kind of chat.
    #[sqlx(try_from = "String")]
    pub chat_type: ChatType,
    /// The creator, who alone may rename, delete, add and remove others.
    pub owner_id: i64,
    /// Workspace the chat belongs to.
    pub workspace_id: i64,
    /// User ids of the members, ascending: all of them in a chat of at most 100 members, the first 100 in a larger
    /// one (`GET /api/chats/{id}/members` pages through all).
    pub members: Vec<i64>,
    /// How many members the chat has, the owner included.
    pub member_count: i64,
    /// When the chat was created.
    pub created_at: DateTime<Utc>,
    /// When the chat was created or last received a message.
    pub last_activity_at: DateTime<Utc>,
}

/// A member of a chat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Member {
    /// User id.
    pub user_id: i64,
    /// The user's full name.
    pub fullname: String,
    /// When the user joined the chat.
    pub joined_at: DateTime<Utc>,
}

/// A message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Message {
    /// Message id; ids grow with time, so they order a chat's history and serve as paging cursors.
    pub id: i64,
    /// Chat the message was sent to.
    pub chat_id: i64,
    /// Author.
    pub sender_id: i64,
    /// Text, up to 4000 characters; may be empty when files are attached.
    pub content: String,
    /// Attached file references, at most 10.
    pub files: Vec<String>,
    /// When the message was sent.
    pub created_at: DateTime<Utc>,
    /// When the message was last edited, if ever.
    pub edited_at: Option<DateTime<Utc>>,
}

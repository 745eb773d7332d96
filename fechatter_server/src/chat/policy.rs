//! Who may do what with a chat. The decision is a pure function of the chat's head row, the caller and whether
//! the caller is a member, so it is unit-tested here and every handler asks it the same way.
//!
//! An outsider — a user of another workspace, or a non-member of a chat that is not a public channel — gets
//! 404 for everything about the chat, exactly as if it did not exist. A user of the chat's workspace may view a
//! `public_channel` (and its member list) and join it; reading or writing its messages needs membership (403).

use super::model::ChatType;
use crate::auth::AuthUser;
use crate::error::ApiError;

/// What the caller is to a chat they may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Not a member, but the chat is a public channel of their workspace.
    Viewer,
    /// A member.
    Member,
    /// The member who owns the chat.
    Owner,
}

/// The facts about a chat that access decisions need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatHead {
    /// Chat id.
    pub id: i64,
    /// Workspace of the chat.
    pub workspace_id: i64,
    /// Owner.
    pub owner_id: i64,
    /// Kind of chat.
    pub chat_type: ChatType,
}

/// A chat the caller may see, and in which role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// The chat.
    pub chat: ChatHead,
    /// The caller's role in it.
    pub role: Role,
}

/// The caller's role in `chat`, or `None` when the chat must look absent to them.
pub fn role(chat: &ChatHead, caller: AuthUser, is_member: bool) -> Option<Role> {
    if chat.workspace_id != caller.workspace_id {
        return None;
    }
    match (is_member, chat.owner_id == caller.user_id) {
        (true, true) => Some(Role::Owner),
        (true, false) => Some(Role::Member),
        (false, _) if chat.chat_type == ChatType::PublicChannel => Some(Role::Viewer),
        (false, _) => None,
    }
}

impl Access {
    /// `Ok` for members (and the owner); 403 for viewers of a public channel.
    pub fn require_member(&self) -> Result<(), ApiError> {
        if self.role >= Role::Member {
            Ok(())
        } else {
            Err(ApiError::Forbidden("join this channel first".into()))
        }
    }

    /// `Ok` for the owner; 403 for everyone else who can see the chat.
    pub fn require_owner(&self) -> Result<(), ApiError> {
        if self.role == Role::Owner {
            Ok(())
        } else {
            Err(ApiError::Forbidden("only the chat's owner may do this".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(chat_type: ChatType) -> ChatHead {
        ChatHead {
            id: 1,
            workspace_id: 10,
            owner_id: 100,
            chat_type,
        }
    }

    fn caller(user_id: i64, workspace_id: i64) -> AuthUser {
        AuthUser { user_id, workspace_id }
    }

    #[test]
    fn the_owner_and_members_see_every_kind_of_chat_in_their_role() {
        for kind in [
            ChatType::Single,
            ChatType::Group,
            ChatType::PrivateChannel,
            ChatType::PublicChannel,
        ] {
            assert_eq!(role(&chat(kind), caller(100, 10), true), Some(Role::Owner));
            assert_eq!(role(&chat(kind), caller(101, 10), true), Some(Role::Member));
        }
    }

    #[test]
    fn non_members_see_only_public_channels_of_their_own_workspace() {
        for kind in [ChatType::Single, ChatType::Group, ChatType::PrivateChannel] {
            assert_eq!(role(&chat(kind), caller(101, 10), false), None);
        }
        assert_eq!(
            role(&chat(ChatType::PublicChannel), caller(101, 10), false),
            Some(Role::Viewer)
        );
        assert_eq!(role(&chat(ChatType::PublicChannel), caller(101, 11), false), None);
    }

    #[test]
    fn a_token_of_another_workspace_sees_nothing_even_with_a_membership_row() {
        assert_eq!(role(&chat(ChatType::Group), caller(100, 11), true), None);
    }

    #[test]
    fn viewers_are_refused_member_actions_and_members_owner_actions() {
        let access = |role| Access {
            chat: chat(ChatType::PublicChannel),
            role,
        };
        assert!(access(Role::Viewer).require_member().is_err());
        assert!(access(Role::Member).require_member().is_ok());
        assert!(access(Role::Member).require_owner().is_err());
        assert!(access(Role::Owner).require_owner().is_ok());
    }
}

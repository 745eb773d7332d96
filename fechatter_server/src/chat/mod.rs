//! The chat domain: chats, their members and their messages, as the HTTP handlers and the live-updates hub
//! use them.
//!
//! - [`model`]: the shapes the API returns (and the database rows they come from).
//! - [`policy`]: who may see and change a chat; outsiders get 404, never a hint that the chat exists.
//! - [`validate`]: input rules and the analytics facts derived from input; pure, unit-tested.
//! - [`store`]: the SQL, each function taking the connection or transaction it runs on.
//! - [`send_queue`]: group commit of message sends (the sends that arrive together share one statement).

pub mod model;
pub mod policy;
pub mod send_queue;
pub mod store;
pub mod validate;

pub use model::{Chat, ChatType, MAX_LISTED_MEMBERS, Member, Message};
pub use policy::{Access, Role};

//! Input rules of the chat API and the analytics facts derived from input. Pure functions: the handlers call
//! them before touching the database, and they are unit-tested here.
//!
//! The limits are constants rather than configuration because clients rely on them (they are part of the API
//! contract, documented in the OpenAPI schemas), not because they are tuned per deployment.

use super::model::ChatType;
use crate::error::ApiError;
use fechatter_protos::v1::MessageSentEvent;
use std::collections::BTreeSet;

/// Longest chat name, in characters.
pub const MAX_NAME_CHARS: usize = 100;
/// Most user ids in one create or add-members request.
pub const MAX_MEMBERS_PER_REQUEST: usize = 500;
/// Longest message, in characters.
pub const MAX_CONTENT_CHARS: usize = 4000;
/// Most files attached to one message.
pub const MAX_FILES: usize = 10;
/// Longest file reference, in characters.
pub const MAX_FILE_REF_CHARS: usize = 512;
/// Longest idempotency key, in characters.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 128;
/// Messages per page when the client does not say.
pub const DEFAULT_PAGE_LIMIT: i64 = 50;
/// Most messages per page.
pub const MAX_PAGE_LIMIT: i64 = 100;
/// Longest search query, in characters.
pub const MAX_QUERY_CHARS: usize = 200;

/// The chat name, trimmed; 1 to [`MAX_NAME_CHARS`] characters, none of them a control character.
pub fn chat_name(name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS {
        return Err(ApiError::bad_request(
            "invalid_name",
            format!("name must have 1 to {MAX_NAME_CHARS} characters (has {chars})"),
        ));
    }
    // As for user and workspace names: a name is shown in lists, where a line break or escape would garble them.
    if name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_name",
            "name must not contain control characters (line breaks, tabs, escapes)",
        ));
    }
    Ok(name.to_owned())
}

/// The requested user ids, deduplicated and sorted; refused when empty or too many.
pub fn user_ids(requested: &[i64]) -> Result<Vec<i64>, ApiError> {
    let ids: BTreeSet<i64> = requested.iter().copied().collect();
    if ids.len() > MAX_MEMBERS_PER_REQUEST {
        return Err(ApiError::bad_request(
            "too_many_members",
            format!("at most {MAX_MEMBERS_PER_REQUEST} users per request"),
        ));
    }
    Ok(ids.into_iter().collect())
}

/// The members of a new chat besides its creator, deduplicated and sorted. A `single` chat has exactly one.
pub fn initial_members(creator: i64, chat_type: ChatType, requested: &[i64]) -> Result<Vec<i64>, ApiError> {
    let mut others = user_ids(requested)?;
    others.retain(|&id| id != creator);
    if chat_type == ChatType::Single && others.len() != 1 {
        return Err(ApiError::bad_request(
            "invalid_members",
            format!(
                "a single chat has exactly one member besides you (got {})",
                others.len()
            ),
        ));
    }
    Ok(others)
}

/// The refusal for user ids that are not users of the caller's workspace, naming them.
pub fn unknown_users(ids: &[i64]) -> ApiError {
    let list: Vec<String> = ids.iter().map(i64::to_string).collect();
    ApiError::bad_request(
        "unknown_members",
        format!("not users of your workspace: {}", list.join(", ")),
    )
}

/// A message needs text or files: at most [`MAX_CONTENT_CHARS`] characters, at most [`MAX_FILES`] files.
pub fn message_body(content: &str, files: &[String]) -> Result<(), ApiError> {
    let chars = content.chars().count();
    if chars > MAX_CONTENT_CHARS {
        return Err(ApiError::bad_request(
            "content_too_long",
            format!("content has {chars} characters; at most {MAX_CONTENT_CHARS}"),
        ));
    }
    if files.len() > MAX_FILES {
        return Err(ApiError::bad_request(
            "too_many_files",
            format!("{} files attached; at most {MAX_FILES}", files.len()),
        ));
    }
    if let Some(bad) = files
        .iter()
        .find(|f| f.trim().is_empty() || f.chars().count() > MAX_FILE_REF_CHARS)
    {
        return Err(ApiError::bad_request(
            "invalid_file",
            format!(
                "file references must have 1 to {MAX_FILE_REF_CHARS} characters (got {} characters)",
                bad.chars().count()
            ),
        ));
    }
    if content.trim().is_empty() && files.is_empty() {
        return Err(ApiError::bad_request(
            "empty_message",
            "a message needs content or files",
        ));
    }
    Ok(())
}

/// The idempotency key, when given: 1 to [`MAX_IDEMPOTENCY_KEY_CHARS`] characters.
pub fn idempotency_key(key: Option<&str>) -> Result<Option<&str>, ApiError> {
    match key {
        Some(k) if k.is_empty() || k.chars().count() > MAX_IDEMPOTENCY_KEY_CHARS => Err(ApiError::bad_request(
            "invalid_idempotency_key",
            format!("idempotency_key must have 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters"),
        )),
        other => Ok(other),
    }
}

/// The page size: [`DEFAULT_PAGE_LIMIT`] when absent, else 1 to [`MAX_PAGE_LIMIT`].
pub fn page_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(DEFAULT_PAGE_LIMIT),
        Some(n) if (1..=MAX_PAGE_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be between 1 and {MAX_PAGE_LIMIT} (got {n})"),
        )),
    }
}

/// The search text: 1 to [`MAX_QUERY_CHARS`] characters, not blank.
pub fn search_query(q: &str) -> Result<&str, ApiError> {
    let chars = q.chars().count();
    if q.trim().is_empty() || chars > MAX_QUERY_CHARS {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("q must have 1 to {MAX_QUERY_CHARS} characters (has {chars})"),
        ));
    }
    Ok(q)
}

/// The `message_sent` analytics facts of a message.
pub fn message_sent(chat_id: i64, content: &str, files: &[String]) -> MessageSentEvent {
    MessageSentEvent {
        chat_id: chat_id.to_string(),
        r#type: if files.is_empty() { "text" } else { "file" }.into(),
        size: i32::try_from(content.len()).unwrap_or(i32::MAX),
        total_files: i32::try_from(files.len()).unwrap_or(i32::MAX),
        has_mentions: has_mention(content),
        has_links: has_link(content),
    }
}

/// Whether `content` mentions someone: an `@` that starts a word and is followed by a name (`@bob`, `(@bob`),
/// not the `@` inside an e-mail address (`bob@example.com`).
fn has_mention(content: &str) -> bool {
    let is_name = |c: char| c.is_alphanumeric() || c == '_';
    let mut previous: Option<char> = None;
    let mut chars = content.chars().peekable();
    while let Some(c) = chars.next() {
        let starts_word = !previous.is_some_and(|p| is_name(p) || matches!(p, '.' | '-' | '+'));
        if c == '@' && starts_word && chars.peek().is_some_and(|&next| is_name(next)) {
            return true;
        }
        previous = Some(c);
    }
    false
}

/// Whether `content` holds a link: a word starting with `http://`, `https://` or `www.`, in any case.
fn has_link(content: &str) -> bool {
    let bytes = content.as_bytes();
    (0..bytes.len()).any(|i| {
        ["http://", "https://", "www."].iter().any(|p| {
            bytes[i..]
                .get(..p.len())
                .is_some_and(|w| w.eq_ignore_ascii_case(p.as_bytes()))
        })
            // `i` starts an ASCII prefix here, so it is a character boundary.
            && !content[..i].chars().next_back().is_some_and(char::is_alphanumeric)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(err: ApiError) -> &'static str {
        err.code()
    }

    #[test]
    fn chat_names_are_trimmed_and_must_have_1_to_100_characters() {
        assert_eq!(chat_name("  Team  ").ok().as_deref(), Some("Team"));
        assert_eq!(chat_name(&"é".repeat(100)).map(|n| n.chars().count()).ok(), Some(100));
        assert!(chat_name("   ").is_err());
        assert!(chat_name(&"x".repeat(101)).is_err());
        assert!(chat_name("two\nlines").is_err() && chat_name("esc\u{1b}[31m").is_err());
    }

    #[test]
    fn initial_members_drop_the_creator_and_duplicates() {
        let others = initial_members(1, ChatType::Group, &[3, 1, 2, 3]).ok();
        assert_eq!(others, Some(vec![2, 3]));
        assert_eq!(initial_members(1, ChatType::Group, &[]).ok(), Some(vec![]));
    }

    #[test]
    fn a_single_chat_needs_exactly_one_other_member() {
        assert_eq!(initial_members(1, ChatType::Single, &[2, 2, 1]).ok(), Some(vec![2]));
        for members in [&[][..], &[1][..], &[2, 3][..]] {
            let err = initial_members(1, ChatType::Single, members).err().map(code);
            assert_eq!(err, Some("invalid_members"), "{members:?}");
        }
    }

    #[test]
    fn too_many_user_ids_in_one_request_are_refused() {
        let ids: Vec<i64> = (0..=i64::try_from(MAX_MEMBERS_PER_REQUEST).unwrap_or(0)).collect();
        assert_eq!(user_ids(&ids).err().map(code), Some("too_many_members"));
    }

    #[test]
    fn unknown_users_are_named_in_the_refusal() {
        assert_eq!(unknown_users(&[7, 9]).to_string(), "not users of your workspace: 7, 9");
    }

    #[test]
    fn a_message_needs_content_or_files_within_limits() {
        let files = |n: usize| vec!["/files/1/abc".to_owned(); n];
        assert!(message_body("hi", &[]).is_ok());
        assert!(message_body("", &files(1)).is_ok());
        assert!(message_body(&"€".repeat(MAX_CONTENT_CHARS), &files(MAX_FILES)).is_ok());
        assert_eq!(message_body(" \n", &[]).err().map(code), Some("empty_message"));
        assert_eq!(
            message_body(&"x".repeat(MAX_CONTENT_CHARS + 1), &[]).err().map(code),
            Some("content_too_long")
        );
        assert_eq!(
            message_body("hi", &files(MAX_FILES + 1)).err().map(code),
            Some("too_many_files")
        );
        assert_eq!(
            message_body("hi", &["".to_owned()]).err().map(code),
            Some("invalid_file")
        );
    }

    #[test]
    fn page_limits_default_to_50_and_stay_between_1_and_100() {
        assert_eq!(page_limit(None).ok(), Some(50));
        assert_eq!(page_limit(Some(100)).ok(), Some(100));
        assert!(page_limit(Some(0)).is_err());
        assert!(page_limit(Some(101)).is_err());
    }

    #[test]
    fn search_queries_must_have_1_to_200_characters() {
        assert!(search_query("hello").is_ok());
        assert!(search_query(&"q".repeat(200)).is_ok());
        assert!(search_query("  ").is_err());
        assert!(search_query(&"q".repeat(201)).is_err());
    }

    #[test]
    fn idempotency_keys_are_optional_but_bounded() {
        assert_eq!(idempotency_key(None).ok(), Some(None));
        assert_eq!(idempotency_key(Some("k1")).ok(), Some(Some("k1")));
        assert!(idempotency_key(Some("")).is_err());
        assert!(idempotency_key(Some(&"k".repeat(129))).is_err());
    }

    #[test]
    fn message_sent_facts_describe_type_size_mentions_and_links() {
        let e = message_sent(5, "hi @bob see https://x.io", &[]);
        assert_eq!((e.chat_id.as_str(), e.r#type.as_str()), ("5", "text"));
        assert_eq!(
            (e.size, e.total_files, e.has_mentions, e.has_links),
            (24, 0, true, true)
        );
        let e = message_sent(5, "é", &["/files/1/a".into(), "/files/1/b".into()]);
        assert_eq!((e.r#type.as_str(), e.size, e.total_files), ("file", 2, 2));
        assert!(!e.has_mentions && !e.has_links);
    }

    #[test]
    fn a_mention_is_an_at_sign_starting_a_name_and_a_link_a_word_starting_a_url() {
        for text in ["@bob", "hi @bob!", "(@ada_l)", "cc:@Zoë", "line\n@bob"] {
            assert!(has_mention(text), "{text}");
        }
        for text in ["mail bob@example.com", "a.b@c.d", "@ alone", "just @", "x+y@z.io", ""] {
            assert!(!has_mention(text), "{text}");
        }
        for text in ["https://x.io", "see HTTP://X.IO", "(www.example.com)", "Www.a.b"] {
            assert!(has_link(text), "{text}");
        }
        for text in ["nohttp://x", "ñhttp://x", "awww.nothing", "http:/x", "plain words", "é"] {
            assert!(!has_link(text), "{text}");
        }
    }
}

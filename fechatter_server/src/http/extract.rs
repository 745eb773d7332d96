//! Extractors whose refusals are the API's JSON errors rather than axum's plain-text rejections: a malformed
//! body, path or query answers `{"error": …, "message": …}` with 400, 413 or 415.

use crate::error::ApiError;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use bytes::Bytes;
use serde::de::DeserializeOwned;

/// A JSON body.
///
/// Strings holding NUL (`\u0000`) are refused here, for every route at once: PostgreSQL text cannot store it,
/// so such a string would otherwise fail deep inside a query as a 500.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError::UnsupportedMediaType(
                "expected Content-Type: application/json".into(),
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge("request body exceeds server.max_body_bytes".into())
            } else {
                ApiError::bad_request("invalid_body", e.body_text())
            }
        })?;
        if has_escaped_nul(&bytes) {
            return Err(nul_refusal());
        }
        axum::Json::<T>::from_bytes(&bytes)
            .map(|axum::Json(value)| Self(value))
            .map_err(|e| ApiError::bad_request("invalid_json", e.body_text()))
    }
}

/// Whether the request says its body is JSON (`application/json` or any `+json` type), as axum's `Json` checks.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(mime) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
    else {
        return false;
    };
    let mime = mime.trim().to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// Whether a JSON text contains the escape `\u0000`. In valid JSON a backslash only ever starts an escape, so
/// walking escapes pairwise finds exactly the real ones (`\\u0000` is a backslash followed by text).
fn has_escaped_nul(json: &[u8]) -> bool {
    let mut i = 0;
    while i < json.len() {
        if json[i] == b'\\' {
            if json.get(i + 1) == Some(&b'u') && json.get(i + 2..i + 6) == Some(b"0000".as_slice()) {
                return true;
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    false
}

fn nul_refusal() -> ApiError {
    ApiError::bad_request("invalid_text", "text must not contain NUL characters (\\u0000)")
}

/// Path parameters.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| Self(v))
            .map_err(|e: PathRejection| ApiError::bad_request("invalid_path", e.body_text()))
    }
}

/// Query parameters.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        // NUL percent-encodes as exactly `%00` (a literal `%` is `%25`); see [`ApiJson`] for why it is refused.
        if parts.uri.query().is_some_and(|q| q.contains("%00")) {
            return Err(nul_refusal());
        }
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| Self(v))
            .map_err(|e: QueryRejection| ApiError::bad_request("invalid_query", e.body_text()))
    }
}

/// For `#[serde(default, deserialize_with = "empty_as_none")]` on an optional query parameter: `?before=` (a
/// form sends its empty fields so, and the API's own examples show them) means the parameter is absent, rather
/// than a number that does not parse.
pub fn empty_as_none<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    match <Option<String> as serde::Deserialize>::deserialize(deserializer)? {
        Some(text) if !text.is_empty() => text.parse().map(Some).map_err(serde::de::Error::custom),
        _ => Ok(None),
    }
}

/// A multipart body (uploads).
pub struct ApiMultipart(pub axum::extract::Multipart);

impl<S: Send + Sync> FromRequest<S> for ApiMultipart {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        axum::extract::Multipart::from_request(req, state)
            .await
            .map(Self)
            .map_err(|e| ApiError::bad_request("invalid_multipart", e.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_real_nul_escapes_are_found() {
        assert!(has_escaped_nul(br#"{"q":"a\u0000b"}"#));
        assert!(has_escaped_nul(br#"["\u0000"]"#));
        assert!(
            !has_escaped_nul(br#"{"q":"a\\u0000b"}"#),
            "an escaped backslash then text"
        );
        assert!(!has_escaped_nul(br#"{"q":"\u0001"}"#));
        assert!(!has_escaped_nul(br#"{"q":"plain"}"#));
    }

    #[test]
    fn empty_optional_query_numbers_are_absent() {
        #[derive(serde::Deserialize)]
        struct Page {
            #[serde(default, deserialize_with = "empty_as_none")]
            before: Option<i64>,
        }
        let parse = |query: &str| {
            let uri: axum::http::Uri = format!("/messages?{query}").parse().expect("uri");
            axum::extract::Query::<Page>::try_from_uri(&uri).map(|axum::extract::Query(p)| p.before)
        };
        assert_eq!(parse("before=").ok(), Some(None));
        assert_eq!(parse("").ok(), Some(None));
        assert_eq!(parse("before=42").ok(), Some(Some(42)));
        assert!(
            parse("before=x").is_err(),
            "a value that is not a number is still refused"
        );
    }

    #[test]
    fn json_content_types_are_recognised() {
        let with = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, value.parse().expect("header"));
            is_json(&h)
        };
        assert!(with("application/json"));
        assert!(with("application/json; charset=utf-8"));
        assert!(with("application/problem+json"));
        assert!(!with("text/plain"));
        assert!(!is_json(&HeaderMap::new()));
    }
}

//! What a request tells about its client, for analytics context and rate limits: its address (behind the
//! reverse proxies of `server.trusted_proxies`, see `fechatter_service::client_addr`), `User-Agent`, and the
//! optional `X-Client-Id`, `X-Session-Id` and `X-App-Version` headers.

use super::RequestContext;
use crate::state::AppState;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};

/// The optional client headers read into every event's context (lower case, as `HeaderName` wants them): the
/// CORS layer allows exactly these besides `Authorization` and `Content-Type`.
pub const CLIENT_HEADERS: [&str; 3] = [CLIENT_ID, SESSION_ID, APP_VERSION];
const CLIENT_ID: &str = "x-client-id";
const SESSION_ID: &str = "x-session-id";
const APP_VERSION: &str = "x-app-version";

/// Longest header value kept in an event.
const MAX_HEADER_CHARS: usize = 256;

/// Client facts of a request.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// The client's address: the peer's, or the one the trusted proxies forwarded.
    pub ip: IpAddr,
    /// `User-Agent`.
    pub user_agent: String,
    /// `X-Client-Id`.
    pub client_id: String,
    /// `X-Session-Id`.
    pub session_id: String,
    /// `X-App-Version`, or the server's version.
    pub app_version: String,
}

fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(MAX_HEADER_CHARS).collect())
        .unwrap_or_default()
}

impl ClientInfo {
    /// The analytics context of an action by `user_id` in `workspace_id`.
    pub fn context(&self, user_id: i64, workspace_id: i64) -> RequestContext {
        RequestContext {
            user_id: user_id.to_string(),
            workspace_id: workspace_id.to_string(),
            ..self.anonymous_context()
        }
    }

    /// The analytics context of a request by nobody known: no user or workspace id (empty, as the contract says
    /// for anonymous events, so that no one is mistaken for a user of id 0).
    pub fn anonymous_context(&self) -> RequestContext {
        RequestContext {
            user_id: String::new(),
            workspace_id: String::new(),
            client_id: self.client_id.clone(),
            session_id: self.session_id.clone(),
            ip: self.ip.to_string(),
            user_agent: self.user_agent.clone(),
            app_version: self.app_version.clone(),
        }
    }
}

impl FromRequestParts<AppState> for ClientInfo {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Infallible> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip())
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let ip = state.settings.server.trusted_proxies.client(peer, &parts.headers);
        let app_version = match header(&parts.headers, APP_VERSION) {
            v if v.is_empty() => concat!("fechatter_server/", env!("CARGO_PKG_VERSION")).to_owned(),
            v => v,
        };
        Ok(Self {
            ip,
            user_agent: header(&parts.headers, "user-agent"),
            client_id: header(&parts.headers, CLIENT_ID),
            session_id: header(&parts.headers, SESSION_ID),
            app_version,
        })
    }
}

//! The `auth` routes: sign-up, sign-in, token refresh and logout.
//!
//! Sign-in and sign-up are rate-limited per client IP before anything else runs, since both cost an Argon2id
//! hash. A sign-in answers the same 401 for an unknown e-mail and a wrong password, and does the same work for
//! both (an unknown e-mail is verified against a decoy hash), so neither the body nor the timing tells whether
//! an account exists. Every change and the analytics event describing it commit in one transaction.

use super::extract::ApiJson;
use super::invites;
use super::users::{self, Profile};
use crate::analytics::{ClientInfo, Recorded};
use crate::auth::refresh::{self, RefreshError};
use crate::auth::{AuthUser, password};
use crate::error::{ApiError, is_unique_violation};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fechatter_protos::v1::analytics_event::EventType;
use fechatter_protos::v1::{UserLoginEvent, UserLogoutEvent, UserRegisterEvent};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Longest full name and workspace name, in characters.
const MAX_NAME_CHARS: usize = 100;
/// Longest e-mail address, in octets (RFC 5321's path limit less the angle brackets).
const MAX_EMAIL_BYTES: usize = 254;
/// Shortest password, in characters.
const MIN_PASSWORD_CHARS: usize = 8;
/// Longest password, in characters (bounds the hashing work one request can ask for).
const MAX_PASSWORD_CHARS: usize = 128;
/// The `token_type` of every token answer.
const TOKEN_TYPE: &str = "Bearer";

/// Routes of this resource.
pub fn router() -> OpenApiRouter<AppState> {
    warm_decoy_hash();
    OpenApiRouter::new()
        .routes(routes!(signup))
        .routes(routes!(signin))
        .routes(routes!(refresh_tokens))
        .routes(routes!(logout))
}

/// Computes the decoy hash at start-up, on the blocking pool. Computed lazily instead, the first sign-in with an
/// unknown e-mail would cost two hashes, and so stand out from every other failed sign-in.
fn warm_decoy_hash() {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn_blocking(|| {
            password::decoy_hash();
        });
    }
}

/// A sign-up. Not `Debug`: it holds a password.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignupRequest {
    /// Display name, 1 to 100 characters.
    pub fullname: String,
    /// E-mail address, at most 254 characters; stored lower-cased.
    pub email: String,
    /// Password, 8 to 128 characters.
    pub password: String,
    /// A new workspace to create, with the new user as its owner (409 `workspace_taken` when the name exists).
    /// Give either this or `invite`.
    #[serde(default)]
    pub workspace: Option<String>,
    /// An invitation from `POST /api/workspace/invites`, to join that workspace instead.
    #[serde(default)]
    pub invite: Option<String>,
}

/// A sign-in. Not `Debug`: it holds a password.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SigninRequest {
    /// E-mail address (any case).
    pub email: String,
    /// Password.
    pub password: String,
}

/// A refresh token presented to `/api/refresh` or `/api/logout`. Not `Debug`: it is a credential.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    /// The refresh token from the last token answer.
    pub refresh_token: String,
}

/// Tokens for a session.
#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    /// Access token (EdDSA-signed JWT), sent as `Authorization: Bearer <token>`.
    pub access_token: String,
    /// Refresh token: single use, exchanged at `/api/refresh` for the next pair.
    pub refresh_token: String,
    /// Lifetime of the access token, seconds.
    pub expires_in: u64,
    /// Always `Bearer`.
    pub token_type: String,
}

/// Tokens for a new account, and the account.
#[derive(Serialize, ToSchema)]
pub struct SignupResponse {
    /// The new session.
    #[serde(flatten)]
    pub tokens: TokenResponse,
    /// The new account.
    pub user: Profile,
}

/// A sign-up that passed validation.
#[derive(Debug, PartialEq, Eq)]
struct NewUser {
    /// Trimmed full name.
    fullname: String,
    /// Trimmed, lower-cased e-mail.
    email: String,
    /// The password as given.
    password: String,
    /// Which workspace the account goes to.
    join: Join,
}

/// How a sign-up gets its workspace.
#[derive(Debug, PartialEq, Eq)]
enum Join {
    /// Create a workspace of this (trimmed) name.
    Create(String),
    /// Join the workspace of this invitation.
    Invite(String),
}

/// Longest invitation accepted (they are 64 hex characters).
const MAX_INVITE_CHARS: usize = 128;

/// A trimmed name of 1 to [`MAX_NAME_CHARS`] characters without control characters.
fn valid_name(raw: &str) -> Option<String> {
    let name = raw.trim();
    let chars = name.chars().count();
    ((1..=MAX_NAME_CHARS).contains(&chars) && !name.chars().any(char::is_control)).then(|| name.to_owned())
}

/// The e-mail, trimmed and lower-cased, when it is plausible: one `@` between a non-empty local part and a
/// dotted domain, no whitespace or control characters, at most [`MAX_EMAIL_BYTES`]. Deliverability is not
/// checked; nothing short of sending a message can.
fn normalize_email(raw: &str) -> Option<String> {
    let email = raw.trim().to_lowercase();
    let (local, domain) = email.split_once('@')?;
    let plausible = email.len() <= MAX_EMAIL_BYTES
        && !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    plausible.then_some(email)
}

/// The refusal of an unknown, expired or malformed invitation.
fn invalid_invite() -> ApiError {
    ApiError::bad_request("invalid_invite", "unknown or expired invitation")
}

impl NewUser {
    /// Checks every field; the error's code names the first bad one.
    fn validate(request: SignupRequest) -> Result<Self, ApiError> {
        let fullname = valid_name(&request.fullname).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_fullname",
                format!("fullname must be 1 to {MAX_NAME_CHARS} characters"),
            )
        })?;
        let email = normalize_email(&request.email).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_email",
                format!("email must look like name@example.com and be at most {MAX_EMAIL_BYTES} characters"),
            )
        })?;
        let password_chars = request.password.chars().count();
        if !(MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&password_chars) {
            return Err(ApiError::bad_request(
                "invalid_password",
                format!("password must be {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters"),
            ));
        }
        let join = match (request.workspace, request.invite) {
            (Some(name), None) => Join::Create(valid_name(&name).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_workspace",
                    format!("workspace must be 1 to {MAX_NAME_CHARS} characters"),
                )
            })?),
            (None, Some(invite)) if !invite.is_empty() && invite.chars().count() <= MAX_INVITE_CHARS => {
                Join::Invite(invite)
            }
            (None, Some(_)) => return Err(invalid_invite()),
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request(
                    "invalid_workspace",
                    "give either workspace (to create one) or invite (to join one), not both",
                ));
            }
            (None, None) => {
                return Err(ApiError::bad_request(
                    "invalid_workspace",
                    "workspace is required (or an invite to join an existing workspace)",
                ));
            }
        };
        Ok(Self {
            fullname,
            email,
            password: request.password,
            join,
        })
    }
}

/// A refusal of an auth route: any [`ApiError`], or a 401 whose code says which credential failed (the
/// `ApiError::Unauthorized` code is always `unauthorized`). Same body shape: `{"error": code, "message": text}`.
#[derive(Debug)]
enum AuthError {
    /// Any other refusal or failure.
    Api(ApiError),
    /// 401 with a specific code and message.
    Refused(&'static str, &'static str),
}

/// The single answer to a failed sign-in, whichever part was wrong.
const INVALID_CREDENTIALS: AuthError = AuthError::Refused("invalid_credentials", "invalid e-mail or password");
/// The answer to a refresh token that was never issued, or that belongs to someone else.
const INVALID_REFRESH_TOKEN: AuthError = AuthError::Refused("invalid_refresh_token", "unknown refresh token");

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        match self {
            Self::Api(err) => err.into_response(),
            Self::Refused(code, message) => (
                StatusCode::UNAUTHORIZED,
                Json(serde_json::json!({ "error": code, "message": message })),
            )
                .into_response(),
        }
    }
}

impl From<ApiError> for AuthError {
    fn from(err: ApiError) -> Self {
        Self::Api(err)
    }
}

impl From<sqlx::Error> for AuthError {
    fn from(err: sqlx::Error) -> Self {
        Self::Api(err.into())
    }
}

impl From<anyhow::Error> for AuthError {
    fn from(err: anyhow::Error) -> Self {
        Self::Api(err.into())
    }
}

impl From<RefreshError> for AuthError {
    fn from(err: RefreshError) -> Self {
        match err {
            RefreshError::Unknown => INVALID_REFRESH_TOKEN,
            RefreshError::Expired => Self::Refused("refresh_token_expired", "refresh token expired; sign in again"),
            RefreshError::Revoked => Self::Refused("refresh_token_revoked", "refresh token revoked; sign in again"),
            RefreshError::Reused { family_id, user_id } => {
                tracing::warn!(user_id, %family_id, "refresh token reused; its family was revoked");
                Self::Refused(
                    "refresh_token_reused",
                    "refresh token already used; every token of this session was revoked, sign in again",
                )
            }
            RefreshError::Database(err) => Self::Api(err.into()),
        }
    }
}

/// Counts an attempt by the client; 429 over `server.auth_rate_limit_per_minute`.
fn check_rate(state: &AppState, client: &ClientInfo) -> Result<(), ApiError> {
    if state.auth_limiter.check(client.ip) {
        Ok(())
    } else {
        Err(ApiError::TooManyRequests(
            "too many sign-up and sign-in attempts from this address; retry later".into(),
        ))
    }
}

/// The token answer for `user_id`, whose refresh token is `refresh_token`.
fn token_answer(
    state: &AppState,
    user_id: i64,
    workspace_id: i64,
    refresh_token: String,
) -> anyhow::Result<TokenResponse> {
    Ok(TokenResponse {
        access_token: state.keys.issue(user_id, workspace_id)?,
        refresh_token,
        expires_in: state.keys.access_ttl_seconds,
        token_type: TOKEN_TYPE.to_owned(),
    })
}

/// Create an account in a new workspace, or in an existing one with an invitation; answers the first session's
/// tokens.
#[utoipa::path(post, path = "/api/signup", tag = "auth", request_body = SignupRequest,
    responses(
        (status = 201, body = SignupResponse),
        (status = 400, description = "a field is invalid; the code names it (e.g. `invalid_email`)"),
        (status = 400, description = "`invalid_invite`: unknown or expired invitation"),
        (status = 409, description = "`email_taken`, or `workspace_taken` (join it with an invitation instead)"),
        (status = 429, description = "too many attempts from this client"),
    ))]
async fn signup(
    State(state): State<AppState>,
    client: ClientInfo,
    ApiJson(request): ApiJson<SignupRequest>,
) -> Result<(StatusCode, Json<SignupResponse>), AuthError> {
    check_rate(&state, &client)?;
    let new = NewUser::validate(request)?;
    // Hashed before the transaction starts, so no connection is held while the hash runs.
    let password_hash = password::hash(new.password).await?;

    let mut tx = state.pool.begin().await?;
    let (workspace_id, created, registration_method) = match &new.join {
        Join::Create(name) => {
            // DO NOTHING instead of a prior SELECT: of two sign-ups creating the same workspace, the second waits
            // for the first to commit and then gets 409.
            let created: Option<i64> = sqlx::query_scalar(
                "INSERT INTO workspaces (name) VALUES ($1) ON CONFLICT (name) DO NOTHING RETURNING id",
            )
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
            let id = created.ok_or_else(|| {
                ApiError::Conflict(
                    "workspace_taken",
                    format!(
                        "a workspace named {name:?} exists; to join it, ask one of its members for an invitation \
                         (POST /api/workspace/invites) and sign up with it as invite"
                    ),
                )
            })?;
            (id, true, "password")
        }
        Join::Invite(invite) => {
            let id = invites::workspace_of(&mut tx, invite)
                .await?
                .ok_or_else(invalid_invite)?;
            (id, false, "invite")
        }
    };
    let user_id: i64 = sqlx::query_scalar(
        "INSERT INTO users (workspace_id, fullname, email, password_hash) VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(workspace_id)
    .bind(&new.fullname)
    .bind(&new.email)
    .bind(&password_hash)
    .fetch_one(&mut *tx)
    .await
    .map_err(|err| {
        if is_unique_violation(&err, "users_email_key") {
            ApiError::Conflict("email_taken", "an account with this e-mail already exists".into())
        } else {
            err.into()
        }
    })?;
    if created {
        sqlx::query("UPDATE workspaces SET owner_id = $1 WHERE id = $2")
            .bind(user_id)
            .bind(workspace_id)
            .execute(&mut *tx)
            .await?;
    }
    let refresh_token = refresh::start_family(&mut tx, user_id, state.settings.auth.refresh_token_ttl_seconds).await?;
    let event = EventType::UserRegister(UserRegisterEvent {
        email: new.email.clone(),
        workspace_id: workspace_id.to_string(),
        registration_method: registration_method.into(),
    });
    let recorded = state
        .analytics
        .record(&mut tx, event, &client.context(user_id, workspace_id))
        .await?;
    let user = users::profile(&mut tx, user_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("user {user_id} not visible in the transaction that created it"))?;
    let tokens = token_answer(&state, user_id, workspace_id, refresh_token)?;
    tx.commit().await?;
    state.analytics.committed(recorded);
    tracing::info!(user_id, workspace_id, new_workspace = created, "user signed up");
    Ok((StatusCode::CREATED, Json(SignupResponse { tokens, user })))
}

/// Sign in with e-mail and password; answers a new session's tokens.
#[utoipa::path(post, path = "/api/signin", tag = "auth", request_body = SigninRequest,
    responses(
        (status = 200, body = TokenResponse),
        (status = 401, description = "`invalid_credentials`, whether the e-mail or the password was wrong"),
        (status = 429, description = "too many attempts from this client"),
    ))]
async fn signin(
    State(state): State<AppState>,
    client: ClientInfo,
    ApiJson(request): ApiJson<SigninRequest>,
) -> Result<Json<TokenResponse>, AuthError> {
    check_rate(&state, &client)?;
    let email = request.email.trim().to_lowercase();
    let account: Option<(i64, i64, String)> =
        sqlx::query_as("SELECT id, workspace_id, password_hash FROM users WHERE email = $1")
            .bind(&email)
            .fetch_optional(&state.pool)
            .await?;
    // Same work either way: an unknown e-mail is verified against the decoy (fetched on the blocking pool, since
    // its first use computes it).
    let (ids, phc) = match account {
        Some((user_id, workspace_id, phc)) => (Some((user_id, workspace_id)), phc),
        None => (
            None,
            tokio::task::spawn_blocking(password::decoy_hash)
                .await
                .map_err(anyhow::Error::from)?
                .to_owned(),
        ),
    };
    let matches = password::verify(request.password, phc).await?;
    let Some((user_id, workspace_id)) = ids.filter(|_| matches) else {
        return Err(INVALID_CREDENTIALS);
    };

    let mut tx = state.pool.begin().await?;
    let refresh_token = refresh::start_family(&mut tx, user_id, state.settings.auth.refresh_token_ttl_seconds).await?;
    let event = EventType::UserLogin(UserLoginEvent {
        email,
        login_method: "password".into(),
    });
    let recorded = state
        .analytics
        .record(&mut tx, event, &client.context(user_id, workspace_id))
        .await?;
    let tokens = token_answer(&state, user_id, workspace_id, refresh_token)?;
    tx.commit().await?;
    state.analytics.committed(recorded);
    Ok(Json(tokens))
}

/// Exchange a refresh token for a new access token and the next refresh token of the same session. Each refresh
/// token works once: presenting a used one revokes the whole session.
#[utoipa::path(post, path = "/api/refresh", tag = "auth", request_body = RefreshRequest,
    responses(
        (status = 200, body = TokenResponse),
        (status = 401, description = "`invalid_refresh_token`, `refresh_token_expired`, `refresh_token_revoked` \
            or `refresh_token_reused` (the session is then revoked)"),
    ))]
async fn refresh_tokens(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<RefreshRequest>,
) -> Result<Json<TokenResponse>, AuthError> {
    let rotated = refresh::rotate(
        &state.pool,
        &request.refresh_token,
        state.settings.auth.refresh_token_ttl_seconds,
    )
    .await?;
    Ok(Json(token_answer(
        &state,
        rotated.user_id,
        rotated.workspace_id,
        rotated.refresh_token,
    )?))
}

/// End the session of the given refresh token: every token of it is revoked. Logging out twice is harmless (but a
/// session whose every token expired more than a day ago is deleted, and its tokens are unknown: 401).
#[utoipa::path(post, path = "/api/logout", tag = "auth", request_body = RefreshRequest,
    responses(
        (status = 204, description = "the session is revoked"),
        (status = 401, description = "no valid access token, or `invalid_refresh_token` (unknown or another user's)"),
    ),
    security(("bearer" = [])))]
async fn logout(
    State(state): State<AppState>,
    user: AuthUser,
    client: ClientInfo,
    ApiJson(request): ApiJson<RefreshRequest>,
) -> Result<StatusCode, AuthError> {
    let mut tx = state.pool.begin().await?;
    let revoked = refresh::revoke_family_of(&mut tx, &request.refresh_token, user.user_id)
        .await?
        .ok_or(INVALID_REFRESH_TOKEN)?;
    // A repeated logout changes nothing, so it is not another logout event.
    let mut recorded = Recorded::default();
    if revoked.tokens > 0 {
        let email: String = sqlx::query_scalar("SELECT email FROM users WHERE id = $1")
            .bind(user.user_id)
            .fetch_one(&mut *tx)
            .await?;
        let event = EventType::UserLogout(UserLogoutEvent { email });
        recorded = state
            .analytics
            .record(&mut tx, event, &client.context(user.user_id, user.workspace_id))
            .await?;
    }
    tx.commit().await?;
    state.analytics.committed(recorded);
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(fullname: &str, email: &str, password: &str, workspace: &str) -> SignupRequest {
        SignupRequest {
            fullname: fullname.into(),
            email: email.into(),
            password: password.into(),
            workspace: Some(workspace.into()),
            invite: None,
        }
    }

    fn refusal_code(request: SignupRequest) -> &'static str {
        match NewUser::validate(request) {
            Err(err) => err.code(),
            Ok(_) => "accepted",
        }
    }

    #[test]
    fn a_valid_sign_up_is_trimmed_and_its_email_lower_cased() {
        let new =
            NewUser::validate(request(" Ada Lovelace ", " Ada@Example.COM ", " secret pw ", " Acme ")).expect("valid");
        assert_eq!(
            new,
            NewUser {
                fullname: "Ada Lovelace".into(),
                email: "ada@example.com".into(),
                password: " secret pw ".into(),
                join: Join::Create("Acme".into()),
            }
        );
    }

    #[test]
    fn a_sign_up_creates_a_workspace_or_joins_one_by_invitation_never_both() {
        let with = |workspace: Option<&str>, invite: Option<&str>| SignupRequest {
            workspace: workspace.map(str::to_owned),
            invite: invite.map(str::to_owned),
            ..request("Ada", "ada@example.com", "password1", "unused")
        };
        let joined = NewUser::validate(with(None, Some("abc"))).expect("valid");
        assert_eq!(joined.join, Join::Invite("abc".into()));
        assert_eq!(refusal_code(with(Some("Acme"), Some("abc"))), "invalid_workspace");
        assert_eq!(refusal_code(with(None, None)), "invalid_workspace");
        assert_eq!(refusal_code(with(None, Some(""))), "invalid_invite");
        assert_eq!(
            refusal_code(with(None, Some(&"x".repeat(MAX_INVITE_CHARS + 1)))),
            "invalid_invite"
        );
    }

    #[test]
    fn each_invalid_field_is_named_by_the_refusal() {
        let long = "x".repeat(MAX_NAME_CHARS + 1);
        let cases = [
            (request("", "a@b.co", "password1", "w"), "invalid_fullname"),
            (request("   ", "a@b.co", "password1", "w"), "invalid_fullname"),
            (request(&long, "a@b.co", "password1", "w"), "invalid_fullname"),
            (request("a\u{0}b", "a@b.co", "password1", "w"), "invalid_fullname"),
            (request("A", "a.b.co", "password1", "w"), "invalid_email"),
            (request("A", "a@b.co", "short", "w"), "invalid_password"),
            (
                request("A", "a@b.co", &"p".repeat(MAX_PASSWORD_CHARS + 1), "w"),
                "invalid_password",
            ),
            (request("A", "a@b.co", "password1", ""), "invalid_workspace"),
            (request("A", "a@b.co", "password1", &long), "invalid_workspace"),
        ];
        for (request, code) in cases {
            assert_eq!(refusal_code(request), code);
        }
    }

    #[test]
    fn lengths_are_counted_in_characters_at_their_limits() {
        let name = "é".repeat(MAX_NAME_CHARS);
        let password = "ü".repeat(MAX_PASSWORD_CHARS);
        assert_eq!(refusal_code(request(&name, "a@b.co", &password, &name)), "accepted");
        assert_eq!(
            refusal_code(request("A", "a@b.co", &"ü".repeat(MIN_PASSWORD_CHARS), "w")),
            "accepted"
        );
        assert_eq!(
            refusal_code(request("A", "a@b.co", &"ü".repeat(MIN_PASSWORD_CHARS - 1), "w")),
            "invalid_password"
        );
    }

    #[test]
    fn implausible_emails_are_refused() {
        let too_long = format!("{}@example.com", "a".repeat(MAX_EMAIL_BYTES - "@example.com".len() + 1));
        let longest = format!("{}@example.com", "a".repeat(MAX_EMAIL_BYTES - "@example.com".len()));
        assert_eq!(normalize_email(&longest).map(|e| e.len()), Some(MAX_EMAIL_BYTES));
        for bad in [
            "",
            "plain",
            "@example.com",
            "a@",
            "a@b@example.com",
            "a@localhost",
            "a@.example.com",
            "a@example.com.",
            "a@example..com",
            "a b@example.com",
            "a@exa\tmple.com",
            too_long.as_str(),
        ] {
            assert_eq!(normalize_email(bad), None, "{bad:?}");
        }
        assert_eq!(
            normalize_email("first.last+tag@sub.Example.org").as_deref(),
            Some("first.last+tag@sub.example.org")
        );
    }
}

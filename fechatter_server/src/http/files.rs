//! File upload and download. Files are stored content-addressed under `files.dir`
//! (`<workspace>/<sha256[..2]>/<sha256>`), so identical uploads share storage and a file's URL is derived
//! from its content alone. Only members of the file's workspace can read it, and the path is built from a
//! validated hex digest and numeric ids, never from user-supplied names: path traversal is impossible. An upload
//! holds 1 to [`MAX_FILES_PER_UPLOAD`] non-empty files and is stored all or nothing.

use super::staging::{Received, Staged, internal, place, receive_all};
use crate::analytics::{ClientInfo, Recorded};
use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::http::extract::{ApiMultipart, ApiPath};
use crate::state::AppState;
use axum::Json;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use fechatter_protos::v1::analytics_event::EventType;
use fechatter_protos::v1::{FileDownloadedEvent, FileUploadedEvent};
use serde::Serialize;
use sqlx::{PgPool, Row as _};
use std::path::{Path, PathBuf};
use std::time::Instant;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use super::staging::MAX_FILES_PER_UPLOAD;

/// Room for multipart framing on top of `files.max_upload_bytes`.
const MULTIPART_OVERHEAD_BYTES: usize = 64 * 1024;

/// Routes of this resource; uploads get their own body limit (the JSON limit is far smaller).
pub fn router(max_upload_bytes: usize) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(upload))
        .layer(DefaultBodyLimit::max(
            max_upload_bytes.saturating_add(MULTIPART_OVERHEAD_BYTES),
        ))
        .routes(routes!(download))
}

/// A stored file.
#[derive(Debug, Serialize, ToSchema)]
pub struct StoredFile {
    /// Where members of the workspace download it.
    pub url: String,
    /// Hex SHA-256 of the content.
    pub sha256: String,
    /// Size in bytes.
    pub size: i64,
    /// Content type given at upload.
    pub content_type: String,
    /// File name given at upload.
    pub name: String,
}

/// Answer of an upload.
#[derive(Debug, Serialize, ToSchema)]
pub struct Uploaded {
    /// One entry per uploaded part.
    pub files: Vec<StoredFile>,
}

/// True for a lower-case hex SHA-256.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The URL a stored file is downloaded from, answered by uploads and attached to messages.
pub fn url(workspace_id: i64, sha256: &str) -> String {
    format!("/api/files/{workspace_id}/{sha256}")
}

/// Checks that every reference attached to a message is the [`url`] of a file uploaded to `workspace_id`: 400
/// `invalid_file` for anything else (another workspace's file, a link, a path), 400 `unknown_file` for a digest
/// no upload stored. Members download what a message references, so it must be something they can download.
pub async fn check_references(pool: &PgPool, workspace_id: i64, references: &[String]) -> Result<(), ApiError> {
    if references.is_empty() {
        return Ok(());
    }
    let prefix = url(workspace_id, "");
    let mut digests = Vec::with_capacity(references.len());
    for reference in references {
        match reference.strip_prefix(&prefix) {
            Some(digest) if is_sha256_hex(digest) => digests.push(digest),
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_file",
                    format!(
                        "file reference {reference:?} is not a file of this workspace; attach the url an upload \
                         answered ({prefix}<sha256>)"
                    ),
                ));
            }
        }
    }
    let missing: Option<String> = sqlx::query_scalar(
        "SELECT d FROM unnest($2::text[]) AS d \
         WHERE NOT EXISTS (SELECT 1 FROM files f WHERE f.workspace_id = $1 AND f.sha256 = d) LIMIT 1",
    )
    .bind(workspace_id)
    .bind(&digests)
    .fetch_optional(pool)
    .await?;
    match missing {
        Some(digest) => Err(ApiError::bad_request(
            "unknown_file",
            format!("no file {prefix}{digest} was uploaded to this workspace"),
        )),
        None => Ok(()),
    }
}

/// Where a file lives on disk.
pub fn storage_path(root: &Path, workspace_id: i64, sha256: &str) -> PathBuf {
    root.join(workspace_id.to_string()).join(&sha256[..2]).join(sha256)
}

/// Upload files (multipart; each part is one file).
///
/// All or nothing: every part is received into `staging/` first, and only once all of them arrived whole (none
/// empty, none too large, at most [`MAX_FILES_PER_UPLOAD`]) are they moved into place and recorded, in one
/// transaction with their `file_uploaded` events. A refused upload leaves no row, event or staged file behind.
#[utoipa::path(post, path = "/api/upload", tag = "files",
    // Keep the number in step with MAX_FILES_PER_UPLOAD (a unit test checks it).
    request_body(content_type = "multipart/form-data",
        description = "1 to 10 file parts, none empty; all are stored, or none (any refused part refuses the upload)"),
    responses((status = 201, body = Uploaded),
        (status = 400, description = "No file part (`no_files`), more than 10 (`too_many_files`), an empty file \
            (`empty_file`), or a malformed body"),
        (status = 401), (status = 413, description = "A file over `files.max_upload_bytes` \
            (`payload_too_large`), or more than the workspace may still store (`quota_exceeded`: \
            `files.max_workspace_bytes`)")),
    security(("bearer" = [])))]
async fn upload(
    State(state): State<AppState>,
    user: AuthUser,
    client: ClientInfo,
    ApiMultipart(mut multipart): ApiMultipart,
) -> Result<(StatusCode, Json<Uploaded>), ApiError> {
    let root = &state.settings.files.dir;
    let quota = state.settings.files.max_workspace_bytes;
    // A workspace at its quota is refused before its body is read (up to 10 files of `max_upload_bytes`).
    check_quota(&state.pool, user.workspace_id, std::iter::empty(), quota).await?;
    let staged = receive_all(&mut multipart, root, state.settings.files.max_upload_bytes).await?;
    if staged.is_empty() {
        return Err(ApiError::bad_request(
            "no_files",
            "the multipart body holds no file part",
        ));
    }
    check_quota(&state.pool, user.workspace_id, staged.iter().map(|s| &s.file), quota).await?;
    let mut received = Vec::with_capacity(staged.len());
    // On an error, the parts not yet placed are dropped with the iterator, and so removed.
    for Staged { path, file } in staged {
        place(path, &storage_path(root, user.workspace_id, &file.sha256)).await?;
        received.push(file);
    }
    let mut tx = state.pool.begin().await?;
    let context = client.context(user.user_id, user.workspace_id);
    let mut recorded = Recorded::default();
    for file in &received {
        sqlx::query(
            "INSERT INTO files (workspace_id, sha256, size_bytes, content_type, file_name, uploaded_by) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (workspace_id, sha256) DO NOTHING",
        )
        .bind(user.workspace_id)
        .bind(&file.sha256)
        .bind(file.size)
        .bind(&file.content_type)
        .bind(&file.name)
        .bind(user.user_id)
        .execute(&mut *tx)
        .await?;
        let kind = EventType::FileUploaded(FileUploadedEvent {
            file_type: file.content_type.clone(),
            file_size: file.size,
            upload_method: "multipart".into(),
            upload_duration_ms: file.duration_ms,
        });
        recorded += state.analytics.record(&mut tx, kind, &context).await?;
    }
    tx.commit().await?;
    state.analytics.committed(recorded);
    let files = received
        .into_iter()
        .map(|file| StoredFile {
            url: url(user.workspace_id, &file.sha256),
            sha256: file.sha256,
            size: file.size,
            content_type: file.content_type,
            name: file.name,
        })
        .collect();
    Ok((StatusCode::CREATED, Json(Uploaded { files })))
}

/// Refuses an upload that would take the workspace past `max_bytes` of stored files, counting only the files it
/// does not store already (content-addressed: the same content is stored once); with no files given, refuses
/// when the workspace is at its quota already. Checked before anything is placed, without a lock: uploads
/// running at once may each pass it, by up to one upload's size each.
async fn check_quota<'a>(
    pool: &PgPool,
    workspace_id: i64,
    files: impl Iterator<Item = &'a Received>,
    max_bytes: u64,
) -> Result<(), ApiError> {
    let mut new: std::collections::HashMap<&str, i64> = std::collections::HashMap::new();
    for file in files {
        new.insert(file.sha256.as_str(), file.size);
    }
    let hashes: Vec<&str> = new.keys().copied().collect();
    let row = sqlx::query(
        "SELECT COALESCE(sum(size_bytes), 0)::BIGINT AS used, \
             COALESCE(array_agg(sha256) FILTER (WHERE sha256 = ANY($2)), '{}') AS stored \
         FROM files WHERE workspace_id = $1",
    )
    .bind(workspace_id)
    .bind(&hashes)
    .fetch_one(pool)
    .await?;
    let used: i64 = row.try_get("used")?;
    let stored: Vec<String> = row.try_get("stored")?;
    let adding: i64 = new
        .iter()
        .filter(|(sha, _)| !stored.iter().any(|s| s == *sha))
        .map(|(_, size)| size)
        .sum();
    let used = u64::try_from(used).unwrap_or(0);
    let adding = u64::try_from(adding).unwrap_or(0);
    if hashes.is_empty() && used >= max_bytes {
        Err(ApiError::QuotaExceeded(format!(
            "the workspace stores {used} bytes of files, all of its {max_bytes} (files.max_workspace_bytes)"
        )))
    } else if adding > 0 && used.saturating_add(adding) > max_bytes {
        Err(ApiError::QuotaExceeded(format!(
            "the workspace stores {used} bytes of files; these {adding} more would pass its \
             {max_bytes} (files.max_workspace_bytes)"
        )))
    } else {
        Ok(())
    }
}

/// Download a file of the caller's workspace.
#[utoipa::path(get, path = "/api/files/{workspace_id}/{sha256}", tag = "files",
    params(("workspace_id" = i64, Path), ("sha256" = String, Path)),
    responses((status = 200, description = "the file's bytes"), (status = 401), (status = 404)),
    security(("bearer" = [])))]
async fn download(
    State(state): State<AppState>,
    user: AuthUser,
    client: ClientInfo,
    ApiPath((workspace_id, sha256)): ApiPath<(i64, String)>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    // Another workspace's file, or a malformed digest: the same 404 as a missing file.
    if workspace_id != user.workspace_id || !is_sha256_hex(&sha256) {
        return Err(ApiError::NotFound("file"));
    }
    let row: Option<(String, String, i64)> =
        sqlx::query_as("SELECT content_type, file_name, size_bytes FROM files WHERE workspace_id = $1 AND sha256 = $2")
            .bind(workspace_id)
            .bind(&sha256)
            .fetch_optional(&state.pool)
            .await?;
    let (content_type, name, size) = row.ok_or(ApiError::NotFound("file"))?;
    let path = storage_path(&state.settings.files.dir, workspace_id, &sha256);
    let file = tokio::fs::File::open(&path).await.map_err(internal)?;
    let kind = EventType::FileDownloaded(FileDownloadedEvent {
        file_type: content_type.clone(),
        file_size: size,
        download_duration_ms: i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX),
    });
    let mut conn = state.pool.acquire().await?;
    // Outside a transaction: written is committed.
    let recorded = state
        .analytics
        .record(&mut conn, kind, &client.context(user.user_id, user.workspace_id))
        .await?;
    state.analytics.committed(recorded);
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    let disposition = format!("attachment; filename=\"{}\"", name.replace('"', "'"));
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_LENGTH, size.to_string()),
            (header::CONTENT_DISPOSITION, disposition),
            // The type is the uploader's word: a browser must not guess another (HTML in a "text/plain"), and
            // content opened in the app's origin anyway (a web client's blob: URL) runs nothing.
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
            (
                header::CONTENT_SECURITY_POLICY,
                "sandbox; default-src 'none'".to_owned(),
            ),
        ],
        body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_description_states_the_part_limit() {
        let (_, doc) = router(1024).split_for_parts();
        let doc = serde_json::to_string(&doc).expect("json");
        assert!(
            doc.contains(&format!("1 to {MAX_FILES_PER_UPLOAD} file parts")),
            "the upload's description must name MAX_FILES_PER_UPLOAD"
        );
    }

    #[test]
    fn only_lower_case_sha256_hex_is_accepted() {
        assert!(is_sha256_hex(&"a".repeat(64)));
        assert!(!is_sha256_hex(&"A".repeat(64)));
        assert!(!is_sha256_hex("../../etc/passwd"));
        assert!(!is_sha256_hex(&format!("{}/..", "a".repeat(61))));
    }
}

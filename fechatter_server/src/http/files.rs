//! File upload and download. Files are stored content-addressed under `files.dir`
//! (`<workspace>/<sha256[..2]>/<sha256>`), so identical uploads share storage and a file's URL is derived
//! from its content alone. Only members of the file's workspace can read it, and the path is built from a
//! validated hex digest and numeric ids, never from user-supplied names: path traversal is impossible.

use crate::analytics::ClientInfo;
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
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tokio::io::AsyncWriteExt as _;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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

/// Where a file lives on disk.
pub fn storage_path(root: &Path, workspace_id: i64, sha256: &str) -> PathBuf {
    root.join(workspace_id.to_string()).join(&sha256[..2]).join(sha256)
}

/// Keeps a client-supplied name printable and short (it is only ever displayed, never used as a path).
fn clean_name(name: Option<&str>) -> String {
    let cleaned: String = name
        .unwrap_or("file")
        .chars()
        .filter(|c| !c.is_control() && *c != '/' && *c != '\\')
        .take(255)
        .collect();
    if cleaned.is_empty() { "file".into() } else { cleaned }
}

/// Upload files (multipart; each part is one file).
#[utoipa::path(post, path = "/api/upload", tag = "files",
    request_body(content_type = "multipart/form-data", description = "one or more file parts"),
    responses((status = 201, body = Uploaded), (status = 400), (status = 401), (status = 413)),
    security(("bearer" = [])))]
async fn upload(
    State(state): State<AppState>,
    user: AuthUser,
    client: ClientInfo,
    ApiMultipart(mut multipart): ApiMultipart,
) -> Result<(StatusCode, Json<Uploaded>), ApiError> {
    let root = state.settings.files.dir.clone();
    let max = state.settings.files.max_upload_bytes;
    let mut stored = Vec::new();
    while let Some(mut field) = multipart
        .next_field()
        .await
        .map_err(|e| multipart_error(e.status(), e.body_text()))?
    {
        let started = Instant::now();
        let name = clean_name(field.file_name());
        let content_type = field
            .content_type()
            .unwrap_or("application/octet-stream")
            .chars()
            .take(100)
            .collect::<String>();
        let staging_dir = root.join("staging");
        tokio::fs::create_dir_all(&staging_dir).await.map_err(internal)?;
        let staging = staging_dir.join(uuid::Uuid::new_v4().to_string());
        let mut out = tokio::fs::File::create(&staging).await.map_err(internal)?;
        let mut hasher = Sha256::new();
        let mut size = 0usize;
        let result = async {
            while let Some(chunk) = field
                .chunk()
                .await
                .map_err(|e| multipart_error(e.status(), e.body_text()))?
            {
                size += chunk.len();
                if size > max {
                    return Err(ApiError::PayloadTooLarge(format!(
                        "file exceeds {max} bytes (files.max_upload_bytes)"
                    )));
                }
                hasher.update(&chunk);
                out.write_all(&chunk).await.map_err(internal)?;
            }
            out.flush().await.map_err(internal)?;
            Ok(())
        }
        .await;
        if let Err(err) = result {
            let _ = tokio::fs::remove_file(&staging).await;
            return Err(err);
        }
        let sha256 = hex::encode(hasher.finalize());
        let target = storage_path(&root, user.workspace_id, &sha256);
        if let Some(parent) = target.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(internal)?;
        }
        // Same content, same name: a rename over an identical file is harmless.
        tokio::fs::rename(&staging, &target).await.map_err(internal)?;
        let size = i64::try_from(size).unwrap_or(i64::MAX);
        let mut tx = state.pool.begin().await?;
        sqlx::query(
            "INSERT INTO files (workspace_id, sha256, size_bytes, content_type, file_name, uploaded_by) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (workspace_id, sha256) DO NOTHING",
        )
        .bind(user.workspace_id)
        .bind(&sha256)
        .bind(size)
        .bind(&content_type)
        .bind(&name)
        .bind(user.user_id)
        .execute(&mut *tx)
        .await?;
        let kind = EventType::FileUploaded(FileUploadedEvent {
            file_type: content_type.clone(),
            file_size: size,
            upload_method: "multipart".into(),
            upload_duration_ms: i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX),
        });
        state
            .analytics
            .record(&mut tx, kind, &client.context(user.user_id, user.workspace_id))
            .await?;
        tx.commit().await?;
        stored.push(StoredFile {
            url: format!("/api/files/{}/{sha256}", user.workspace_id),
            sha256,
            size,
            content_type,
            name,
        });
    }
    if stored.is_empty() {
        return Err(ApiError::bad_request(
            "no_files",
            "the multipart body holds no file part",
        ));
    }
    Ok((StatusCode::CREATED, Json(Uploaded { files: stored })))
}

fn multipart_error(status: StatusCode, text: String) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge("upload exceeds files.max_upload_bytes".into())
    } else {
        ApiError::bad_request("invalid_multipart", text)
    }
}

fn internal(err: std::io::Error) -> ApiError {
    ApiError::Internal(anyhow::Error::new(err).context("file storage failed"))
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
    state
        .analytics
        .record(&mut conn, kind, &client.context(user.user_id, user.workspace_id))
        .await?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    let disposition = format!("attachment; filename=\"{}\"", name.replace('"', "'"));
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_LENGTH, size.to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_lower_case_sha256_hex_is_accepted() {
        assert!(is_sha256_hex(&"a".repeat(64)));
        assert!(!is_sha256_hex(&"A".repeat(64)));
        assert!(!is_sha256_hex("../../etc/passwd"));
        assert!(!is_sha256_hex(&format!("{}/..", "a".repeat(61))));
    }

    #[test]
    fn stored_names_lose_separators_and_control_characters() {
        assert_eq!(clean_name(Some("../../etc/passwd")), "....etcpasswd");
        assert_eq!(clean_name(Some("a\nb.txt")), "ab.txt");
        assert_eq!(clean_name(None), "file");
    }
}

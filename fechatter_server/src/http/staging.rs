//! Where an upload's parts wait until all of them arrived whole: files in `<files.dir>/staging`, each removed
//! when dropped unless it was moved into place. A refused upload, and one whose client went away while it was
//! received (the server then drops the handler wherever it was), leaves no staged file behind; only a crash can,
//! and start-up clears what a crash left ([`remove_stale`]). (A part already moved into place stays there if the
//! request ends before its row commits: it is content-addressed, and a later upload of the same bytes reuses it.)

use crate::error::ApiError;
use axum::extract::Multipart;
use axum::extract::multipart::{Field, MultipartError};
use axum::http::StatusCode;
use sha2::{Digest as _, Sha256};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};
use tempfile::TempPath;
use tokio::io::AsyncWriteExt as _;

/// Most file parts in one upload. Part of the API (README, OpenAPI description): each part is a stored file,
/// a row and an analytics event, so a request must not bring an unbounded number of them.
pub const MAX_FILES_PER_UPLOAD: usize = 10;

/// Age past which a staged file is taken for a crash's leftover. Instances may share `files.dir`, so start-up
/// must not remove the files of another instance's uploads under way; none of those is this old.
const STALE_AFTER: Duration = Duration::from_secs(3600);

/// A part received whole, not yet in place.
pub struct Staged {
    /// Where it waits; removed when dropped.
    pub path: TempPath,
    /// What was received.
    pub file: Received,
}

/// What is known of a received part.
pub struct Received {
    /// Hex SHA-256 of the content.
    pub sha256: String,
    /// Size in bytes (never 0).
    pub size: i64,
    /// Content type given at upload (100 characters at most).
    pub content_type: String,
    /// Cleaned file name.
    pub name: String,
    /// How long receiving it took, for its `file_uploaded` event.
    pub duration_ms: i32,
}

/// The staging directory under `root`.
fn staging_dir(root: &Path) -> std::path::PathBuf {
    root.join("staging")
}

/// Receives every part of `multipart` into `root/staging`; on a refusal, the parts staged so far are dropped,
/// and so removed.
pub async fn receive_all(multipart: &mut Multipart, root: &Path, max_bytes: usize) -> Result<Vec<Staged>, ApiError> {
    let dir = staging_dir(root);
    tokio::fs::create_dir_all(&dir).await.map_err(internal)?;
    let mut staged = Vec::new();
    while let Some(field) = multipart.next_field().await.map_err(multipart_refusal)? {
        // Refused before reading the part: each part costs a file, a row and an event.
        if staged.len() == MAX_FILES_PER_UPLOAD {
            return Err(ApiError::bad_request(
                "too_many_files",
                format!("an upload holds at most {MAX_FILES_PER_UPLOAD} files"),
            ));
        }
        staged.push(receive(field, &dir, max_bytes).await?);
    }
    Ok(staged)
}

/// Receives one part into a new file of `dir`, hashing it on the way. The file is removed on every way out
/// but success: an error, or the request being dropped while it waits for the body.
async fn receive(mut field: Field<'_>, dir: &Path, max_bytes: usize) -> Result<Staged, ApiError> {
    let started = Instant::now();
    let name = clean_name(field.file_name());
    let content_type = field
        .content_type()
        .unwrap_or("application/octet-stream")
        .chars()
        .take(100)
        .collect::<String>();
    let (file, path) = tempfile::Builder::new()
        .prefix("upload-")
        // Readable as files created by `File::create` are (tempfile's default is owner-only): backups and
        // instances under another user read the stored files, which keep this file's mode through the rename.
        .permissions(std::fs::Permissions::from_mode(0o644))
        .tempfile_in(dir)
        .map_err(internal)?
        .into_parts();
    let mut out = tokio::fs::File::from_std(file);
    let mut hasher = Sha256::new();
    let mut size = 0usize;
    while let Some(chunk) = field.chunk().await.map_err(multipart_refusal)? {
        size += chunk.len();
        if size > max_bytes {
            return Err(ApiError::PayloadTooLarge(format!(
                "file exceeds {max_bytes} bytes (files.max_upload_bytes)"
            )));
        }
        hasher.update(&chunk);
        out.write_all(&chunk).await.map_err(internal)?;
    }
    if size == 0 {
        return Err(ApiError::bad_request("empty_file", format!("file {name:?} is empty")));
    }
    out.flush().await.map_err(internal)?;
    Ok(Staged {
        path,
        file: Received {
            sha256: hex::encode(hasher.finalize()),
            size: i64::try_from(size).unwrap_or(i64::MAX),
            content_type,
            name,
            duration_ms: i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX),
        },
    })
}

/// Moves a staged file to `target`, its content address.
pub async fn place(path: TempPath, target: &Path) -> Result<(), ApiError> {
    if let Some(parent) = target.parent() {
        tokio::fs::create_dir_all(parent).await.map_err(internal)?;
    }
    // Same content, same name: a rename over an identical file is harmless.
    tokio::fs::rename(&path, target).await.map_err(internal)?;
    // Moved: nothing is left at the staged path for the guard to remove.
    let _moved = path.keep();
    Ok(())
}

/// Removes the staged files under `root` older than [`STALE_AFTER`]: what uploads cut short by a crash left.
/// Best effort (logged): a leftover file costs disk space, not correctness.
pub async fn remove_stale(root: &Path) {
    let dir = staging_dir(root);
    let Ok(mut entries) = tokio::fs::read_dir(&dir).await else {
        return;
    };
    let mut removed = 0usize;
    while let Ok(Some(entry)) = entries.next_entry().await {
        let old = entry
            .metadata()
            .await
            .and_then(|m| m.modified())
            .ok()
            .and_then(|modified| SystemTime::now().duration_since(modified).ok())
            .is_some_and(|age| age > STALE_AFTER);
        if old && tokio::fs::remove_file(entry.path()).await.is_ok() {
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::info!(removed, dir = %dir.display(), "removed staged uploads left by an earlier crash");
    }
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

fn multipart_refusal(err: MultipartError) -> ApiError {
    multipart_error(err.status(), err.body_text())
}

/// The refusal for a multipart body that could not be read.
fn multipart_error(status: StatusCode, text: String) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge("upload exceeds files.max_upload_bytes".into())
    } else {
        ApiError::bad_request("invalid_multipart", text)
    }
}

/// A storage failure: a 500, its cause logged.
pub fn internal(err: std::io::Error) -> ApiError {
    ApiError::Internal(anyhow::Error::new(err).context("file storage failed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_names_lose_separators_and_control_characters() {
        assert_eq!(clean_name(Some("../../etc/passwd")), "....etcpasswd");
        assert_eq!(clean_name(Some("a\nb.txt")), "ab.txt");
        assert_eq!(clean_name(None), "file");
    }

    #[tokio::test]
    async fn only_staged_files_older_than_an_hour_are_removed_at_start_up() {
        let root = tempfile::tempdir().expect("dir");
        let dir = staging_dir(root.path());
        std::fs::create_dir_all(&dir).expect("staging");
        let (old, fresh) = (dir.join("upload-old"), dir.join("upload-fresh"));
        std::fs::write(&old, b"x").expect("write");
        std::fs::write(&fresh, b"y").expect("write");
        let long_ago = SystemTime::now() - STALE_AFTER - Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(&old)
            .and_then(|f| f.set_modified(long_ago))
            .expect("age the file");

        remove_stale(root.path()).await;

        assert!(!old.exists(), "a crash's leftover is removed");
        assert!(fresh.exists(), "an upload under way (maybe another instance's) is kept");
    }
}

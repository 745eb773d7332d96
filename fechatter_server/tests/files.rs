//! File upload and download: content-addressed storage, size limit, at most `MAX_FILES_PER_UPLOAD` non-empty files
//! per upload stored all or nothing, workspace-only access, no path traversal.

mod common;

use common::TestApp;
use fechatter_server::http::MAX_FILES_PER_UPLOAD;
use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

async fn upload(app: &TestApp, user: &common::User, name: &str, bytes: Vec<u8>) -> (StatusCode, serde_json::Value) {
    let form = Form::new().part(
        "file",
        Part::bytes(bytes)
            .file_name(name.to_owned())
            .mime_str("text/plain")
            .expect("mime"),
    );
    app.send(app.request(reqwest::Method::POST, "/api/upload", user).multipart(form))
        .await
}

#[tokio::test]
async fn an_uploaded_file_is_stored_by_content_and_downloaded_by_workspace_members_only() {
    // No ANALYTICS stream exists in this test, so the relay cannot publish and the outbox rows stay to be read.
    let app = TestApp::start(&[]).await;
    let alice = app.direct_user("Alice", None).await;
    let bob = app.direct_user("Bob", Some(alice.workspace_id)).await;
    let mallory = app.direct_user("Mallory", None).await;
    let content = b"hello fechatter".to_vec();
    let (status, body) = upload(&app, &alice, "hello.txt", content.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let file = &body["files"][0];
    let sha = hex::encode(Sha256::digest(&content));
    assert_eq!(file["sha256"], sha.as_str());
    assert_eq!(file["size"], content.len());
    let url = file["url"].as_str().expect("url").to_owned();
    assert_eq!(url, format!("/api/files/{}/{sha}", alice.workspace_id));
    let on_disk = fechatter_server::http::storage_path(app.files_dir.path(), alice.workspace_id, &sha);
    assert_eq!(std::fs::read(on_disk).expect("stored"), content);

    // A member of the workspace downloads it.
    let response = app
        .request(reqwest::Method::GET, &url, &bob)
        .send()
        .await
        .expect("download");
    assert_eq!(response.status(), StatusCode::OK);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(header("content-type"), "text/plain");
    assert_eq!(header("content-disposition"), "attachment; filename=\"hello.txt\"");
    // The browser takes the uploader's type as given and runs nothing of the file's.
    assert_eq!(header("x-content-type-options"), "nosniff");
    assert!(header("content-security-policy").starts_with("sandbox"));
    assert_eq!(response.bytes().await.expect("bytes").to_vec(), content);
    // Someone from another workspace gets 404, as for a file that does not exist.
    let (status, body) = app.get(&url, &mallory).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"], "not_found");
    let (status, _) = app
        .get(&format!("/api/files/{}/{sha}", mallory.workspace_id), &mallory)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Without a token: 401.
    let response = app.http.get(app.url(&url)).send().await.expect("request");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    let uploads = app.outbox_events("fechatter.analytics.file.uploaded").await;
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploads[0].user_id(), alice.id.to_string());
    assert_eq!(app.outbox_events("fechatter.analytics.file.downloaded").await.len(), 1);
}

#[tokio::test]
async fn path_traversal_and_malformed_digests_find_nothing() {
    let app = TestApp::start(&[]).await;
    let alice = app.direct_user("Alice", None).await;
    std::fs::write(app.files_dir.path().join("secret.txt"), "secret").expect("write");
    for path in [
        format!("/api/files/{}/..%2F..%2Fsecret.txt", alice.workspace_id),
        format!("/api/files/{}/../../secret.txt", alice.workspace_id),
        format!("/api/files/{}/{}", alice.workspace_id, "A".repeat(64)),
        format!("/api/files/{}/%2e%2e%2f%2e%2e%2fsecret.txt", alice.workspace_id),
        "/api/files/..%2F/secret.txt".to_owned(),
    ] {
        let (status, body) = app.get(&path, &alice).await;
        assert!(
            status == StatusCode::NOT_FOUND || status == StatusCode::BAD_REQUEST,
            "{path}: {status} {body}"
        );
        assert!(!body.to_string().contains("secret\""), "{path}: {body}");
    }
}

#[tokio::test]
async fn an_oversize_upload_gets_413_and_leaves_nothing_behind() {
    let app = TestApp::start(&[("FECHATTER__FILES__MAX_UPLOAD_BYTES", "1024")]).await;
    let alice = app.direct_user("Alice", None).await;
    let (status, body) = upload(&app, &alice, "big.bin", vec![7u8; 4096]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"], "payload_too_large");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM files")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(stored, 0);
    let staging = app.files_dir.path().join("staging");
    let leftovers = std::fs::read_dir(&staging).map(|d| d.count()).unwrap_or(0);
    assert_eq!(leftovers, 0, "no partial file kept");
}

#[tokio::test]
async fn a_multipart_body_without_files_is_a_clear_400() {
    let app = TestApp::start(&[]).await;
    let alice = app.direct_user("Alice", None).await;
    let (status, body) = app
        .send(
            app.request(reqwest::Method::POST, "/api/upload", &alice)
                .multipart(Form::new()),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = app
        .send(
            app.request(reqwest::Method::POST, "/api/upload", &alice)
                .header("content-type", "text/plain")
                .body("x"),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_multipart");
}

/// An upload of `parts` (name, bytes) as `user`.
async fn upload_parts(app: &TestApp, user: &common::User, parts: Vec<(String, Vec<u8>)>) -> (StatusCode, Value) {
    let form = parts.into_iter().fold(Form::new(), |form, (name, bytes)| {
        form.part("file", Part::bytes(bytes).file_name(name))
    });
    app.send(app.request(reqwest::Method::POST, "/api/upload", user).multipart(form))
        .await
}

async fn file_rows(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM files")
        .fetch_one(&app.pool)
        .await
        .expect("count")
}

fn staged_files(app: &TestApp) -> usize {
    std::fs::read_dir(app.files_dir.path().join("staging"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test]
async fn an_upload_holds_at_most_ten_files_and_no_empty_one() {
    let app = TestApp::start(&[]).await;
    let alice = app.direct_user("Alice", None).await;
    let parts = |n: usize| {
        (0..n)
            .map(|i| (format!("{i}.txt"), format!("file {i}").into_bytes()))
            .collect()
    };

    let (status, body) = upload_parts(&app, &alice, parts(MAX_FILES_PER_UPLOAD)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["files"].as_array().map(Vec::len), Some(MAX_FILES_PER_UPLOAD));

    let (status, body) = upload_parts(&app, &alice, parts(MAX_FILES_PER_UPLOAD + 1)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "too_many_files");
    let message = body["message"].as_str().expect("message");
    assert!(
        message.contains(&MAX_FILES_PER_UPLOAD.to_string()),
        "names the limit: {message}"
    );

    let (status, body) = upload_parts(&app, &alice, vec![("empty.txt".into(), Vec::new())]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "empty_file");

    assert_eq!(
        file_rows(&app).await,
        MAX_FILES_PER_UPLOAD as i64,
        "only the accepted upload stored"
    );
    let events = app.outbox_events("fechatter.analytics.file.uploaded").await;
    assert_eq!(events.len(), MAX_FILES_PER_UPLOAD);
    assert_eq!(staged_files(&app), 0, "refused parts are not kept");
}

#[tokio::test]
async fn a_refused_part_refuses_the_whole_upload() {
    let app = TestApp::start(&[("FECHATTER__FILES__MAX_UPLOAD_BYTES", "1024")]).await;
    let alice = app.direct_user("Alice", None).await;
    let small = b"fits".to_vec();
    let parts = vec![
        ("small.txt".to_owned(), small.clone()),
        ("big.bin".to_owned(), vec![7u8; 4096]),
    ];

    let (status, body) = upload_parts(&app, &alice, parts).await;

    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(file_rows(&app).await, 0);
    assert_eq!(app.outbox_events("fechatter.analytics.file.uploaded").await.len(), 0);
    assert_eq!(staged_files(&app), 0);
    let sha = hex::encode(Sha256::digest(&small));
    let placed = fechatter_server::http::storage_path(app.files_dir.path(), alice.workspace_id, &sha);
    assert!(!placed.exists(), "the first part was not moved into place either");
}

#[tokio::test]
async fn an_upload_whose_client_goes_away_leaves_no_staged_file() {
    use tokio::io::AsyncWriteExt as _;
    let app = TestApp::start(&[]).await;
    let alice = app.signup("Alice", "Acme").await;
    let staging = app.files_dir.path().join("staging");
    let staged = || std::fs::read_dir(&staging).map(|d| d.count()).unwrap_or(0);
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .expect("connect");
    // A part announced at 1 MB of which the client sends a few bytes, then hangs up.
    let part_head = "--cut\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n\r\n";
    let head = format!(
        "POST /api/upload HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {}\r\n\
         Content-Type: multipart/form-data; boundary=cut\r\nContent-Length: 1000000\r\n\r\n{part_head}",
        alice.access_token
    );
    socket.write_all(head.as_bytes()).await.expect("head");
    socket.write_all(&[b'x'; 4096]).await.expect("some content");
    test_support::wait_until("the part is staged", std::time::Duration::from_secs(10), || async {
        (staged() == 1).then_some(())
    })
    .await
    .expect("staged");

    drop(socket);

    test_support::wait_until(
        "the staged file is removed",
        std::time::Duration::from_secs(10),
        || async { (staged() == 0).then_some(()) },
    )
    .await
    .expect("a dropped upload leaves nothing in staging/");
}

#[tokio::test]
async fn stored_files_are_readable_by_other_users_of_the_machine() {
    use std::os::unix::fs::PermissionsExt as _;
    let app = TestApp::start(&[]).await;
    let alice = app.signup("Alice", "Acme").await;
    let url = app.upload_file(&alice, b"for the backup").await;
    let sha256 = url.rsplit('/').next().expect("digest");
    let stored = fechatter_server::http::storage_path(app.files_dir.path(), alice.workspace_id, sha256);

    let mode = std::fs::metadata(&stored).expect("stored file").permissions().mode() & 0o777;

    // Backups and instances running as another user read the files; the umask may only take bits away.
    assert_eq!(mode & 0o444, 0o444, "mode {mode:o}");
}

/// A workspace stores at most `files.max_workspace_bytes` of files: an upload past it is refused whole (413
/// `quota_exceeded`, nothing stored), content stored already costs nothing, and other workspaces keep their own.
#[tokio::test]
async fn a_workspace_stores_no_more_than_its_quota() {
    let app = TestApp::start(&[("FECHATTER__FILES__MAX_WORKSPACE_BYTES", "50")]).await;
    let alice = app.direct_user("Alice", None).await;
    let carol = app.direct_user("Carol", None).await;
    let first = vec![b'a'; 30];
    let (status, body) = upload(&app, &alice, "a.txt", first.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // The same content again: stored already, so within the quota.
    let (status, body) = upload(&app, &alice, "again.txt", first).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let second = vec![b'b'; 30];
    let (status, body) = upload(&app, &alice, "b.txt", second.clone()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"], "quota_exceeded");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("files.max_workspace_bytes"), "{message}");
    let sha = hex::encode(Sha256::digest(&second));
    let (status, _) = app
        .get(&format!("/api/files/{}/{sha}", alice.workspace_id), &alice)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing of the refused upload is stored");
    let on_disk = fechatter_server::http::storage_path(app.files_dir.path(), alice.workspace_id, &sha);
    assert!(!on_disk.exists(), "nor on disk");

    // Another workspace has its own quota.
    let (status, body) = upload(&app, &carol, "b.txt", second).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // Filled to the byte: the next upload is refused before its body is read.
    let (status, body) = upload(&app, &alice, "c.txt", vec![b'c'; 20]).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = upload(&app, &alice, "d.txt", vec![b'd'; 1]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(
        body["message"].as_str().unwrap_or_default().contains("all of its 50"),
        "{body}"
    );
}

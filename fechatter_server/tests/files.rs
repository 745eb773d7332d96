//! File upload and download: content-addressed storage, size limit, workspace-only access, no path traversal.

mod common;

use common::TestApp;
use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};
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
    let on_disk = app
        .files_dir
        .path()
        .join(alice.workspace_id.to_string())
        .join(&sha[..2])
        .join(&sha);
    assert_eq!(std::fs::read(on_disk).expect("stored"), content);

    // A member of the workspace downloads it.
    let response = app
        .request(reqwest::Method::GET, &url, &bob)
        .send()
        .await
        .expect("download");
    assert_eq!(response.status(), StatusCode::OK);
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

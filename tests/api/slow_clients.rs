//! Clients that are slow or silent on purpose: a stalled upload, partial headers, idle
//! connections, a declared body that never comes. Raw TCP, since an HTTP client cannot
//! be made to misbehave this way.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::helpers::{ADMIN_TOKEN, TestApp};

/// Connects to the app's listener.
async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.address.trim_start_matches("http://")).await.unwrap()
}

/// Reads until the server closes the connection (or `within` passes): what it sent.
async fn read_to_close(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut received = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    read.ok().map(|()| String::from_utf8_lossy(&received).into_owned())
}

#[tokio::test]
async fn a_stalled_ndjson_upload_is_rolled_back_and_releases_the_user_store() {
    const STALL_SECS: u64 = 2;
    let app = TestApp::spawn_with(|config| config.import_stall_timeout_secs = STALL_SECS).await;
    let ws = app.create_workspace("stalled").await;
    let mut stream = connect(&app).await;
    let head = format!(
        "POST /admin/workspaces/{ws}/users/import HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Content-Type: application/x-ndjson\r\nContent-Length: 100000\r\n\r\n{{\"external_id\":\"stalled-1\"}}\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let silent_since = Instant::now();
    // The import holds its transaction open, waiting for the rest of the body.
    while sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state = 'idle in transaction'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap()
        == 0
    {
        assert!(silent_since.elapsed() < Duration::from_secs(STALL_SECS), "the import never began");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The import holds the user store; once the stall limit passes, a batch gets it.
    let batch = json!({ "users": [{ "external_id": "after" }] });
    let path = format!("/admin/workspaces/{ws}/users/batch");
    loop {
        let response = app
            .admin(reqwest::Method::POST, &path)
            .json(&batch)
            .timeout(Duration::from_secs(STALL_SECS + 5))
            .send()
            .await;
        if response.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(silent_since.elapsed() < Duration::from_secs(STALL_SECS + 5), "the user store is still locked");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let freed_after = silent_since.elapsed();
    assert!(freed_after < Duration::from_secs(STALL_SECS + 3), "{freed_after:?}");

    // The stalled client was told, in JSON, and nothing of its body was stored.
    let answer = read_to_close(&mut stream, Duration::from_secs(5)).await.expect("the connection was closed");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#"{"message":"the request body brought no data for 2 s; nothing was imported"}"#));
    let stored: Vec<String> = sqlx::query_scalar("SELECT external_id FROM users WHERE workspace_id = $1")
        .bind(ws)
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, ["after"]);
}

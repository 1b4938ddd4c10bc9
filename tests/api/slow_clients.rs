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
    assert!(answer.contains(r#"{"message":"the request body brought no data for 2 s; nothing was changed"}"#));
    let stored: Vec<String> = sqlx::query_scalar("SELECT external_id FROM users WHERE workspace_id = $1")
        .bind(ws)
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, ["after"]);
}

/// Connects and sends `bytes`; returns the stream and when the sending ended.
async fn connect_and_send(app: &TestApp, bytes: &[u8]) -> (TcpStream, Instant) {
    let mut stream = connect(app).await;
    stream.write_all(bytes).await.unwrap();
    (stream, Instant::now())
}

#[tokio::test]
async fn a_connection_sending_half_a_header_or_nothing_is_closed_after_the_header_read_timeout() {
    let app = TestApp::spawn_with(|config| {
        config.header_read_timeout_secs = 1;
        config.idle_timeout_secs = 30;
    })
    .await;
    for first_bytes in [&b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: "[..], b""] {
        let (mut stream, sent) = connect_and_send(&app, first_bytes).await;
        let answer = read_to_close(&mut stream, Duration::from_secs(10)).await.expect("the connection was closed");
        let took = sent.elapsed();
        assert!(answer.is_empty(), "{answer}");
        assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(3), "{took:?}");
    }
    // On a kept-alive connection, the next request's headers are timed from their first byte.
    let (mut stream, _) = connect_and_send(&app, b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n").await;
    let mut buffer = [0u8; 1024];
    let n = stream.read(&mut buffer).await.unwrap();
    assert!(buffer[..n].starts_with(b"HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: ").await.unwrap();
    let sent = Instant::now();
    assert!(read_to_close(&mut stream, Duration::from_secs(10)).await.is_some());
    let took = sent.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout_but_requests_in_flight_are_not() {
    let app = TestApp::spawn_with(|config| {
        config.header_read_timeout_secs = 30;
        config.idle_timeout_secs = 1;
    })
    .await;
    // Kept alive after a request, then silent.
    let (mut kept, _) = connect_and_send(&app, b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n").await;
    let mut buffer = [0u8; 1024];
    let n = kept.read(&mut buffer).await.unwrap();
    assert!(buffer[..n].starts_with(b"HTTP/1.1 200"));
    let answered = Instant::now();
    assert!(read_to_close(&mut kept, Duration::from_secs(10)).await.is_some());
    let took = answered.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(3), "{took:?}");

    // A request whose body trickles in for three idle timeouts is not cut off.
    let ws = app.create_workspace("slow body").await;
    let mut stream = connect(&app).await;
    let lines: Vec<String> = (0..6).map(|i| format!("{{\"external_id\":\"slow-{i}\"}}\n")).collect();
    let length: usize = lines.iter().map(String::len).sum();
    let head = format!(
        "POST /admin/workspaces/{ws}/users/import HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Content-Type: application/x-ndjson\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for line in &lines {
        tokio::time::sleep(Duration::from_millis(500)).await;
        stream.write_all(line.as_bytes()).await.unwrap();
    }
    let answer = read_to_close(&mut stream, Duration::from_secs(10)).await.expect("the connection was closed");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""created":6"#), "{answer}");
}

#[tokio::test]
async fn connections_over_the_cap_wait_until_one_closes() {
    let app = TestApp::spawn_with(|config| config.max_connections = 2).await;
    let (first, _) = connect_and_send(&app, b"").await;
    let (_second, _) = connect_and_send(&app, b"").await;
    // The listener's backlog takes the third connection; the service does not, yet.
    let (mut third, _) =
        connect_and_send(&app, b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").await;
    let mut buffer = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(500), third.read(&mut buffer)).await;
    assert!(early.is_err(), "a connection over the cap was served");
    drop(first);
    let answer = read_to_close(&mut third, Duration::from_secs(5)).await.expect("served once a slot was free");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn a_declared_body_over_the_limit_is_413_at_once_without_waiting_for_it() {
    let app = TestApp::spawn().await;
    for (path, auth) in [("/admin/workspaces", true), ("/partners/kubit/cohorts/users", false)] {
        let auth = if auth { format!("Authorization: Bearer {ADMIN_TOKEN}\r\n") } else { String::new() };
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: test\r\n{auth}Content-Type: application/json\r\nContent-Length: 999999999\r\n\r\n"
        );
        let (mut stream, sent) = connect_and_send(&app, head.as_bytes()).await;
        let mut buffer = vec![0u8; 4096];
        let n =
            tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buffer)).await.expect("answered").unwrap();
        let answer = String::from_utf8_lossy(&buffer[..n]).into_owned();
        assert!(sent.elapsed() < Duration::from_secs(1), "{path}: {:?}", sent.elapsed());
        assert!(answer.starts_with("HTTP/1.1 413"), "{path}: {answer}");
        assert!(answer.ends_with(r#"{"message":"request body is too large"}"#), "{path}: {answer}");
    }
}

/// README lists what hyper answers itself, before the service sees a request: these
/// are those answers, bodiless as hyper sends them.
#[tokio::test]
async fn malformed_requests_are_answered_by_hyper_as_readme_says() {
    let app = TestApp::spawn().await;
    let long_path = format!("GET /{} HTTP/1.1\r\nHost: test\r\n\r\n", "a".repeat(1024 * 1024));
    for (request, status) in [
        ("POST /admin/workspaces HTTP/1.1\r\nHost: test\r\nContent-Length: -1\r\n\r\n".to_owned(), "400"),
        ("GARBAGE\r\n\r\n".to_owned(), "400"),
        (long_path, "431"),
    ] {
        let (mut stream, _) = connect_and_send(&app, request.as_bytes()).await;
        let answer = read_to_close(&mut stream, Duration::from_secs(5)).await.expect("closed");
        assert!(answer.starts_with(&format!("HTTP/1.1 {status}")), "{answer}");
        assert!(answer.contains("content-length: 0\r\n"), "{answer}");
    }
}

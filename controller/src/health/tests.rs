use super::*;

#[test]
fn the_request_line_names_the_path() {
    let p = |s: &str| parse_request_line(s.as_bytes());
    assert_eq!(
        p("GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n").as_deref(),
        Some("/readyz")
    );
    assert_eq!(
        p("GET /healthz?probe=1 HTTP/1.0\r\n\r\n").as_deref(),
        Some("/healthz")
    );
    assert_eq!(p("POST /readyz HTTP/1.1\r\n\r\n"), None);
    assert_eq!(p("GET /readyz\r\n\r\n"), None, "HTTP/0.9 has no version");
    assert_eq!(p("GET /readyz SPDY/3\r\n\r\n"), None);
    assert_eq!(p("\u{16}\u{3}\u{1}"), None, "a TLS ClientHello");
}

/// One request on a fresh connection: the status line, or "" when the port hung up.
async fn get(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("send");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out.lines().next().unwrap_or("").to_owned()
}

#[tokio::test]
async fn probes_answer_from_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_sqlite(&dir.path().join("k.db"))
        .await
        .expect("store");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(serve(listener, store.clone()));

    let req = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(
        get(addr, req("/healthz").as_bytes()).await,
        "HTTP/1.1 200 OK"
    );
    assert_eq!(
        get(addr, req("/readyz").as_bytes()).await,
        "HTTP/1.1 200 OK"
    );
    assert_eq!(
        get(addr, req("/metrics").as_bytes()).await,
        "HTTP/1.1 404 Not Found"
    );
    assert_eq!(
        get(addr, b"\x16\x03\x01\x00\x05hello\r\n\r\n").await,
        "",
        "not HTTP: no answer"
    );
    let huge = format!("GET /healthz HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(4096));
    assert_eq!(
        get(addr, huge.as_bytes()).await,
        "",
        "an oversized head gets no answer"
    );

    store.close().await;
    assert_eq!(
        get(addr, req("/readyz").as_bytes()).await,
        "HTTP/1.1 503 Service Unavailable",
        "a store that cannot answer is not ready"
    );
    assert_eq!(
        get(addr, req("/healthz").as_bytes()).await,
        "HTTP/1.1 200 OK"
    );
    server.abort();
}

//! Outbound HTTP (`wasi:http/outgoing-handler`) and the `allowed_hosts` grant against the real
//! binary and real sockets: a granted host is reached; any other host is refused before a
//! connection is made, as an error value the guest sees, audited and counted; a component that
//! imports the outgoing handler needs the grant at upload, and the plan must allow it.
#![allow(clippy::unwrap_used)]

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use infercell_tests::*;

/// A tiny HTTP server on 127.0.0.1 that answers every request with `body`; counts connections.
fn upstream(body: &'static str) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let answer =
                format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    (port, hits)
}

#[test]
fn only_granted_hosts_are_reached() {
    let (allowed, allowed_hits) = upstream("hello from upstream");
    let (other, other_hits) = upstream("you should never see this");
    let server = Server::start();
    let key = server.tenant("acme", "standard");
    let manifest = format!("name = \"fetch\"\n[capabilities]\nallowed_hosts = [\"127.0.0.1:{allowed}\"]\n");
    let resp = server.upload(&key, &manifest, component("fetch"));
    assert_eq!(resp.status(), 201, "{}", resp.text().unwrap());

    let got = server.invoke(&key, &format!("acme/fetch?to=127.0.0.1:{allowed}/x"), "").text().unwrap();
    assert_eq!(got, "status 200: hello from upstream");
    assert_eq!(allowed_hits.load(Ordering::SeqCst), 1);

    for target in [format!("127.0.0.1:{other}/x"), format!("localhost:{allowed}/x"), "example.invalid/".to_string()] {
        let got = server.invoke(&key, &format!("acme/fetch?to={target}"), "").text().unwrap();
        assert_eq!(got, "error: ErrorCode::HttpRequestDenied", "{target}");
    }
    assert_eq!(other_hits.load(Ordering::SeqCst), 0, "a denied host is never connected to");

    let audit: Value = server.get("/v1/audit", Some(&key)).json().unwrap();
    let denied: Vec<&Value> =
        audit["entries"].as_array().unwrap().iter().filter(|e| e["action"] == "deny:allowed_hosts").collect();
    assert_eq!(denied.len(), 3);
    assert_eq!(denied[0]["target"], format!("127.0.0.1:{other}"));
    assert_eq!(server.metric("infercell_denials_total{tenant=\"acme\",capability=\"allowed_hosts\"}"), 3.0);
    let logs = server.get("/v1/functions/fetch/logs", Some(&key)).text().unwrap();
    assert!(
        logs.contains("denied: allowed_hosts `example.invalid:443`")
            || logs.contains("denied: allowed_hosts `example.invalid:80`"),
        "{logs}"
    );
}

#[test]
fn the_grant_is_needed_at_upload_and_capped_by_the_plan() {
    let server = Server::start();
    let standard = server.tenant("acme", "standard");
    let free = server.tenant("cheap", "free");
    let msg = expect_error(server.upload(&standard, "name = \"fetch\"\n", component("fetch")), 400);
    assert!(msg.contains("wasi:http/outgoing-handler") && msg.contains("allowed_hosts"), "{msg}");
    let granted = "name = \"fetch\"\n[capabilities]\nallowed_hosts = [\"api.example.com\"]\n";
    let msg = expect_error(server.upload(&free, granted, component("fetch")), 400);
    assert!(msg.contains("allowed_hosts") && msg.contains("`free` plan"), "{msg}");
    for bad in ["https://api.example.com", "*.example.com", "api.example.com/v1"] {
        let manifest = format!("name = \"fetch\"\n[capabilities]\nallowed_hosts = [\"{bad}\"]\n");
        let msg = expect_error(server.upload(&standard, &manifest, component("fetch")), 400);
        assert!(msg.contains(bad), "{bad}: {msg}");
    }
    for key in [&standard, &free] {
        let listed: Value = server.get("/v1/functions", Some(key)).json().unwrap();
        assert_eq!(listed["functions"], json!([]));
    }
}

//! Outbound HTTP (`wasi:http/outgoing-handler`) and the `allowed_hosts` grant against the real
//! binary and real sockets: a granted host is reached; any other host is refused before a
//! connection is made, as an error value the guest sees, audited and counted; a granted host
//! that resolves to a private address (loopback here, in every literal form) is refused unless
//! the operator allows its range; requests and bytes per call are capped and metered; a
//! component that imports the outgoing handler needs the grant at upload, and the plan must
//! allow it. Every address here is on loopback.
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

/// The operator's allowance that lets these tests reach their loopback upstreams.
const LOOPBACK_ALLOWED: &str = "[outbound]\nallow_ranges = [\"127.0.0.0/8\"]\n";

#[test]
fn only_granted_hosts_are_reached() {
    let (allowed, allowed_hits) = upstream("hello from upstream");
    let (other, other_hits) = upstream("you should never see this");
    let server = Server::start_with_config(Some(LOOPBACK_ALLOWED));
    let key = server.tenant("acme", "standard");
    let manifest = format!("name = \"fetch\"\n[capabilities]\nallowed_hosts = [\"127.0.0.1:{allowed}\"]\n");
    let resp = server.upload(&key, &manifest, component("fetch"));
    assert_eq!(resp.status(), 201, "{}", resp.text().unwrap());

    let resp = server.invoke(&key, &format!("acme/fetch?to=127.0.0.1:{allowed}/x"), "");
    let usage = resp.headers()["infercell-usage"].to_str().unwrap().to_string();
    assert_eq!(resp.text().unwrap(), "status 200: hello from upstream");
    assert_eq!(allowed_hits.load(Ordering::SeqCst), 1);
    assert!(usage.contains("http_requests=1,") && usage.contains("http_bytes=19"), "metered: {usage}");

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

/// A listener on loopback that records whether anything connected.
fn recorder(addr: &str) -> Option<(u16, std::net::TcpListener)> {
    let listener = TcpListener::bind(addr).ok()?;
    listener.set_nonblocking(true).unwrap();
    Some((listener.local_addr().unwrap().port(), listener))
}

#[test]
fn a_granted_host_on_a_private_address_is_refused_unless_the_operator_allows_it() {
    let (port, v4) = recorder("127.0.0.1:0").unwrap();
    // The same port on ::1 when this machine has IPv6 loopback.
    let v6 = recorder(&format!("[::1]:{port}"));
    let server = Server::start();
    let key = server.tenant("acme", "standard");
    // Every way of writing an address on this machine (the OS reads `2130706433`, `0x7f.1` and
    // `127.1` as 127.0.0.1; 0.0.0.0 reaches the local host too), each granted by the tenant.
    let forms = [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("2130706433:{port}"),
        format!("0x7f.1:{port}"),
        format!("127.1:{port}"),
        format!("0.0.0.0:{port}"),
        format!("[::1]:{port}"),
        format!("[::ffff:127.0.0.1]:{port}"),
        format!("[::ffff:7f00:1]:{port}"),
    ];
    let grants: Vec<String> = forms.iter().map(|f| format!("\"{f}\"")).collect();
    let manifest = format!("name = \"fetch\"\n[capabilities]\nallowed_hosts = [{}]\n", grants.join(", "));
    let resp = server.upload(&key, &manifest, component("fetch"));
    assert_eq!(resp.status(), 201, "{}", resp.text().unwrap());
    for form in &forms {
        let got = server.invoke(&key, &format!("acme/fetch?to={form}/"), "").text().unwrap();
        assert_eq!(got, "error: ErrorCode::DestinationIpProhibited", "{form}");
    }
    assert!(v4.accept().is_err(), "nothing reached 127.0.0.1");
    if let Some((_, v6)) = &v6 {
        assert!(v6.accept().is_err(), "nothing reached ::1");
    }
    let audit: Value = server.get("/v1/audit", Some(&key)).json().unwrap();
    let denied: Vec<&Value> =
        audit["entries"].as_array().unwrap().iter().filter(|e| e["action"] == "deny:network").collect();
    assert_eq!(denied.len(), forms.len(), "each refusal is audited: {denied:?}");
    let logs = server.get("/v1/functions/fetch/logs", Some(&key)).text().unwrap();
    assert!(logs.contains(&format!("`2130706433:{port}`: resolves to 127.0.0.1, a loopback")), "{logs}");
    assert!(logs.contains("unspecified"), "{logs}");
    drop(server);

    // The operator allows loopback: the same grants now reach the listener.
    let (port, hits) = upstream("inside");
    let mut server = Server::start_with_config(Some(LOOPBACK_ALLOWED));
    let key = server.tenant("acme", "standard");
    let manifest = format!(
        "name = \"fetch\"\n[capabilities]\nallowed_hosts = [\"localhost:{port}\", \"2130706433:{port}\", \"[::1]:{port}\"]\n"
    );
    assert_eq!(server.upload(&key, &manifest, component("fetch")).status(), 201);
    for form in [format!("localhost:{port}"), format!("2130706433:{port}")] {
        let got = server.invoke(&key, &format!("acme/fetch?to={form}/"), "").text().unwrap();
        assert_eq!(got, "status 200: inside", "{form}");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    // ::1 is outside the allowed 127.0.0.0/8.
    let got = server.invoke(&key, &format!("acme/fetch?to=[::1]:{port}/"), "").text().unwrap();
    assert_eq!(got, "error: ErrorCode::DestinationIpProhibited");
    server.stop();
}

#[test]
fn requests_and_bytes_per_call_are_capped_by_the_plan() {
    const BIG: &str = concat!(
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    );
    let (small, _) = upstream("ok");
    let (big, _) = upstream(BIG);
    let config = format!(
        "{LOOPBACK_ALLOWED}[plans.standard]\noutbound_requests_per_call = 3\noutbound_bytes_per_call = \"100\"\n"
    );
    let server = Server::start_with_config(Some(&config));
    let key = server.tenant("acme", "standard");
    let manifest =
        format!("name = \"fetch\"\n[capabilities]\nallowed_hosts = [\"127.0.0.1:{small}\", \"127.0.0.1:{big}\"]\n");
    assert_eq!(server.upload(&key, &manifest, component("fetch")).status(), 201);

    let resp = server.invoke(&key, &format!("acme/fetch?to=127.0.0.1:{small}/&n=5"), "");
    let usage = resp.headers()["infercell-usage"].to_str().unwrap().to_string();
    let lines: Vec<String> = resp.text().unwrap().lines().map(String::from).collect();
    assert_eq!(lines[..3], ["status 200: ok", "status 200: ok", "status 200: ok"]);
    assert_eq!(lines[3..], ["error: ErrorCode::HttpRequestDenied", "error: ErrorCode::HttpRequestDenied"]);
    assert!(usage.contains("http_requests=3,") && usage.contains("http_bytes=6"), "{usage}");
    // The budget is per call: the next call may make three again.
    let got = server.invoke(&key, &format!("acme/fetch?to=127.0.0.1:{small}/"), "").text().unwrap();
    assert_eq!(got, "status 200: ok");

    // A 128-byte body over a 100-byte budget: the read fails, the guest sees it.
    let got = server.invoke(&key, &format!("acme/fetch?to=127.0.0.1:{big}/"), "").text().unwrap();
    assert!(got.starts_with("error: reading the body"), "{got}");
    let audit: Value = server.get("/v1/audit", Some(&key)).json().unwrap();
    assert!(audit["entries"].as_array().unwrap().iter().any(|e| e["action"] == "deny:outbound_requests"));

    let usage: Value = server.get("/v1/usage", Some(&key)).json().unwrap();
    let requests: u64 = usage["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["meters"]["http_requests"].as_str().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(requests, 5, "3 + 1 + 1 requests sent, the refused ones not counted");
}

/// An upstream that reads the request, then sends `answer` and holds the connection open
/// without another byte.
fn stalled(answer: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                let _ = stream.write_all(answer.as_bytes());
                std::thread::sleep(std::time::Duration::from_secs(20));
            });
        }
    });
    port
}

/// An upstream that never answers, or stops halfway through its body, is cut by the
/// operator's first-byte and between-bytes timeouts: the guest sees an error value, and the
/// call goes on to answer well inside its own deadline.
#[test]
fn a_stalled_upstream_is_cut_by_the_outbound_timeouts() {
    let silent = stalled("");
    let halfway = stalled("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhalf");
    let config = format!("{LOOPBACK_ALLOWED}first_byte_timeout = \"300ms\"\nbetween_bytes_timeout = \"300ms\"\n");
    let server = Server::start_with_config(Some(&config));
    let key = server.tenant("acme", "standard");
    let manifest = format!(
        "name = \"fetch\"\n[limits]\ntimeout = \"10s\"\n[capabilities]\nallowed_hosts = [\"127.0.0.1:{silent}\", \"127.0.0.1:{halfway}\"]\n"
    );
    assert_eq!(server.upload(&key, &manifest, component("fetch")).status(), 201);
    for (port, what) in [(silent, "no answer"), (halfway, "half a body")] {
        let started = std::time::Instant::now();
        let resp = server.invoke(&key, &format!("acme/fetch?to=127.0.0.1:{port}/"), "");
        assert_eq!(resp.status(), 200, "{what}");
        let got = resp.text().unwrap();
        assert!(got.starts_with("error"), "{what}: {got}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{what}: cut after {:?}", started.elapsed());
    }
}

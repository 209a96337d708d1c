//! Misbehaving guests (tests/guests/hostile) are contained: each failure maps to its status
//! code with a clear message, the next call works, and other tenants are not affected.
#![allow(clippy::unwrap_used)]

use infercell_tests::*;

fn setup() -> (Server, String) {
    let server = Server::start();
    let key = server.tenant("acme", "free");
    server.deploy(&key, "hostile");
    (server, key)
}

fn assert_still_works(server: &Server, key: &str) {
    let resp = server.invoke(key, "acme/hostile/ok", "");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().unwrap(), "ok");
}

#[test]
fn a_trap_is_a_500_with_the_panic_message() {
    let (server, key) = setup();
    let msg = expect_error(server.invoke(&key, "acme/hostile/trap", ""), 500);
    assert!(msg.contains("function trapped"), "{msg}");
    assert!(msg.contains("hostile guest panicked on purpose"), "{msg}");
    assert_still_works(&server, &key);
    // The backtrace is in the function's log, not in the response.
    let logs: Value = server.get("/v1/functions/hostile/logs", Some(&key)).json().unwrap();
    let lines = logs["lines"].as_array().unwrap();
    assert!(lines.iter().any(|l| l["message"].as_str().unwrap().contains("call failed")), "{logs}");
}

#[test]
fn an_infinite_loop_times_out_with_504_and_others_keep_running() {
    let (server, key) = setup();
    let other = server.tenant("other", "free");
    server.deploy(&other, "echo");
    // Long enough that another tenant is answered while it runs, on any machine.
    let spin = "name = \"spin\"\n[limits]\nmemory = \"16MiB\"\ntimeout = \"5s\"\n";
    assert_eq!(server.upload(&key, spin, component("hostile")).status(), 201);

    let url = format!("{}/fn/acme/spin/loop", server.url);
    let k = key.clone();
    let looping = std::thread::spawn(move || {
        let resp = reqwest::blocking::Client::new().post(url).bearer_auth(k).send().unwrap();
        (resp.status().as_u16(), resp.text().unwrap())
    });
    wait_until("the loop is running", || server.metric("infercell_active_instances") >= 1.0);
    // While the loop burns its seconds, another tenant's call is answered.
    assert_eq!(server.invoke(&other, "other/echo", "alive").text().unwrap(), "alive");
    assert!(!looping.is_finished(), "echo was answered only after the loop ended");
    let (status, body) = looping.join().unwrap();
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("timed out after 5s"), "{body}");
    assert_still_works(&server, &key);
}

#[test]
fn a_memory_bomb_hits_the_limit_with_a_clear_500() {
    let (server, key) = setup();
    let resp = server.invoke(&key, "acme/hostile/alloc", "");
    let usage = resp.headers()["infercell-usage"].to_str().unwrap().to_string();
    let msg = expect_error(resp, 500);
    assert!(msg.contains("memory limit of 16 MiB"), "{msg}");
    let peak: u64 = usage.split(", ").find_map(|kv| kv.strip_prefix("memory_peak_bytes=")).unwrap().parse().unwrap();
    assert!(peak <= 16 << 20 && peak > 8 << 20, "peak {peak} in {usage}");
    assert_still_works(&server, &key);
}

#[test]
fn guest_errors_map_to_400_404_500() {
    let (server, key) = setup();
    assert_eq!(expect_error(server.invoke(&key, "acme/hostile/bad-request", ""), 400), "bad on purpose");
    assert_eq!(expect_error(server.invoke(&key, "acme/hostile/not-found", ""), 404), "nothing here");
    assert_eq!(expect_error(server.invoke(&key, "acme/hostile/internal", ""), 500), "broken on purpose");
    // A status the guest picks itself is passed through, body and all.
    assert_eq!(server.invoke(&key, "acme/hostile/status/418", "").status(), 418);
    assert_eq!(server.invoke(&key, "acme/hostile/status/204", "").status(), 204);
    let msg = expect_error(server.invoke(&key, "acme/hostile/status/99", ""), 500);
    assert!(msg.contains("invalid HTTP status 99"), "{msg}");
}

#[test]
fn no_ambient_authority_and_no_authorization_header() {
    let (server, key) = setup();
    let env: Value = server.invoke(&key, "acme/hostile/env", "").json().unwrap();
    assert_eq!(env["vars"], json!([]));
    assert_eq!(env["args"], json!([]));
    let fs = server.invoke(&key, "acme/hostile/fs", "").text().unwrap();
    assert!(fs.starts_with("denied"), "{fs}");
    let headers: Value = server
        .http
        .post(format!("{}/fn/acme/hostile/headers", server.url))
        .bearer_auth(&key)
        .header("x-custom", "kept")
        .send()
        .unwrap()
        .json()
        .unwrap();
    let names: Vec<&str> = headers.as_array().unwrap().iter().map(|h| h[0].as_str().unwrap()).collect();
    assert!(names.contains(&"x-custom"));
    assert!(!names.contains(&"authorization"), "{names:?}");
    assert!(!headers.to_string().contains(&key));
}

#[test]
fn output_floods_are_capped_not_fatal() {
    let (server, key) = setup();
    for path in ["stdout", "stderr", "log"] {
        let resp = server.invoke(&key, &format!("acme/hostile/{path}"), "");
        assert_eq!(resp.status(), 200, "{path}");
    }
    let logs: Value = server.get("/v1/functions/hostile/logs?limit=1000", Some(&key)).json().unwrap();
    let lines = logs["lines"].as_array().unwrap();
    assert!(lines.len() <= 1000);
    let total: usize = lines.iter().map(|l| l["message"].as_str().unwrap().len()).sum();
    assert!(total < 1 << 20, "the log keeps its cap: {total} bytes");
    assert!(lines.iter().any(|l| l["message"].as_str().unwrap().contains("dropped")));
    assert_still_works(&server, &key);
}

#[test]
fn a_fuel_limit_stops_a_busy_guest() {
    let server = Server::start();
    let key = server.tenant("acme", "free");
    let manifest = "name = \"hostile\"\n[limits]\ntimeout = \"5s\"\nfuel = 5000000\n";
    assert_eq!(server.upload(&key, manifest, component("hostile")).status(), 201);
    // Fuel, not the clock, stops it: the message names the fuel limit.
    let msg = expect_error(server.invoke(&key, "acme/hostile/loop", ""), 500);
    assert!(msg.contains("fuel limit of 5000000"), "{msg}");
    assert_eq!(server.invoke(&key, "acme/hostile/ok", "").status(), 200);
}

//! The HTTP contract of the foundation, against the real binary: auth, tenants, uploads and
//! every way they fail, versions, isolation between tenants, metrics and the CLI.
#![allow(clippy::unwrap_used)]

use infercell_tests::*;

const ECHO_MANIFEST: &str = "name = \"echo\"\n[limits]\nmemory = \"16MiB\"\ntimeout = \"2s\"\n";

#[test]
fn health_and_readiness_need_no_key() {
    let server = Server::start();
    let health = server.get("/healthz", None);
    assert_eq!(health.status(), 200);
    assert!(health.headers().contains_key("infercell-request-id"));
    let ready: Value = server.get("/readyz", None).json().unwrap();
    assert_eq!(ready["ready"], true);
}

#[test]
fn echo_round_trip_with_request_id_and_usage() {
    let server = Server::start();
    let key = server.tenant("acme", "free");
    let deployed = server.deploy(&key, "echo");
    assert_eq!(deployed["name"], "echo");
    assert_eq!(deployed["version"], 1);
    assert!(deployed["digest"].as_str().unwrap().starts_with("sha256:"));
    assert!(deployed["imports"].as_array().unwrap().iter().any(|i| i == "infercell:function/types@0.1.0"));

    let resp = server
        .http
        .post(format!("{}/fn/acme/echo/some/path?x=1", server.url))
        .bearer_auth(&key)
        .header("content-type", "text/plain")
        .body("hello, sandbox")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/plain");
    assert!(!resp.headers()["infercell-request-id"].is_empty());
    let usage = resp.headers()["infercell-usage"].to_str().unwrap().to_string();
    for meter in
        ["invocations=1", "wall_ms=", "fuel=", "memory_peak_bytes=", "bytes_in=14", "bytes_out=14", "version=1"]
    {
        assert!(usage.contains(meter), "{meter} missing from {usage}");
    }
    assert_eq!(resp.text().unwrap(), "hello, sandbox");

    // GET with no body and the bare function path with a trailing slash.
    let resp = server.get("/fn/acme/echo/", Some(&key));
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().unwrap(), "");
}

#[test]
fn hello_reads_its_config_and_query() {
    let server = Server::start();
    let key = server.tenant("acme", "free");
    server.deploy(&key, "hello");
    let v: Value = server.get("/fn/acme/hello?name=Ada", Some(&key)).json().unwrap();
    assert_eq!(v["message"], "Hello, Ada!");
    let manifest = "name = \"hello\"\n[capabilities]\nconfig = { greeting = \"Bonjour\" }\n";
    assert_eq!(server.upload(&key, manifest, component("hello")).status(), 201);
    let v: Value = server.invoke(&key, "acme/hello", r#"{"name":"Zoé"}"#).json().unwrap();
    assert_eq!(v["message"], "Bonjour, Zoé!");
    let msg = expect_error(server.invoke(&key, "acme/hello", "not json"), 400);
    assert!(msg.contains("not JSON"), "{msg}");
}

#[test]
fn missing_bad_and_malformed_keys_get_401_with_json_errors() {
    let server = Server::start();
    let key = server.tenant("acme", "free");
    server.deploy(&key, "echo");
    for (path, auth) in [
        ("/fn/acme/echo", None),
        ("/fn/acme/echo", Some("Bearer ick_000000000000000000000000_0000")),
        ("/fn/acme/echo", Some("Basic dXNlcjpwYXNz")),
        ("/v1/functions", None),
        ("/v1/functions", Some("Bearer nonsense")),
        ("/v1/tenants", None),
    ] {
        let mut req = server.http.get(format!("{}{path}", server.url));
        if let Some(auth) = auth {
            req = req.header("authorization", auth);
        }
        let msg = expect_error(req.send().unwrap(), 401);
        assert!(msg.contains("key") || msg.contains("Authorization"), "{msg}");
    }
    // A key that differs from a real one in its last character is refused too.
    let mut forged = key.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == '0' { '1' } else { '0' });
    expect_error(server.get("/v1/functions", Some(&forged)), 401);
}

#[test]
fn tenants_are_created_by_the_admin_only() {
    let server = Server::start();
    let key = server.tenant("acme", "standard");
    let create = |auth: &str, body: Value| {
        server.http.post(format!("{}/v1/tenants", server.url)).bearer_auth(auth).json(&body).send().unwrap()
    };
    let msg = expect_error(create(&key, json!({"name": "evil", "plan": "free"})), 403);
    assert!(msg.contains("admin"), "{msg}");
    expect_error(create(ADMIN_KEY, json!({"name": "acme", "plan": "free"})), 409);
    let msg = expect_error(create(ADMIN_KEY, json!({"name": "Bad Name", "plan": "free"})), 400);
    assert!(msg.contains("must match"), "{msg}");
    let msg = expect_error(create(ADMIN_KEY, json!({"name": "ok", "plan": "platinum"})), 400);
    assert!(msg.contains("unknown plan"), "{msg}");
    expect_error(create(ADMIN_KEY, json!({"nom": "x"})), 400);
    let listed: Value = server.get("/v1/tenants", Some(ADMIN_KEY)).json().unwrap();
    let names: Vec<&str> = listed["tenants"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["acme"]);
    expect_error(server.get("/v1/tenants", Some(&key)), 403);
    // The admin key has no tenant of its own to deploy into.
    expect_error(server.upload(ADMIN_KEY, ECHO_MANIFEST, component("echo")), 403);
}

#[test]
fn bad_uploads_get_400_and_change_nothing() {
    let server = Server::start();
    let key = server.tenant("acme", "free");
    server.deploy(&key, "echo");
    let before: Value = server.get("/v1/functions/echo", Some(&key)).json().unwrap();

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (ECHO_MANIFEST, b"these are not wasm bytes at all".to_vec(), "not a WebAssembly binary"),
        (
            ECHO_MANIFEST,
            (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect(),
            "not a WebAssembly binary",
        ),
        (ECHO_MANIFEST, b"\0asm\x01\0\0\0".to_vec(), "core WebAssembly module"),
        (ECHO_MANIFEST, b"\0asm\x0d\0\x01\0".to_vec(), "exports neither"),
        (ECHO_MANIFEST, b"\0asm\x0d\0\x01\0\xff\xff\xff".to_vec(), "invalid component"),
        ("name = \"echo\"\nunknown_key = 1\n", component("echo"), "unknown_key"),
        ("name = \"Echo!\"\n", component("echo"), "must match"),
        ("not toml at all [", component("echo"), "invalid manifest"),
        ("name = \"echo\"\n[limits]\nmemory = \"1GiB\"\n", component("echo"), "limits.memory"),
        ("name = \"echo\"\n[limits]\ntimeout = \"10m\"\n", component("echo"), "limits.timeout"),
        ("name = \"echo\"\n[limits]\nmemory = \"lots\"\n", component("echo"), "size"),
        ("name = \"echo\"\n[capabilities]\ngpu = true\n", component("echo"), "gpu"),
    ];
    for (manifest, bytes, expected) in cases {
        let msg = expect_error(server.upload(&key, manifest, bytes), 400);
        assert!(msg.contains(expected), "expected `{expected}` in `{msg}`");
    }

    // Missing parts, an empty component, a stray part, and a body that is not multipart.
    let part = |text: &str| reqwest::blocking::multipart::Part::text(text.to_string());
    let send = |form: reqwest::blocking::multipart::Form| {
        server.http.post(format!("{}/v1/functions", server.url)).bearer_auth(&key).multipart(form).send().unwrap()
    };
    let msg = expect_error(send(reqwest::blocking::multipart::Form::new().part("manifest", part(ECHO_MANIFEST))), 400);
    assert!(msg.contains("missing part `component`"), "{msg}");
    let only_component = reqwest::blocking::multipart::Form::new()
        .part("component", reqwest::blocking::multipart::Part::bytes(component("echo")));
    let msg = expect_error(send(only_component), 400);
    assert!(msg.contains("missing part `manifest`"), "{msg}");
    let empty = reqwest::blocking::multipart::Form::new()
        .part("manifest", part(ECHO_MANIFEST))
        .part("component", reqwest::blocking::multipart::Part::bytes(Vec::new()));
    assert!(expect_error(send(empty), 400).contains("empty"));
    let stray =
        reqwest::blocking::multipart::Form::new().part("manifest", part(ECHO_MANIFEST)).part("extra", part("x"));
    assert!(expect_error(send(stray), 400).contains("unexpected part"));
    let msg = expect_error(server.post("/v1/functions", Some(&key), "plain text"), 400);
    assert!(msg.contains("multipart"), "{msg}");

    let after: Value = server.get("/v1/functions/echo", Some(&key)).json().unwrap();
    assert_eq!(before, after, "a rejected upload changed what is stored");
    let listed: Value = server.get("/v1/functions", Some(&key)).json().unwrap();
    assert_eq!(listed["functions"].as_array().unwrap().len(), 1);
    assert_eq!(server.invoke(&key, "acme/echo", "still here").text().unwrap(), "still here");
}

/// A minimal component that imports one (empty) instance named `name` and exports nothing,
/// encoded by hand in the component binary format.
fn component_importing(name: &str) -> Vec<u8> {
    let mut bytes = b"\0asm\x0d\0\x01\0".to_vec();
    // Type section: one instance type with no declarations.
    bytes.extend([0x07, 0x03, 0x01, 0x42, 0x00]);
    // Import section: one import, plain name, of instance type 0.
    let mut import = vec![0x01, 0x00, name.len() as u8];
    import.extend(name.as_bytes());
    import.extend([0x05, 0x00]);
    bytes.push(0x0a);
    bytes.push(import.len() as u8);
    bytes.extend(import);
    bytes
}

#[test]
fn imports_the_platform_does_not_provide_are_named() {
    let server = Server::start();
    let key = server.tenant("acme", "free");
    let msg = expect_error(server.upload(&key, ECHO_MANIFEST, component_importing("wasi:sockets/tcp@0.2.0")), 400);
    assert!(msg.contains("never granted") && msg.contains("wasi:sockets/tcp@0.2.0"), "{msg}");
    let msg = expect_error(server.upload(&key, ECHO_MANIFEST, component_importing("acme:secret/backdoor")), 400);
    assert!(msg.contains("acme:secret/backdoor"), "{msg}");
    let listed: Value = server.get("/v1/functions", Some(&key)).json().unwrap();
    assert!(listed["functions"].as_array().unwrap().is_empty());
}

#[test]
fn oversized_bodies_get_413() {
    let server =
        Server::start_with_config(Some("[server]\nmax_upload_bytes = \"64KiB\"\nmax_request_bytes = \"1KiB\"\n"));
    let key = server.tenant("acme", "free");
    // hello.wasm is about 100 KB: over the 64 KiB upload limit. The server answers 413 as soon
    // as the limit is passed and closes the connection; a client still sending may see the
    // close (a reset) before it reads the answer. Either way nothing is stored.
    let form = reqwest::blocking::multipart::Form::new()
        .part("manifest", reqwest::blocking::multipart::Part::text("name = \"hello\"\n"))
        .part("component", reqwest::blocking::multipart::Part::bytes(component("hello")).file_name("c.wasm"));
    if let Ok(resp) = server.http.post(format!("{}/v1/functions", server.url)).bearer_auth(&key).multipart(form).send()
    {
        let msg = expect_error(resp, 413);
        assert!(msg.contains("too large"), "{msg}");
    }
    let listed: Value = server.get("/v1/functions", Some(&key)).json().unwrap();
    assert!(listed["functions"].as_array().unwrap().is_empty());
    server.deploy(&key, "echo");
    let msg = expect_error(server.invoke(&key, "acme/echo", &"x".repeat(2048)), 413);
    assert!(msg.contains("limit"), "{msg}");
    assert_eq!(server.invoke(&key, "acme/echo", "small").text().unwrap(), "small");
}

#[test]
fn versions_are_immutable_and_addressable() {
    let server = Server::start();
    let key = server.tenant("acme", "free");
    assert_eq!(server.deploy(&key, "echo")["version"], 1);
    assert_eq!(server.upload(&key, "name = \"echo\"\n", component("hello")).status(), 201);
    // The bare name runs the newest (hello's code under the echo name); @1 still runs echo.
    let newest = server.invoke(&key, "acme/echo?name=v2", "");
    assert!(newest.headers()["infercell-usage"].to_str().unwrap().contains("version=2"));
    assert_eq!(newest.json::<Value>().unwrap()["message"], "Hello, v2!");
    assert_eq!(server.invoke(&key, "acme/echo@1", "one").text().unwrap(), "one");
    assert!(expect_error(server.invoke(&key, "acme/echo@3", ""), 404).contains("no version 3"));
    assert!(expect_error(server.invoke(&key, "acme/echo@0", ""), 400).contains("version"));
    assert!(expect_error(server.invoke(&key, "acme/echo@1x", ""), 400).contains("alias"));
    // A name after `@` is an alias; one that was never set does not exist.
    assert!(expect_error(server.invoke(&key, "acme/echo@zero", ""), 404).contains("echo@zero"));
    let v: Value = server.get("/v1/functions/echo", Some(&key)).json().unwrap();
    assert_eq!(v["latest_version"], 2);
    assert_eq!(v["versions"].as_array().unwrap().len(), 2);

    let deleted = server.delete("/v1/functions/echo", &key);
    assert_eq!(deleted.status(), 200);
    expect_error(server.invoke(&key, "acme/echo", ""), 404);
    expect_error(server.invoke(&key, "acme/echo@1", ""), 404);
    expect_error(server.get("/v1/functions/echo", Some(&key)), 404);
    expect_error(server.delete("/v1/functions/echo", &key), 404);
    // Version numbers are never reused.
    assert_eq!(server.deploy(&key, "echo")["version"], 3);
}

#[test]
fn tenants_cannot_see_or_touch_each_other() {
    let server = Server::start();
    let a = server.tenant("alpha", "free");
    let b = server.tenant("beta", "free");
    server.deploy(&a, "echo");

    expect_error(server.invoke(&b, "alpha/echo", "x"), 404);
    expect_error(server.invoke(&b, "alpha/echo@1", "x"), 404);
    expect_error(server.invoke(&b, "beta/echo", "x"), 404);
    let listed: Value = server.get("/v1/functions", Some(&b)).json().unwrap();
    assert!(listed["functions"].as_array().unwrap().is_empty());
    expect_error(server.get("/v1/functions/echo", Some(&b)), 404);
    expect_error(server.get("/v1/functions/echo/logs", Some(&b)), 404);
    expect_error(server.delete("/v1/functions/echo", &b), 404);
    // The admin key does not invoke tenants' functions either.
    expect_error(server.invoke(ADMIN_KEY, "alpha/echo", "x"), 403);

    // Same name in two tenants: two independent functions.
    server.deploy(&b, "hello");
    assert_eq!(server.upload(&b, "name = \"echo\"\n", component("hello")).status(), 201);
    assert_eq!(server.invoke(&a, "alpha/echo", "mine").text().unwrap(), "mine");
    let theirs: Value = server.invoke(&b, "beta/echo", "").json().unwrap();
    assert_eq!(theirs["message"], "Hello, world!");
}

#[test]
fn metrics_show_invocation_series_without_keys() {
    let mut server = Server::start();
    let key = server.tenant("acme", "free");
    server.deploy(&key, "echo");
    server.deploy(&key, "hostile");
    for _ in 0..3 {
        assert_eq!(server.invoke(&key, "acme/echo", "x").status(), 200);
    }
    assert_eq!(server.invoke(&key, "acme/hostile/trap", "").status(), 500);
    let resp = server.get("/metrics", Some(ADMIN_KEY));
    assert_eq!(resp.status(), 200);
    let text = resp.text().unwrap();
    assert!(text.contains(r#"infercell_invocations_total{tenant="acme",function="echo",outcome="ok"} 3"#), "{text}");
    assert!(text.contains(r#"infercell_invocations_total{tenant="acme",function="hostile",outcome="trap"} 1"#));
    assert!(text.contains("infercell_invocation_duration_seconds_bucket"));
    assert!(text.contains("infercell_active_instances"));
    assert!(!text.contains(&key) && !text.contains(ADMIN_KEY), "metrics must never carry keys");

    // Metrics name every tenant and function: by default they need a key, and a tenant's key,
    // even its owner's, is not one.
    expect_error(server.get("/metrics", None), 401);
    let msg = expect_error(server.get("/metrics", Some(&key)), 403);
    assert!(msg.contains("`metrics` role"), "{msg}");

    // The admin makes a platform key for a scraper: it reads /metrics and nothing else.
    let resp = server.post("/v1/keys", Some(ADMIN_KEY), r#"{"role": "metrics", "name": "prometheus"}"#);
    assert_eq!(resp.status(), 201);
    let made: Value = resp.json().unwrap();
    assert_eq!(made["role"], "metrics");
    let scraper = made["api_key"].as_str().unwrap().to_string();
    assert_eq!(server.get("/metrics", Some(&scraper)).status(), 200);
    expect_error(server.get("/v1/functions", Some(&scraper)), 403);
    expect_error(server.get("/v1/tenants", Some(&scraper)), 403);
    expect_error(server.post("/v1/tenants", Some(&scraper), r#"{"name": "x", "plan": "free"}"#), 403);
    expect_error(server.get("/v1/keys", Some(&scraper)), 403);
    // Roles stay on their side: an owner cannot make a metrics key, the admin no tenant key.
    let msg = expect_error(server.post("/v1/keys", Some(&key), r#"{"role": "metrics"}"#), 400);
    assert!(msg.contains("metrics keys are the admin's"), "{msg}");
    let msg = expect_error(server.post("/v1/keys", Some(ADMIN_KEY), r#"{"role": "owner"}"#), 400);
    assert!(msg.contains("not a platform key role"), "{msg}");
    let listed: Value = server.get("/v1/keys", Some(ADMIN_KEY)).json().unwrap();
    assert_eq!(listed["keys"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["keys"][0]["name"], "prometheus");
    let tenant_keys: Value = server.get("/v1/keys", Some(&key)).json().unwrap();
    assert!(tenant_keys["keys"].as_array().unwrap().iter().all(|k| k["role"] != "metrics"));
    // It survives a restart, and once revoked it is refused.
    server.stop();
    server.restart();
    assert_eq!(server.get("/metrics", Some(&scraper)).status(), 200);
    let id = made["id"].as_str().unwrap();
    assert_eq!(server.delete(&format!("/v1/keys/{id}"), ADMIN_KEY).status(), 204);
    expect_error(server.get("/metrics", Some(&scraper)), 401);
    expect_error(server.delete(&format!("/v1/keys/{id}"), &key), 404);

    // The operator may open them.
    let open = Server::start_with_config(Some("[server]\nmetrics_require_key = false\n"));
    assert_eq!(open.get("/metrics", None).status(), 200);
}

#[test]
fn unknown_endpoints_are_json_404s() {
    let server = Server::start();
    let msg = expect_error(server.get("/v1/nope", None), 404);
    assert!(msg.contains("no such endpoint"));
    let resp = server.http.put(format!("{}/v1/tenants", server.url)).bearer_auth(ADMIN_KEY).send().unwrap();
    expect_error(resp, 405);
}

#[test]
fn cli_deploys_lists_invokes_and_fails_clearly() {
    let server = Server::start();
    let admin = server.cli(ADMIN_KEY, &["tenant", "create", "acme", "--plan", "free", "--json"]);
    assert!(admin.status.success(), "{}", String::from_utf8_lossy(&admin.stderr));
    let created: Value = serde_json::from_slice(&admin.stdout).unwrap();
    let key = created["api_key"].as_str().unwrap().to_string();

    let out = server.cli(&key, &["deploy", "samples/echo"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("deployed echo@1"));

    let out = server.cli(&key, &["functions", "list", "--json"]);
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["functions"][0]["name"], "echo");
    let out = server.cli(&key, &["functions", "list"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("echo"));

    let out = server.cli(&key, &["invoke", "acme/echo", "--data", "from the cli"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from the cli\n");
    let file = server.data_dir.parent().unwrap().join("body.txt");
    std::fs::write(&file, "from a file").unwrap();
    let out = server.cli(&key, &["invoke", "acme/echo", "--data", &format!("@{}", file.display())]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from a file\n");

    let out = server.cli(&key, &["invoke", "acme/missing"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no function named `missing`") && err.contains("404"), "{err}");

    let out = server.cli("ick_bad_key", &["functions", "list"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid API key"));

    let out = server.cli(&key, &["deploy", "no/such/dir"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("function.toml"));

    let out = server.cli(&key, &["inspect", "samples/target/wasm32-wasip2/release/echo.wasm", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["problem"], Value::Null);
    assert!(report["exports"].as_array().unwrap().iter().any(|e| e == "infercell:function/incoming-handler@0.1.0"));
}

#[test]
fn a_client_that_never_finishes_its_headers_is_cut() {
    use std::io::{Read as _, Write as _};
    let server = Server::start_with_config(Some("[server]\nheader_read_timeout = \"1s\"\n"));
    let addr = server.url.trim_start_matches("http://").to_string();
    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: infercell\r\n").unwrap();
    // Far past the server's timeout: the read ends because the server closed the connection.
    slow.set_read_timeout(Some(std::time::Duration::from_secs(60))).unwrap();
    let mut buf = [0u8; 1024];
    match slow.read(&mut buf) {
        Ok(n) => assert!(n == 0 || String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"), "{:?}", &buf[..n]),
        Err(e) => assert!(
            !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
            "the server kept the connection: {e}"
        ),
    }
    // Whole requests are served as before.
    assert_eq!(server.get("/healthz", None).status(), 200);
}

#[test]
fn connections_past_the_cap_get_a_clear_refusal() {
    use std::io::{Read as _, Write as _};
    let server = Server::start_with_config(Some("[server]\nmax_connections = 2\n"));
    let addr = server.url.trim_start_matches("http://").to_string();
    // Two connections, kept open, each having been served once.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = std::net::TcpStream::connect(&addr).unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: infercell\r\n\r\n").unwrap();
        let mut buf = [0u8; 512];
        let n = c.read(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        held.push(c);
    }
    // A third is answered 503 with Retry-After and closed.
    let mut third = std::net::TcpStream::connect(&addr).unwrap();
    third.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    let mut answer = String::new();
    third.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("retry-after: 1"), "{answer}");
    assert!(answer.contains("too many connections"), "{answer}");
    // Once one closes, new connections are served again.
    drop(held.pop());
    wait_until("a connection slot is free", || {
        let mut c = std::net::TcpStream::connect(&addr).unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: infercell\r\nConnection: close\r\n\r\n").unwrap();
        let mut answer = String::new();
        let _ = c.read_to_string(&mut answer);
        answer.starts_with("HTTP/1.1 200")
    });
    drop(held);
    let metrics = server.get("/metrics", Some(ADMIN_KEY)).text().unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("infercell_connections_refused_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
}

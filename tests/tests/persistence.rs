//! Everything acknowledged survives a clean restart and a `kill -9`; SIGTERM drains calls.
#![allow(clippy::unwrap_used)]

use infercell_tests::*;

#[test]
fn functions_and_keys_survive_restart_and_kill_9() {
    let mut server = Server::start();
    let key = server.tenant("acme", "free");
    server.deploy(&key, "echo");
    server.deploy(&key, "echo");
    server.deploy(&key, "hello");

    assert!(server.stop().success(), "SIGTERM exits cleanly");
    server.restart();
    assert_eq!(server.invoke(&key, "acme/echo", "after restart").text().unwrap(), "after restart");
    assert_eq!(server.invoke(&key, "acme/echo@1", "v1").text().unwrap(), "v1");
    let v: Value = server.get("/v1/functions/echo", Some(&key)).json().unwrap();
    assert_eq!(v["latest_version"], 2);

    // Deploy, and kill -9 right after the 201: the acknowledged upload must be there.
    assert_eq!(server.deploy(&key, "hello")["version"], 2);
    server.kill9();
    server.restart();
    let v: Value = server.get("/v1/functions/hello", Some(&key)).json().unwrap();
    assert_eq!(v["latest_version"], 2);
    let greeting: Value = server.invoke(&key, "acme/hello?name=again", "").json().unwrap();
    assert_eq!(greeting["message"], "Hello, again!");
    // The next version number continues after the restart.
    assert_eq!(server.deploy(&key, "echo")["version"], 3);
}

#[test]
fn compiled_artifacts_are_cached_and_verified() {
    let mut server = Server::start();
    let key = server.tenant("acme", "free");
    server.deploy(&key, "echo");
    let artifacts = server.data_dir.join("artifacts");
    let files: Vec<_> = std::fs::read_dir(&artifacts).unwrap().map(|e| e.unwrap().path()).collect();
    let cwasm = files.iter().find(|p| p.extension().is_some_and(|e| e == "cwasm")).expect("an artifact was cached");
    assert!(files.iter().any(|p| p.extension().is_some_and(|e| e == "sha256")));
    let before = std::fs::metadata(cwasm).unwrap().modified().unwrap();

    server.stop();
    server.restart();
    assert_eq!(server.invoke(&key, "acme/echo", "cached").text().unwrap(), "cached");
    assert_eq!(std::fs::metadata(cwasm).unwrap().modified().unwrap(), before, "restart reused the artifact");

    // A corrupted artifact is detected and replaced by a recompile, not loaded.
    server.stop();
    let mut bytes = std::fs::read(cwasm).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(cwasm, &bytes).unwrap();
    server.restart();
    assert_eq!(server.invoke(&key, "acme/echo", "recompiled").text().unwrap(), "recompiled");
    assert_ne!(std::fs::read(cwasm).unwrap(), bytes, "the corrupt artifact was rewritten");
}

#[test]
fn sigterm_drains_in_flight_calls() {
    let mut server = Server::start();
    let key = server.tenant("acme", "free");
    server.deploy(&key, "hostile");
    let url = format!("{}/fn/acme/hostile/loop", server.url);
    let k = key.clone();
    let call = std::thread::spawn(move || {
        let resp = reqwest::blocking::Client::new().post(url).bearer_auth(k).send().unwrap();
        resp.status().as_u16()
    });
    wait_until("the call is running", || server.metric("infercell_active_instances") >= 1.0);
    server.terminate();
    // The in-flight call still gets its answer (the loop's 504 after its timeout).
    assert_eq!(call.join().unwrap(), 504);
    assert!(server.wait().success());
}

#[test]
fn a_generated_admin_key_is_written_0600_and_reused() {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let run = || {
        let mut child = std::process::Command::new(binary())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .env_remove("INFERCELL_ADMIN_KEY")
            .env("INFERCELL_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::BufRead as _;
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().unwrap().unwrap();
        let second = lines.next().unwrap().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        (first, second)
    };
    let (first, second) = run();
    assert!(first.starts_with("admin key created: ") && first.contains("admin.key"), "{first}");
    assert!(second.starts_with("listening on http://127.0.0.1:"), "{second}");
    let path = data.join("admin.key");
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let key = std::fs::read_to_string(&path).unwrap();
    let (again, _) = run();
    assert!(again.starts_with("admin key: "), "{again}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), key, "the key is not regenerated");
    // The database holds no trace of the admin key.
    let db = std::fs::read(data.join("infercell.db")).unwrap();
    assert!(!String::from_utf8_lossy(&db).contains(key.trim()));
}

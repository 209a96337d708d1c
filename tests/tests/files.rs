//! Tenant files and the `files` grant against the real binary: a function reads exactly the
//! files it is granted, read-only, under `/files/`; nothing else of the host exists for it,
//! `..` leads nowhere, another tenant's files are invisible, and a new put is seen by the next
//! call.
#![allow(clippy::unwrap_used)]

use infercell_tests::*;

const READER: &str =
    "name = \"reader\"\n[limits]\nmemory = \"16MiB\"\ntimeout = \"5s\"\n[capabilities]\nfiles = [\"labels.txt\"]\n";

fn put(server: &Server, key: &str, name: &str, body: &str) -> Response {
    server.http.put(format!("{}/v1/files/{name}", server.url)).bearer_auth(key).body(body.to_string()).send().unwrap()
}

fn read(server: &Server, key: &str, path: &str) -> String {
    let resp = server.invoke(key, path, "");
    assert_eq!(resp.status(), 200, "{path}");
    resp.text().unwrap()
}

#[test]
fn a_function_reads_exactly_its_granted_files_read_only() {
    let server = Server::start();
    let key = server.tenant("acme", "free");
    let other = server.tenant("other", "free");
    let resp = put(&server, &key, "labels.txt", "cat\ndog\n");
    assert_eq!(resp.status(), 201);
    let info: Value = resp.json().unwrap();
    assert_eq!(info["size"], 8);
    assert!(info["digest"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(put(&server, &key, "secret.txt", "not granted").status(), 201);
    assert_eq!(put(&server, &other, "labels.txt", "other tenant's labels").status(), 201);
    assert_eq!(server.upload(&key, READER, component("hostile")).status(), 201);

    assert_eq!(read(&server, &key, "acme/reader/file?name=labels.txt"), "cat\ndog\n");
    assert!(
        read(&server, &key, "acme/reader/file?name=secret.txt").starts_with("denied"),
        "an ungranted file does not exist"
    );

    // Every way out of /files fails, and the granted file is still intact.
    let escapes: Vec<(String, String)> =
        serde_json::from_str(&read(&server, &key, "acme/reader/files-escape")).unwrap();
    assert!(escapes.len() >= 10);
    for (attempt, outcome) in &escapes {
        assert!(outcome.starts_with("denied"), "{attempt} must fail: {outcome}");
    }
    assert_eq!(read(&server, &key, "acme/reader/file?name=labels.txt"), "cat\ndog\n");

    // A new put is seen by the next call; a delete makes it disappear.
    assert_eq!(put(&server, &key, "labels.txt", "cat\ndog\nbird\n").status(), 201);
    assert_eq!(read(&server, &key, "acme/reader/file?name=labels.txt"), "cat\ndog\nbird\n");
    let listed: Value = server.get("/v1/files", Some(&key)).json().unwrap();
    let names: Vec<&str> = listed["files"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["labels.txt", "secret.txt"]);
    assert_eq!(server.delete("/v1/files/labels.txt", &key).status(), 204);
    assert!(read(&server, &key, "acme/reader/file?name=labels.txt").starts_with("denied"));
    expect_error(server.delete("/v1/files/labels.txt", &key), 404);

    // Another tenant's function with the same grant sees its own file only.
    assert_eq!(server.upload(&other, READER, component("hostile")).status(), 201);
    assert_eq!(read(&server, &other, "other/reader/file?name=labels.txt"), "other tenant's labels");
}

#[test]
fn without_the_grant_there_is_no_files_directory() {
    let server = Server::start();
    let key = server.tenant("acme", "free");
    assert_eq!(put(&server, &key, "labels.txt", "cat").status(), 201);
    let manifest = "name = \"plain\"\n[limits]\nmemory = \"16MiB\"\n";
    assert_eq!(server.upload(&key, manifest, component("hostile")).status(), 201);
    assert!(read(&server, &key, "acme/plain/file?name=labels.txt").starts_with("denied"));
}

#[test]
fn bad_files_and_grants_are_refused_naming_the_problem() {
    let server = Server::start();
    let key = server.tenant("acme", "free");
    for (name, needle) in [("Labels.TXT", "must match"), ("a%20b", "`a b` must match"), (".hidden", "must match")] {
        let msg = expect_error(put(&server, &key, name, "x"), 400);
        assert!(msg.contains(needle), "{name}: {msg}");
    }
    let (_, invoker) = server.key(&key, "invoker");
    expect_error(put(&server, &invoker, "labels.txt", "x"), 403);
    for (manifest, needle) in [
        ("name = \"f\"\n[capabilities]\nfiles = [\"../etc/passwd\"]\n", "file name `../etc/passwd`"),
        ("name = \"f\"\n[capabilities]\nallowed_hosts = [\"example.com\"]\n", "capabilities.allowed_hosts"),
    ] {
        let msg = expect_error(server.upload(&key, manifest, component("hostile")), 400);
        assert!(msg.contains(needle), "`{needle}` not in `{msg}`");
    }
    let listed: Value = server.get("/v1/files", Some(&key)).json().unwrap();
    assert_eq!(listed["files"], json!([]));
}

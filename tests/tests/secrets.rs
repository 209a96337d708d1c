//! Tenant secrets and the `secrets` grant against the real binary: a granted function reads a
//! secret like a config value; no API ever returns it; it is sealed in the database and
//! redacted from the function's log; an ungranted function or another tenant never sees it.
#![allow(clippy::unwrap_used)]

use infercell_tests::*;

const VALUE: &str = "tok-1234567890-very-secret";
const READER: &str = "name = \"reader\"\n[limits]\nmemory = \"16MiB\"\n[capabilities]\nsecrets = [\"api-token\"]\n";

fn put(server: &Server, key: &str, name: &str, value: &str) -> Response {
    server
        .http
        .put(format!("{}/v1/secrets/{name}", server.url))
        .bearer_auth(key)
        .body(value.to_string())
        .send()
        .unwrap()
}

#[test]
fn a_granted_function_reads_a_secret_that_no_api_returns() {
    let mut server = Server::start();
    let key = server.tenant("acme", "free");
    let other = server.tenant("other", "free");
    let resp = put(&server, &key, "api-token", VALUE);
    assert_eq!(resp.status(), 201);
    let body = resp.text().unwrap();
    assert!(!body.contains(VALUE), "the answer to a put never holds the value: {body}");
    assert_eq!(server.upload(&key, READER, component("hostile")).status(), 201);
    let plain = "name = \"plain\"\n[limits]\nmemory = \"16MiB\"\n";
    assert_eq!(server.upload(&key, plain, component("hostile")).status(), 201);

    assert_eq!(server.invoke(&key, "acme/reader/config?key=api-token", "").text().unwrap(), VALUE);
    assert_eq!(server.invoke(&key, "acme/plain/config?key=api-token", "").text().unwrap(), "none");
    assert_eq!(server.upload(&other, READER, component("hostile")).status(), 201);
    assert_eq!(server.invoke(&other, "other/reader/config?key=api-token", "").text().unwrap(), "none");

    // Redacted from the log, whichever way the function wrote it.
    assert_eq!(server.invoke(&key, "acme/reader/config-log?key=api-token", "").text().unwrap(), "logged");
    let logs = server.get("/v1/functions/reader/logs", Some(&key)).text().unwrap();
    assert!(!logs.contains(VALUE), "{logs}");
    assert_eq!(logs.matches("[redacted]").count(), 3, "{logs}");

    // Listed by name only; a new value is seen by the next call; deleted, it is gone.
    let listed = server.get("/v1/secrets", Some(&key)).text().unwrap();
    assert!(listed.contains("api-token") && !listed.contains(VALUE), "{listed}");
    assert_eq!(put(&server, &key, "api-token", "tok-rotated-0000").status(), 201);
    assert_eq!(server.invoke(&key, "acme/reader/config?key=api-token", "").text().unwrap(), "tok-rotated-0000");
    assert_eq!(server.delete("/v1/secrets/api-token", &key).status(), 204);
    assert_eq!(server.invoke(&key, "acme/reader/config?key=api-token", "").text().unwrap(), "none");
    expect_error(server.delete("/v1/secrets/api-token", &key), 404);

    // Never in the clear anywhere in the data directory, and it survives a restart sealed.
    assert_eq!(put(&server, &key, "api-token", VALUE).status(), 201);
    server.stop();
    server.restart();
    assert_eq!(server.invoke(&key, "acme/reader/config?key=api-token", "").text().unwrap(), VALUE);
    server.stop();
    assert_eq!(server.data_dir_holds(VALUE.as_bytes()), None, "the secret is in the clear in the data directory");
    let key_file = server.data_dir.join("secrets.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
    }
}

#[test]
fn the_cli_puts_lists_and_deletes_secrets_without_showing_them() {
    let server = Server::start();
    let key = server.tenant("acme", "free");
    let out = server.cli(&key, &["secrets", "put", "api-token", "--value", VALUE]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!String::from_utf8_lossy(&out.stdout).contains(VALUE));
    let listed = String::from_utf8(server.cli(&key, &["secrets", "list"]).stdout).unwrap();
    assert!(listed.contains("api-token") && !listed.contains(VALUE), "{listed}");
    assert!(server.cli(&key, &["secrets", "delete", "api-token"]).status.success());
    let again = server.cli(&key, &["secrets", "delete", "api-token"]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("no secret named"));
    let neither = server.cli(&key, &["secrets", "put", "x"]);
    assert!(String::from_utf8_lossy(&neither.stderr).contains("exactly one of --value or --file"));
}

#[test]
fn secrets_are_the_owners_alone_and_bad_ones_are_refused() {
    let server = Server::start();
    let key = server.tenant("acme", "free");
    let (_, deployer) = server.key(&key, "deployer");
    expect_error(put(&server, &deployer, "api-token", VALUE), 403);
    expect_error(server.get("/v1/secrets", Some(&deployer)), 403);
    let msg = expect_error(put(&server, &key, "Bad Name", VALUE), 400);
    assert!(msg.contains("must match"), "{msg}");
    let resp = server
        .http
        .put(format!("{}/v1/secrets/bin", server.url))
        .bearer_auth(&key)
        .body(vec![0xff, 0xfe])
        .send()
        .unwrap();
    assert!(expect_error(resp, 400).contains("UTF-8"));
    let big = "x".repeat(65 * 1024);
    expect_error(put(&server, &key, "big", &big), 413);
    // A deployer cannot grant a function the owner's secrets (it could return them).
    let granted = "name = \"f\"\n[capabilities]\nsecrets = [\"token\"]\n";
    let msg = expect_error(server.upload(&deployer, granted, component("hostile")), 403);
    assert!(msg.contains("only an owner key"), "{msg}");
    let clash = "name = \"f\"\n[capabilities]\nsecrets = [\"token\"]\nconfig = { token = \"1\" }\n";
    let msg = expect_error(server.upload(&key, clash, component("hostile")), 400);
    assert!(msg.contains("both a config value and a secret"), "{msg}");
    let listed: Value = server.get("/v1/secrets", Some(&key)).json().unwrap();
    assert_eq!(listed["secrets"], json!([]));
}

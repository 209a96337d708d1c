//! Keys, roles and the audit log against the real binary: every row of the role table in
//! docs/api.md is tried with an allowed role, every denied role and a foreign tenant's key;
//! revoked and expired keys get 401 at once; no raw key is ever written to the data directory;
//! management actions and denials land in the append-only audit log.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use infercell_tests::*;

const ROLES: [&str; 5] = ["owner", "deployer", "invoker", "billing", "admin"];

/// One row of the role table: a request and the roles that may make it.
struct Row {
    method: &'static str,
    path: &'static str,
    body: &'static str,
    allowed: &'static [&'static str],
    /// What another tenant's key gets: 404 for the tenant's named resources; for a listing, a
    /// 2xx that must not show acme's things.
    foreign: Foreign,
}

#[derive(PartialEq)]
enum Foreign {
    NotFound,
    OwnListing(&'static str),
    Forbidden,
    NotApplicable,
}

const ROWS: &[Row] = &[
    Row { method: "POST", path: "/v1/tenants", body: "{}", allowed: &["admin"], foreign: Foreign::Forbidden },
    Row { method: "GET", path: "/v1/tenants", body: "", allowed: &["admin"], foreign: Foreign::Forbidden },
    // The admin's keys are platform keys (role `metrics`).
    Row { method: "POST", path: "/v1/keys", body: "{}", allowed: &["owner", "admin"], foreign: Foreign::NotApplicable },
    Row {
        method: "GET",
        path: "/v1/keys",
        body: "",
        allowed: &["owner", "admin"],
        foreign: Foreign::OwnListing("deployer key"),
    },
    Row { method: "DELETE", path: "/v1/keys/0000", body: "", allowed: &["owner", "admin"], foreign: Foreign::NotFound },
    Row {
        method: "POST",
        path: "/v1/functions",
        body: "",
        allowed: &["owner", "deployer"],
        foreign: Foreign::NotApplicable,
    },
    Row {
        method: "GET",
        path: "/v1/functions",
        body: "",
        allowed: &["owner", "deployer"],
        foreign: Foreign::OwnListing("echo"),
    },
    Row {
        method: "GET",
        path: "/v1/functions/echo",
        body: "",
        allowed: &["owner", "deployer"],
        foreign: Foreign::NotFound,
    },
    Row {
        method: "GET",
        path: "/v1/functions/echo/logs",
        body: "",
        allowed: &["owner", "deployer"],
        foreign: Foreign::NotFound,
    },
    Row {
        method: "DELETE",
        path: "/v1/functions/ghost",
        body: "",
        allowed: &["owner", "deployer"],
        foreign: Foreign::NotFound,
    },
    Row {
        method: "POST",
        path: "/v1/models",
        body: "",
        allowed: &["owner", "deployer"],
        foreign: Foreign::NotApplicable,
    },
    Row {
        method: "GET",
        path: "/v1/models",
        body: "",
        allowed: &["owner", "deployer"],
        foreign: Foreign::OwnListing("digits"),
    },
    Row {
        method: "GET",
        path: "/v1/models/digits",
        body: "",
        allowed: &["owner", "deployer"],
        foreign: Foreign::NotFound,
    },
    Row {
        method: "DELETE",
        path: "/v1/models/ghost",
        body: "",
        allowed: &["owner", "deployer"],
        foreign: Foreign::NotFound,
    },
    Row {
        method: "POST",
        path: "/fn/acme/echo",
        body: "hi",
        allowed: &["owner", "deployer", "invoker"],
        foreign: Foreign::NotFound,
    },
    Row {
        method: "GET",
        path: "/v2/models/digits",
        body: "",
        allowed: &["owner", "deployer", "invoker"],
        foreign: Foreign::NotFound,
    },
    Row {
        method: "POST",
        path: "/v2/models/digits/infer",
        body: "{}",
        allowed: &["owner", "deployer", "invoker"],
        foreign: Foreign::NotFound,
    },
    Row {
        method: "GET",
        path: "/v1/usage",
        body: "",
        allowed: &["owner", "billing", "admin"],
        foreign: Foreign::OwnListing("echo"),
    },
    Row {
        method: "GET",
        path: "/v1/billing",
        body: "",
        allowed: &["owner", "billing", "admin"],
        foreign: Foreign::OwnListing("echo"),
    },
    Row {
        method: "GET",
        path: "/v1/audit",
        body: "",
        allowed: &["owner", "admin"],
        foreign: Foreign::OwnListing("acme"),
    },
];

fn send(server: &Server, method: &str, path: &str, key: &str, body: &str) -> Response {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    server.http.request(method, format!("{}{path}", server.url)).bearer_auth(key).body(body.to_string()).send().unwrap()
}

#[test]
fn every_endpoint_admits_its_roles_and_refuses_the_rest() {
    let server = Server::start();
    let owner = server.tenant("acme", "standard");
    let other = server.tenant("other", "standard");
    server.deploy(&owner, "echo");
    server.push_digits(&owner);
    assert_eq!(server.invoke(&owner, "acme/echo", "billed").status(), 200);
    let mut keys: HashMap<&str, String> = HashMap::new();
    keys.insert("owner", owner.clone());
    keys.insert("admin", ADMIN_KEY.to_string());
    for role in ["deployer", "invoker", "billing"] {
        keys.insert(role, server.key(&owner, role).1);
    }

    for row in ROWS {
        for role in ROLES {
            let resp = send(&server, row.method, row.path, &keys[role], row.body);
            let status = resp.status().as_u16();
            if row.allowed.contains(&role) {
                assert!(
                    ![401, 403].contains(&status),
                    "{} {} as {role}: {status} {}",
                    row.method,
                    row.path,
                    resp.text().unwrap()
                );
            } else {
                assert_eq!(
                    status,
                    403,
                    "{} {} as {role} must be refused: {}",
                    row.method,
                    row.path,
                    resp.text().unwrap()
                );
            }
        }
        let resp = send(&server, row.method, row.path, &other, row.body);
        let status = resp.status().as_u16();
        match row.foreign {
            Foreign::NotFound => assert_eq!(status, 404, "{} {} with another tenant's key", row.method, row.path),
            Foreign::Forbidden => assert_eq!(status, 403, "{} {} with another tenant's key", row.method, row.path),
            Foreign::OwnListing(needle) => {
                let text = resp.text().unwrap();
                assert!(status < 300, "{} {} with another tenant's key: {status} {text}", row.method, row.path);
                assert!(
                    !text.contains(needle),
                    "{} {} shows acme's `{needle}` to another tenant: {text}",
                    row.method,
                    row.path
                );
            }
            Foreign::NotApplicable => {}
        }
        // Without a key, nothing but health and metadata answers.
        let method = reqwest::Method::from_bytes(row.method.as_bytes()).unwrap();
        let anonymous = server.http.request(method, format!("{}{}", server.url, row.path)).send().unwrap();
        assert_eq!(anonymous.status(), 401, "{} {} without a key", row.method, row.path);
    }
}

#[test]
fn keys_are_listed_without_secrets_and_revoked_at_once() {
    let server = Server::start();
    let owner = server.tenant("acme", "free");
    server.deploy(&owner, "echo");
    let (id, invoker) = server.key(&owner, "invoker");
    assert!(invoker.starts_with("ick_"));
    assert_eq!(server.invoke(&invoker, "acme/echo", "hi").status(), 200);

    let listed = server.get("/v1/keys", Some(&owner)).text().unwrap();
    assert!(!listed.contains(&invoker) && !listed.contains(&owner), "a listing never holds a secret: {listed}");
    let listed: Value = serde_json::from_str(&listed).unwrap();
    let entry = listed["keys"].as_array().unwrap().iter().find(|k| k["id"] == id.as_str()).unwrap().clone();
    assert_eq!(entry["role"], "invoker");
    assert_eq!(entry["name"], "invoker key");
    assert!(invoker.starts_with(entry["prefix"].as_str().unwrap()));
    assert!(entry["last_used_at"].is_string(), "the invoke was its last use: {entry}");

    let revoked = server.delete(&format!("/v1/keys/{id}"), &owner);
    assert_eq!(revoked.status(), 204);
    expect_error(server.invoke(&invoker, "acme/echo", "hi"), 401);
    expect_error(server.delete(&format!("/v1/keys/{id}"), &owner), 404);
    // Nothing else changed: the owner still works, the function is still there.
    assert_eq!(server.invoke(&owner, "acme/echo", "hi").status(), 200);

    // Bad requests name what is wrong.
    for (body, needle) in [
        (json!({ "role": "admin" }), "not a tenant role"),
        (json!({ "role": "root" }), "not a tenant role"),
        (json!({ "role": "invoker", "expires_at": "tomorrow" }), "not an RFC 3339 time"),
        (json!({ "role": "invoker", "expires_at": "2001-01-01T00:00:00Z" }), "in the past"),
        (json!({ "role": "invoker", "colour": "red" }), "unknown field `colour`"),
    ] {
        let msg = expect_error(server.post("/v1/keys", Some(&owner), body.to_string()), 400);
        assert!(msg.contains(needle), "`{needle}` not in `{msg}`");
    }
}

#[test]
fn an_expired_key_is_refused() {
    let server = Server::start();
    let owner = server.tenant("acme", "free");
    server.deploy(&owner, "echo");
    // Whole seconds: it expires 5 to 6 s from now, time enough for the first call on any machine.
    let soon = time_in(6);
    let resp = server.post("/v1/keys", Some(&owner), json!({ "role": "invoker", "expires_at": soon }).to_string());
    assert_eq!(resp.status(), 201);
    let key = resp.json::<Value>().unwrap()["api_key"].as_str().unwrap().to_string();
    assert_eq!(server.invoke(&key, "acme/echo", "hi").status(), 200);
    wait_until("the key expires", || server.invoke(&key, "acme/echo", "hi").status() == 401);
    expect_error(server.invoke(&key, "acme/echo", "hi"), 401);
}

/// RFC 3339 for `seconds` from now (whole seconds, UTC).
fn time_in(seconds: i64) -> String {
    let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64 + seconds;
    let days = at.div_euclid(86_400);
    let secs = at.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs % 3600 / 60, secs % 60)
}

#[test]
fn no_raw_key_is_ever_written_to_the_data_directory() {
    let mut server = Server::start();
    let owner = server.tenant("acme", "free");
    server.deploy(&owner, "echo");
    let (_, deployer) = server.key(&owner, "deployer");
    let (_, billing) = server.key(&owner, "billing");
    assert_eq!(server.invoke(&owner, "acme/echo", "hi").status(), 200);
    expect_error(server.invoke(&billing, "acme/echo", "hi"), 403); // audited denial
    server.get("/v1/functions", Some(&deployer));
    server.stop();

    for secret in [&owner, &deployer, &billing, ADMIN_KEY] {
        assert_eq!(server.data_dir_holds(secret.as_bytes()), None, "a raw key is in the data directory");
    }
    assert!(server.data_dir.join("infercell.db").is_file() && server.data_dir.join("usage.db").is_file());
}

#[test]
fn the_audit_log_records_management_actions_and_denials() {
    let server = Server::start();
    let owner = server.tenant("acme", "standard");
    let other = server.tenant("other", "free");
    server.deploy(&owner, "echo");
    let (invoker_id, invoker) = server.key(&owner, "invoker");
    expect_error(server.post("/v1/keys", Some(&invoker), json!({ "role": "owner" }).to_string()), 403);
    expect_error(server.post("/v1/tenants", Some(&owner), json!({ "name": "mine" }).to_string()), 403);
    assert_eq!(server.delete(&format!("/v1/keys/{invoker_id}"), &owner).status(), 204);
    // A guest reaching for a model it was not granted: a denial, audited.
    let manifest = "name = \"hostile\"\n[limits]\nmemory = \"16MiB\"\ntimeout = \"5s\"\n";
    assert_eq!(server.upload(&owner, manifest, component("hostile")).status(), 201);
    let probe = server.invoke(&owner, "acme/hostile/nn/other", "").text().unwrap();
    assert!(probe.starts_with("error ErrorCode::NotFound"), "{probe}");

    let log: Value = server.get("/v1/audit", Some(&owner)).json().unwrap();
    let entries = log["entries"].as_array().unwrap();
    let find = |action: &str| entries.iter().find(|e| e["action"] == action).cloned();
    let owner_id = owner.split('_').nth(1).unwrap();
    let deploy = find("function.deploy").unwrap();
    assert_eq!(deploy["actor"], owner_id);
    assert!(deploy["target"].as_str().unwrap().starts_with("echo@1"));
    assert_eq!(find("key.create").unwrap()["outcome"], "ok");
    let revoke = find("key.revoke").unwrap();
    assert_eq!(revoke["actor"], owner_id);
    assert!(revoke["target"].as_str().unwrap().starts_with(&invoker_id));
    let denied = entries.iter().find(|e| e["outcome"] == "denied" && e["actor"] == invoker_id.as_str()).unwrap();
    assert_eq!(denied["action"], "key.create");
    let created = entries.iter().find(|e| e["action"] == "tenant.create" && e["actor"] == "admin").unwrap();
    assert_eq!(created["outcome"], "ok", "the tenant's creation opens its log");
    let attempt = entries.iter().find(|e| e["action"] == "tenant.create" && e["actor"] == owner_id).unwrap();
    assert_eq!(attempt["outcome"], "denied", "an owner creating a tenant is a denial in its own log");
    let model = find("deny:models").unwrap();
    assert_eq!(model["target"], "someone-elses-model");
    assert!(model["detail"].as_str().unwrap().contains("hostile@1"));
    // The function's log says so too, and the denial is counted.
    let logs = server.get("/v1/functions/hostile/logs", Some(&owner)).text().unwrap();
    assert!(logs.contains("denied: models `someone-elses-model`"), "{logs}");
    let metrics = server.get("/metrics", Some(ADMIN_KEY)).text().unwrap();
    assert!(metrics.contains("infercell_denials_total{tenant=\"acme\",capability=\"models\"} 1"), "{metrics}");

    // Requests without any key are refused but not audited: anyone could grow the log.
    let all_before: Value = server.get("/v1/audit?limit=1000", Some(ADMIN_KEY)).json().unwrap();
    for _ in 0..5 {
        expect_error(server.get("/v1/functions", None), 401);
    }
    expect_error(server.get("/v1/functions", Some("ick_bogus_key")), 401);
    let all_after: Value = server.get("/v1/audit?limit=1000", Some(ADMIN_KEY)).json().unwrap();
    let (before, after) =
        (all_before["entries"].as_array().unwrap().len(), all_after["entries"].as_array().unwrap().len());
    assert_eq!(after, before + 1, "only the request with a (wrong) key is audited");

    // Tenants see their own log only; the admin sees every tenant's.
    let theirs: Value = server.get("/v1/audit", Some(&other)).json().unwrap();
    assert!(theirs["entries"].as_array().unwrap().iter().all(|e| e["tenant"] == "other"));
    expect_error(server.get("/v1/audit?tenant=acme", Some(&other)), 403);
    let all: Value = server.get("/v1/audit?tenant=acme", Some(ADMIN_KEY)).json().unwrap();
    assert_eq!(all["entries"].as_array().unwrap().len(), entries.len());
    let created = all["entries"].as_array().unwrap().iter().find(|e| e["action"] == "tenant.create").unwrap().clone();
    assert_eq!(created["actor"], "admin");
}

#[test]
fn the_cli_manages_keys_and_files_and_reads_the_audit_log() {
    let server = Server::start();
    let owner = server.tenant("acme", "free");
    let out = server.cli(&owner, &["keys", "create", "invoker", "--name", "ci", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    let listed = String::from_utf8(server.cli(&owner, &["keys", "list"]).stdout).unwrap();
    assert!(listed.contains(&id) && listed.contains("invoker") && listed.contains("ci"), "{listed}");
    assert!(!listed.contains(created["api_key"].as_str().unwrap()));
    assert!(server.cli(&owner, &["keys", "revoke", &id]).status.success());
    let again = server.cli(&owner, &["keys", "revoke", &id]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("no key with id"));

    let labels = server.data_dir.parent().unwrap().join("labels.txt");
    std::fs::write(&labels, "cat\ndog\n").unwrap();
    let put = server.cli(&owner, &["files", "put", "labels.txt", labels.to_str().unwrap()]);
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));
    let files = String::from_utf8(server.cli(&owner, &["files", "list"]).stdout).unwrap();
    assert!(files.contains("labels.txt") && files.contains('8'), "{files}");
    assert!(server.cli(&owner, &["files", "delete", "labels.txt"]).status.success());

    let audit = String::from_utf8(server.cli(&owner, &["audit"]).stdout).unwrap();
    for action in ["key.create", "key.revoke", "file.put", "file.delete"] {
        assert!(audit.contains(action), "`{action}` not in\n{audit}");
    }

    server.deploy(&owner, "digits");
    let inspect = String::from_utf8(server.cli(&owner, &["inspect", "digits@1"]).stdout).unwrap();
    assert!(inspect.contains("digits@1") && inspect.contains("wasi:nn"), "{inspect}");
    assert!(inspect.contains("needs:") && inspect.contains("models"), "{inspect}");
    assert!(inspect.contains("grants:") && inspect.contains("[\"digits\"]"), "{inspect}");
}

#[test]
fn unknown_keys_cannot_flood_the_audit_log() {
    let server = Server::start();
    let owner = server.tenant("acme", "free");
    let count = |server: &Server| -> usize {
        let all: Value = server.get("/v1/audit?limit=1000", Some(ADMIN_KEY)).json().unwrap();
        all["entries"].as_array().unwrap().iter().filter(|e| e["actor"] == "anonymous").count()
    };
    let before = count(&server);
    let started = std::time::Instant::now();
    for i in 0..300 {
        let key = format!("ick_bogus_{i}");
        expect_error(server.get("/v1/functions", Some(&key)), 401);
    }
    let seconds = started.elapsed().as_secs() as usize;
    // Every refusal is counted; the log holds at most one entry per second of them.
    let metrics = server.get("/metrics", Some(ADMIN_KEY)).text().unwrap();
    assert!(metrics.contains("infercell_unauthenticated_total{reason=\"invalid_key\"} 300"), "{metrics}");
    let written = count(&server) - before;
    assert!(written >= 1 && written <= seconds + 2, "{written} entries for 300 refusals in {seconds} s");
    // The next entry says how many were not written one by one.
    std::thread::sleep(infercell::audit::UNKNOWN_KEY_INTERVAL);
    expect_error(server.get("/v1/functions", Some("ick_bogus_last")), 401);
    let all: Value = server.get("/v1/audit?limit=1000", Some(ADMIN_KEY)).json().unwrap();
    let last = all["entries"].as_array().unwrap().iter().rev().find(|e| e["actor"] == "anonymous").unwrap().clone();
    let detail = last["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("more requests with an unknown key refused"), "{last}");
    // Requests without a key are counted, never written; real keys still work.
    expect_error(server.get("/v1/functions", None), 401);
    let metrics = server.get("/metrics", Some(ADMIN_KEY)).text().unwrap();
    assert!(metrics.contains("infercell_unauthenticated_total{reason=\"missing_key\"} 1"), "{metrics}");
    assert_eq!(server.get("/v1/functions", Some(&owner)).status(), 200);
}

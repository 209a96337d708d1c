//! The real Python clients of the Open Inference Protocol (tritonclient[http] and kserve's REST
//! client), unmodified, against the real server: `tests/clients/test_clients.py`, from the venv
//! `scripts/setup-clients.sh` makes (scripts/test.sh runs it first). Locally the test skips
//! without that venv; under `CI=true` or `scripts/test.sh` it fails.
#![allow(clippy::unwrap_used)]

use infercell_tests::*;

#[test]
fn tritonclient_and_kserve_work_unmodified() {
    let python = repo_root().join(".venv-clients/bin/python");
    if !python.is_file() {
        assert!(!strict(), "scripts/setup-clients.sh must run first");
        eprintln!("skipping: .venv-clients is missing (run scripts/setup-clients.sh)");
        return;
    }
    let server = Server::start();
    let key = server.tenant("acme", "standard");
    server.push_digits(&key);
    server.deploy(&key, "digits-predictor");
    let out = std::process::Command::new(python)
        .arg(repo_root().join("tests/clients/test_clients.py"))
        .args(["--url", &server.url, "--key", &key])
        .arg("--expected")
        .arg(repo_root().join("samples/digits/expected.json"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "the clients failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("all client checks passed"));
    assert!(stdout.matches("ok ").count() >= 25, "{stdout}");
}

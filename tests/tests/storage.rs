//! Storage quotas per plan, against the real binary: past any of them an upload gets 507 with
//! a message naming the plan's limit, and nothing already stored is lost or changed; a refused
//! upload leaves no blob, and a deleted function's or model's blobs and compiled artifacts are
//! collected.
#![allow(clippy::unwrap_used)]

use infercell_tests::*;

const TIGHT: &str =
    "[plans.free]\nmax_functions = 2\nmax_versions = 2\nmax_models = 1\nmax_files = 1\nmax_storage_bytes = \"2MiB\"\n";

/// Files under the data directory's `dir`.
fn count(server: &Server, dir: &str) -> usize {
    std::fs::read_dir(server.data_dir.join(dir)).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn every_storage_quota_refuses_with_507_and_keeps_what_is_stored() {
    let server = Server::start_with_config(Some(TIGHT));
    let key = server.tenant("acme", "free");
    // Versions of one function.
    for _ in 0..2 {
        assert_eq!(server.upload(&key, "name = \"echo\"\n", component("echo")).status(), 201);
    }
    let (blobs, artifacts) = (count(&server, "blobs"), count(&server, "artifacts"));
    let msg = expect_error(server.upload(&key, "name = \"echo\"\n", component("hello")), 507);
    assert!(msg.contains("`echo` has 2 live versions") && msg.contains("max_versions = 2"), "{msg}");
    assert_eq!(count(&server, "blobs"), blobs, "the refused component left no blob");
    assert_eq!(count(&server, "artifacts"), artifacts, "nor a compiled artifact");
    assert_eq!(server.invoke(&key, "acme/echo", "still here").text().unwrap(), "still here");
    let listed: Value = server.get("/v1/functions/echo", Some(&key)).json().unwrap();
    assert_eq!(listed["versions"].as_array().unwrap().len(), 2, "{listed}");
    // Functions.
    assert_eq!(server.upload(&key, "name = \"hello\"\n", component("hello")).status(), 201);
    let msg = expect_error(server.upload(&key, "name = \"third\"\n", component("hello")), 507);
    assert!(msg.contains("has 2 functions") && msg.contains("max_functions = 2"), "{msg}");
    // Models.
    server.push_digits(&key);
    let msg = expect_error(server.push_model(&key, "name = \"other\"\n", digits_model()), 507);
    assert!(msg.contains("has 1 models") && msg.contains("max_models = 1"), "{msg}");
    // Files: one name, replaced at will; a second name is refused, as are bytes past the plan's.
    let put = |name: &str, body: Vec<u8>| {
        server.http.put(format!("{}/v1/files/{name}", server.url)).bearer_auth(&key).body(body).send().unwrap()
    };
    assert_eq!(put("labels.txt", b"a\nb\n".to_vec()).status(), 201);
    assert_eq!(put("labels.txt", b"c\nd\n".to_vec()).status(), 201);
    let msg = expect_error(put("more.txt", b"x".to_vec()), 507);
    assert!(msg.contains("max_files = 1"), "{msg}");
    let msg = expect_error(put("labels.txt", vec![b'x'; 3 << 20]), 507);
    assert!(msg.contains("max_storage_bytes"), "{msg}");
    let file = server.get("/v1/files", Some(&key)).text().unwrap();
    assert!(file.contains("\"size\":4"), "the stored file is unchanged: {file}");
    // Another tenant on the same plan has its own room.
    let other = server.tenant("other", "free");
    assert_eq!(server.upload(&other, "name = \"echo\"\n", component("echo")).status(), 201);
}

#[test]
fn deleting_collects_blobs_and_artifacts_no_version_names() {
    let server = Server::start();
    let a = server.tenant("a", "standard");
    let b = server.tenant("b", "standard");
    assert_eq!(server.upload(&a, "name = \"echo\"\n", component("echo")).status(), 201);
    assert_eq!(server.upload(&b, "name = \"echo\"\n", component("echo")).status(), 201);
    assert_eq!(server.upload(&a, "name = \"hello\"\n", component("hello")).status(), 201);
    let (blobs, artifacts) = (count(&server, "blobs"), count(&server, "artifacts"));
    // `b` still runs the echo bytes: deleting `a`'s echo keeps them.
    assert_eq!(server.delete("/v1/functions/echo", &a).status(), 200);
    assert_eq!(count(&server, "blobs"), blobs);
    assert_eq!(server.invoke(&b, "b/echo", "mine").text().unwrap(), "mine");
    // Nobody runs hello any more: its blob and compiled artifact go.
    assert_eq!(server.delete("/v1/functions/hello", &a).status(), 200);
    assert_eq!(count(&server, "blobs"), blobs - 1);
    assert!(count(&server, "artifacts") < artifacts, "the compiled artifact went too");
    // A model's blob goes with its last version.
    server.push_digits(&a);
    let with_model = count(&server, "blobs");
    assert_eq!(server.delete("/v1/models/digits", &a).status(), 200);
    assert_eq!(count(&server, "blobs"), with_model - 1);
    // Uploading the same bytes again works.
    assert_eq!(server.upload(&a, "name = \"hello\"\n", component("hello")).status(), 201);
    let hello: Value = server.invoke(&a, "a/hello", "").json().unwrap();
    assert_eq!(hello["message"], "Hello, world!");
}

/// Bytes count across kinds: a model that would pass the plan's `max_storage_bytes` beside
/// what is stored is refused, and leaves no version and no blob.
#[test]
fn a_model_past_the_storage_bytes_is_refused() {
    let server = Server::start_with_config(Some("[plans.free]\nmax_storage_bytes = \"1MiB\"\n"));
    let key = server.tenant("acme", "free");
    server.push_digits(&key);
    let blobs = count(&server, "blobs");
    // y = x + w, w a 2 MiB constant.
    use infercell_tests::onnx::{node, one_node_model};
    let add = node("Add", &["x", "w"], "y", Vec::new());
    let big = one_node_model(add, &[("x", &[1, 1 << 19])], &[("w", &[1, 1 << 19], vec![0.5f32; 1 << 19])]);
    let msg = expect_error(server.push_model(&key, "name = \"big\"\nengine = \"tract\"\n", big), 507);
    assert!(msg.contains("max_storage_bytes of 1048576"), "{msg}");
    assert_eq!(count(&server, "blobs"), blobs, "the refused model left no blob");
    let models: Value = server.get("/v1/models", Some(&key)).json().unwrap();
    assert_eq!(models["models"].as_array().unwrap().len(), 1, "{models}");
}

//! The whole HTTP surface in process: `server::router()` driven as a tower service, without a
//! socket or a child process, so that the contract (status codes, error bodies, headers, what
//! is billed) is checked in milliseconds. The end-to-end suites run the real binary.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt as _;
use infercell::config::Config;
use infercell::server::{App, router};
use infercell_tests::{component, digits_expected, digits_model};
use serde_json::{Value, json};
use tower::ServiceExt as _;

const ADMIN: &str = "ick_admin_router";

struct Surface {
    app: Arc<App>,
    _dir: tempfile::TempDir,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

impl Surface {
    fn new() -> Self {
        Self::with(Config::embedded())
    }

    fn with(config: Config) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (app, _) = App::open(config, dir.path(), Some(ADMIN.into())).unwrap();
        Self { app, _dir: dir }
    }

    async fn call(&self, method: Method, path: &str, key: Option<&str>, content_type: &str, body: Vec<u8>) -> Answer {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        if !content_type.is_empty() {
            request = request.header("content-type", content_type);
        }
        let response = router(self.app.clone()).oneshot(request.body(Body::from(body)).unwrap()).await.unwrap();
        let (parts, body) = response.into_parts();
        Answer { status: parts.status, headers: parts.headers, body: body.collect().await.unwrap().to_bytes().to_vec() }
    }

    async fn get(&self, path: &str, key: Option<&str>) -> Answer {
        self.call(Method::GET, path, key, "", Vec::new()).await
    }

    async fn post_json(&self, path: &str, key: Option<&str>, body: Value) -> Answer {
        self.call(Method::POST, path, key, "application/json", body.to_string().into_bytes()).await
    }

    async fn tenant(&self, name: &str, plan: &str) -> String {
        let answer = self.post_json("/v1/tenants", Some(ADMIN), json!({ "name": name, "plan": plan })).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&answer.body));
        answer.json()["api_key"].as_str().unwrap().to_string()
    }

    /// A multipart upload of `manifest` and one binary part.
    async fn upload(&self, path: &str, key: &str, manifest: &str, part: &str, bytes: Vec<u8>) -> Answer {
        let boundary = "infercell-router-test-boundary";
        let mut body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"manifest\"\r\n\r\n{manifest}\r\n--{boundary}\r\n\
             Content-Disposition: form-data; name=\"{part}\"; filename=\"x\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .into_bytes();
        body.extend_from_slice(&bytes);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        self.call(Method::POST, path, Some(key), &format!("multipart/form-data; boundary={boundary}"), body).await
    }

    async fn records(&self, key: &str) -> Vec<Value> {
        self.get("/v1/usage?limit=1000", Some(key)).await.json()["records"].as_array().unwrap().clone()
    }
}

fn error_of(answer: &Answer, status: StatusCode) -> String {
    assert_eq!(answer.status, status, "{}", String::from_utf8_lossy(&answer.body));
    let body = answer.json();
    assert!(body["request_id"].as_str().is_some_and(|id| !id.is_empty()), "{body}");
    assert_eq!(answer.headers["infercell-request-id"].to_str().unwrap(), body["request_id"].as_str().unwrap());
    body["error"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_have_one_shape_and_the_right_status() {
    let surface = Surface::new();
    assert_eq!(surface.get("/healthz", None).await.status, StatusCode::OK);
    error_of(&surface.get("/no/such/endpoint", None).await, StatusCode::NOT_FOUND);
    let msg = error_of(&surface.get("/v1/functions", None).await, StatusCode::UNAUTHORIZED);
    assert!(msg.contains("missing API key"), "{msg}");
    error_of(&surface.get("/v1/functions", Some("ick_wrong")).await, StatusCode::UNAUTHORIZED);
    let acme = surface.tenant("acme", "free").await;
    error_of(&surface.get("/v1/tenants", Some(&acme)).await, StatusCode::FORBIDDEN);
    let taken = surface.post_json("/v1/tenants", Some(ADMIN), json!({ "name": "acme" })).await;
    error_of(&taken, StatusCode::CONFLICT);
    let bad = surface.post_json("/v1/tenants", Some(ADMIN), json!({ "name": "Not A Name" })).await;
    error_of(&bad, StatusCode::BAD_REQUEST);
    error_of(&surface.call(Method::DELETE, "/v1/keys/nope", Some(&acme), "", Vec::new()).await, StatusCode::NOT_FOUND);
    // Nothing ran, nothing is billed.
    assert!(surface.records(&acme).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_runs_through_the_pipeline_and_is_billed_once() {
    let surface = Surface::new();
    let acme = surface.tenant("acme", "free").await;
    let other = surface.tenant("other", "free").await;
    let manifest = "name = \"echo\"\n[limits]\nmemory = \"16MiB\"\ntimeout = \"5s\"\n";
    let uploaded = surface.upload("/v1/functions", &acme, manifest, "component", component("echo")).await;
    assert_eq!(uploaded.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&uploaded.body));
    assert_eq!(uploaded.json()["version"], 1);

    let answer = surface.call(Method::POST, "/fn/acme/echo", Some(&acme), "", b"in process".to_vec()).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, b"in process");
    let usage = answer.headers["infercell-usage"].to_str().unwrap();
    assert!(usage.contains("invocations=1") && usage.contains("bytes_in=10") && usage.contains("version=1"), "{usage}");

    // Another tenant's function does not exist for this key; a bad version is the caller's error.
    error_of(&surface.call(Method::POST, "/fn/acme/echo", Some(&other), "", Vec::new()).await, StatusCode::NOT_FOUND);
    error_of(
        &surface.call(Method::POST, "/fn/acme/echo@0", Some(&acme), "", Vec::new()).await,
        StatusCode::BAD_REQUEST,
    );
    error_of(&surface.call(Method::POST, "/fn/acme/echo@x", Some(&acme), "", Vec::new()).await, StatusCode::NOT_FOUND);
    error_of(&surface.call(Method::POST, "/fn/acme/echo@9", Some(&acme), "", Vec::new()).await, StatusCode::NOT_FOUND);

    let records = surface.records(&acme).await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["request_id"], answer.headers["infercell-request-id"].to_str().unwrap());
    assert_eq!(records[0]["kind"], "function");
    assert_eq!(records[0]["outcome"], "ok");
    assert_eq!(records[0]["meters"]["bytes_out"], "10");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_are_served_under_v2_and_billed_as_models() {
    let surface = Surface::new();
    let acme = surface.tenant("acme", "free").await;
    let pushed = surface.upload("/v1/models", &acme, "name = \"digits\"\n", "model", digits_model()).await;
    assert_eq!(pushed.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&pushed.body));

    let case = &digits_expected()["cases"][0];
    let pixels: Vec<f64> = case["pixels"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap() / 16.0).collect();
    let infer = json!({ "inputs": [{ "name": "input", "datatype": "FP32", "shape": [1, 64], "data": pixels }] });
    let answer = surface.post_json("/v2/models/digits/infer", Some(&acme), infer.clone()).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", String::from_utf8_lossy(&answer.body));
    assert_eq!(answer.json()["outputs"][0]["name"], "probabilities");

    // The caller's mistakes are 400s, found before anything runs: not billed.
    let wrong = json!({ "inputs": [{ "name": "input", "datatype": "INT64", "shape": [1, 64], "data": vec![0; 64] }] });
    error_of(&surface.post_json("/v2/models/digits/infer", Some(&acme), wrong).await, StatusCode::BAD_REQUEST);
    error_of(&surface.post_json("/v2/models/nope/infer", Some(&acme), infer).await, StatusCode::NOT_FOUND);

    let records = surface.records(&acme).await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!((records[0]["kind"].as_str(), records[0]["function"].as_str()), (Some("model"), Some("digits")));
    let bill = surface.get("/v1/billing", Some(&acme)).await.json();
    assert!(bill["lines"].as_array().unwrap().iter().all(|l| l["kind"] == "model"), "{bill}");
}

/// No instance slot free is a refusal: 503 with `Retry-After`, nothing billed; the call that
/// holds the slot is billed as it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_instance_slot_is_a_503_with_retry_after_and_not_billed() {
    let mut config = Config::embedded();
    config.runtime.max_instances = 1;
    config.runtime.max_instances_per_tenant = 2;
    let surface = Arc::new(Surface::with(config));
    let acme = surface.tenant("acme", "standard").await;
    let manifest = "name = \"spin\"\n[limits]\nmemory = \"16MiB\"\ntimeout = \"2s\"\n";
    let uploaded = surface.upload("/v1/functions", &acme, manifest, "component", component("hostile")).await;
    assert_eq!(uploaded.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&uploaded.body));

    let (s, k) = (surface.clone(), acme.clone());
    let looping =
        tokio::spawn(async move { s.call(Method::POST, "/fn/acme/spin/loop", Some(&k), "", Vec::new()).await.status });
    let started = std::time::Instant::now();
    while surface.app.runtime.live_instances() < 1 {
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "the loop never started");
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let refused = surface.call(Method::POST, "/fn/acme/spin/ok", Some(&acme), "", Vec::new()).await;
    let msg = error_of(&refused, StatusCode::SERVICE_UNAVAILABLE);
    assert!(msg.contains("no instance slot free"), "{msg}");
    assert_eq!(refused.headers["retry-after"], "1");
    let usage = refused.headers["infercell-usage"].to_str().unwrap();
    assert!(!usage.contains("invocations="), "a refusal has no meters: {usage}");
    assert_eq!(looping.await.unwrap(), StatusCode::GATEWAY_TIMEOUT);
    let records = surface.records(&acme).await;
    assert_eq!(records.len(), 1, "only the call that ran is billed: {records:?}");
    assert_eq!(records[0]["outcome"], "timeout");
}

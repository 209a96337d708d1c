//! Traces and logs, as an operator meets them: with an OTLP endpoint configured, a call's spans
//! (request, admit, instantiate, run, nn.load, nn.compute, commit) reach a collector under the
//! caller's trace id, and a function's outbound request carries that trace on; logs can be
//! JSON and every line of a request names its request id. The collector and the upstream are
//! loopback listeners of the test's own.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use infercell_tests::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;

/// A request line, its headers and its body.
type Request = (String, HashMap<String, String>, Vec<u8>);

/// One HTTP/1.1 request read off `stream`: its headers (lower-cased names) and body; `None`
/// once the client closes.
fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let request_line = line.trim().to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (name, value) = h.split_once(':')?;
        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    let length: usize = headers.get("content-length").map_or(0, |l| l.parse().unwrap());
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some((request_line, headers, body))
}

/// A span as the collector keeps it.
#[derive(Clone, Debug)]
struct Span {
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
}

/// An OTLP/HTTP collector on loopback: decodes every export and keeps its spans.
fn collector() -> (String, Arc<Mutex<Vec<Span>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
    let spans = Arc::new(Mutex::new(Vec::new()));
    let kept = spans.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let kept = kept.clone();
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                while let Some((line, headers, body)) = read_request(&mut reader) {
                    assert!(line.starts_with("POST /v1/traces "), "{line}");
                    assert_eq!(headers.get("content-type").map(String::as_str), Some("application/x-protobuf"));
                    let export = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
                    for resource in export.resource_spans {
                        for scope in resource.scope_spans {
                            for s in scope.spans {
                                kept.lock().unwrap().push(Span {
                                    name: s.name,
                                    trace_id: hex(&s.trace_id),
                                    span_id: hex(&s.span_id),
                                    parent: hex(&s.parent_span_id),
                                });
                            }
                        }
                    }
                    let _ = writer.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
                }
            });
        }
    });
    (url, spans)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The headers of each request an upstream received.
type Seen = Arc<Mutex<Vec<HashMap<String, String>>>>;

/// A loopback upstream that answers "ok" and keeps each request's headers.
fn upstream() -> (u16, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let mut writer = stream.try_clone().unwrap();
            let mut reader = BufReader::new(stream);
            if let Some((_, headers, _)) = read_request(&mut reader) {
                kept.lock().unwrap().push(headers);
                let _ = writer.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
            }
        }
    });
    (port, seen)
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[test]
fn a_calls_spans_reach_the_collector_under_the_callers_trace() {
    let (endpoint, spans) = collector();
    let (port, seen) = upstream();
    let config = format!(
        "[telemetry]\notlp_endpoint = \"{endpoint}\"\nservice_name = \"infercell-test\"\n[outbound]\nallow_ranges = [\"127.0.0.0/8\"]\n"
    );
    let server = Server::start_with_config(Some(&config));
    let key = server.tenant("acme", "standard");
    server.push_digits(&key);
    server.deploy(&key, "digits");
    let manifest = format!("name = \"fetch\"\n[capabilities]\nallowed_hosts = [\"127.0.0.1:{port}\"]\n");
    assert_eq!(server.upload(&key, &manifest, component("fetch")).status(), 201);

    let traceparent = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let pixels: Vec<u32> = (0..64).map(|i| i % 17).collect();
    let resp = server
        .http
        .post(format!("{}/fn/acme/digits", server.url))
        .bearer_auth(&key)
        .header("traceparent", &traceparent)
        .body(serde_json::json!({ "pixels": pixels }).to_string())
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = server
        .http
        .post(format!("{}/fn/acme/fetch?to=127.0.0.1:{port}/x", server.url))
        .bearer_auth(&key)
        .header("traceparent", &traceparent)
        .send()
        .unwrap();
    assert_eq!(resp.text().unwrap(), "status 200: ok");

    // Every phase arrives, in the caller's trace; the request continues the caller's span.
    let wanted = ["request", "admit", "instantiate", "run", "nn.load", "nn.compute", "commit"];
    wait_until("the spans of both calls", || {
        let spans = spans.lock().unwrap();
        let names: Vec<&str> = spans.iter().filter(|s| s.trace_id == TRACE).map(|s| s.name.as_str()).collect();
        wanted.iter().all(|w| names.contains(w)) && names.iter().filter(|n| **n == "request").count() == 2
    });
    let spans = spans.lock().unwrap().clone();
    let ours: Vec<&Span> = spans.iter().filter(|s| s.trace_id == TRACE).collect();
    let requests: Vec<&&Span> = ours.iter().filter(|s| s.name == "request").collect();
    assert!(requests.iter().all(|r| r.parent == CALLER_SPAN), "{requests:?}");
    // Each phase hangs under a span of the same trace.
    let ids: Vec<&str> = ours.iter().map(|s| s.span_id.as_str()).collect();
    for s in ours.iter().filter(|s| s.name != "request") {
        assert!(ids.contains(&s.parent.as_str()), "{} has a parent outside the trace: {ours:?}", s.name);
    }

    // The upstream saw the trace carried on, from a span of the call.
    let seen = seen.lock().unwrap();
    let outbound = seen[0].get("traceparent").expect("the outbound request carries traceparent");
    let parts: Vec<&str> = outbound.split('-').collect();
    assert_eq!(parts.len(), 4, "{outbound}");
    assert_eq!(parts[1], TRACE);
    assert_ne!(parts[2], CALLER_SPAN, "the parent is the function's span, not the caller's");
    assert!(ids.contains(&parts[2]), "{outbound} names no exported span");
}

#[test]
fn calls_without_an_endpoint_send_nothing_and_outbound_requests_get_no_traceparent() {
    let (port, seen) = upstream();
    let server = Server::start_with_config(Some("[outbound]\nallow_ranges = [\"127.0.0.0/8\"]\n"));
    let key = server.tenant("acme", "standard");
    let manifest = format!("name = \"fetch\"\n[capabilities]\nallowed_hosts = [\"127.0.0.1:{port}\"]\n");
    assert_eq!(server.upload(&key, &manifest, component("fetch")).status(), 201);
    let resp = server
        .http
        .post(format!("{}/fn/acme/fetch?to=127.0.0.1:{port}/x", server.url))
        .bearer_auth(&key)
        .header("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-01"))
        .send()
        .unwrap();
    assert_eq!(resp.text().unwrap(), "status 200: ok");
    assert!(!seen.lock().unwrap()[0].contains_key("traceparent"));
}

#[test]
fn json_logs_name_the_request_id() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(tmp.path())
        .env("INFERCELL_ADMIN_KEY", ADMIN_KEY)
        .env("INFERCELL_LOG", "info")
        .env("INFERCELL_LOG_FORMAT", "json")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = loop {
        let line = stdout.next().unwrap().unwrap();
        if let Some(addr) = line.strip_prefix("listening on ") {
            break addr.trim().to_string();
        }
    };
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let _ = lines_tx.send(line.unwrap());
        }
    });
    let http = reqwest::blocking::Client::new();
    let tenant: Value = http
        .post(format!("{url}/v1/tenants"))
        .bearer_auth(ADMIN_KEY)
        .json(&serde_json::json!({"name": "acme", "plan": "standard"}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let key = tenant["api_key"].as_str().unwrap();
    let form = reqwest::blocking::multipart::Form::new()
        .part("manifest", reqwest::blocking::multipart::Part::text("name = \"digits\"\n"))
        .part("model", reqwest::blocking::multipart::Part::bytes(digits_model()).file_name("m.onnx"));
    let resp = http.post(format!("{url}/v1/models")).bearer_auth(key).multipart(form).send().unwrap();
    assert_eq!(resp.status(), 201);
    let request_id = resp.headers()["infercell-request-id"].to_str().unwrap().to_string();
    // The "model pushed" line is JSON and carries the request's id.
    let pushed = loop {
        let line = lines.recv_timeout(Duration::from_secs(30)).expect("no \"model pushed\" log line");
        // (Vulkan's loader writes to stderr itself, outside the server's logger.)
        if line.starts_with("error: XDG_RUNTIME_DIR") {
            continue;
        }
        let Ok(entry) = serde_json::from_str::<Value>(&line) else {
            panic!("a log line that is not JSON: {line}");
        };
        if entry["fields"]["message"] == "model pushed" {
            break entry;
        }
    };
    assert_eq!(pushed["span"]["request_id"], request_id.as_str(), "{pushed}");
    assert_eq!(pushed["level"], "INFO");
    let _ = child.kill();
    let _ = child.wait();
}

//! The runtime in process, without HTTP: fresh sandboxes, limits, the instance pool, and the
//! compiled-artifact cache.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use infercell::runtime::{Grants, GuestRequest, InvokeError, Limits, Runtime, RuntimeConfig, ValidateError};
use infercell_tests::component;

fn runtime(config: RuntimeConfig) -> (Runtime, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = cap_std::fs::Dir::open_ambient_dir(tmp.path(), cap_std::ambient_authority()).unwrap();
    (Runtime::new(config, dir).unwrap(), tmp)
}

fn limits() -> Limits {
    // Not about time: generous on any machine (200 calls share one thread in one case).
    Limits { memory_bytes: 16 << 20, timeout: Duration::from_secs(30), fuel: None }
}

fn request(path: &str, body: &str) -> GuestRequest {
    GuestRequest { method: "POST".into(), path: path.into(), body: body.as_bytes().to_vec(), ..Default::default() }
}

#[tokio::test]
async fn echo_runs_in_process_and_is_metered() {
    let (rt, _tmp) = runtime(RuntimeConfig::default());
    let echo = rt.prepare_new("sha256:echo", &component("echo")).unwrap();
    let outcome = rt.invoke(&echo, &limits(), &Grants::default(), request("/", "in process")).await;
    let answer = outcome.result.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, b"in process");
    assert!(outcome.usage.fuel > 0);
    assert!(outcome.usage.peak_memory_bytes >= 64 << 10);
    assert!(outcome.usage.wall > Duration::ZERO);
}

#[tokio::test]
async fn many_concurrent_calls_each_get_their_own_instance() {
    let (rt, _tmp) = runtime(RuntimeConfig::default());
    let rt = Arc::new(rt);
    let echo = Arc::new(rt.prepare_new("sha256:echo", &component("echo")).unwrap());
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (rt, echo) = (rt.clone(), echo.clone());
        tasks.push(tokio::spawn(async move {
            let body = format!("call {i}");
            let outcome = rt.invoke(&echo, &limits(), &Grants::default(), request("/", &body)).await;
            assert_eq!(outcome.result.unwrap().body, body.as_bytes());
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_instance_pool_is_reported_as_busy_not_a_crash() {
    let (rt, _tmp) = runtime(RuntimeConfig { max_instances: 2, ..RuntimeConfig::default() });
    let rt = Arc::new(rt);
    let hostile = Arc::new(rt.prepare_new("sha256:hostile", &component("hostile")).unwrap());
    // Long enough that both are still running when the third call comes, on any machine.
    let slow = Limits { timeout: Duration::from_secs(10), ..limits() };
    let mut loops = Vec::new();
    for _ in 0..2 {
        let (rt, hostile, slow) = (rt.clone(), hostile.clone(), slow.clone());
        loops.push(tokio::spawn(
            async move { rt.invoke(&hostile, &slow, &Grants::default(), request("/loop", "")).await },
        ));
    }
    // Once both loops hold their slots (observed, not guessed), a third call finds none.
    let started = std::time::Instant::now();
    while rt.live_instances() < 2 {
        assert!(started.elapsed() < Duration::from_secs(60), "the loops never started");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let outcome = rt.invoke(&hostile, &limits(), &Grants::default(), request("/ok", "")).await;
    assert!(matches!(outcome.result, Err(InvokeError::Busy(_))), "{:?}", outcome.result);
    for l in loops {
        let result = l.await.unwrap().result;
        assert!(matches!(result, Err(InvokeError::Timeout(_))), "{result:?}");
    }
    // Slots are returned when the calls end.
    let outcome = rt.invoke(&hostile, &limits(), &Grants::default(), request("/ok", "")).await;
    assert_eq!(outcome.result.unwrap().body, b"ok");
}

#[tokio::test]
async fn config_values_reach_the_guest() {
    let (rt, _tmp) = runtime(RuntimeConfig::default());
    let hello = rt.prepare_new("sha256:hello", &component("hello")).unwrap();
    let config = Arc::new(vec![("greeting".to_string(), "Hej".to_string())]);
    let outcome =
        rt.invoke(&hello, &limits(), &Grants { config, ..Grants::default() }, request("/", r#"{"name":"Ola"}"#)).await;
    assert_eq!(outcome.result.unwrap().body, br#"{"message":"Hej, Ola!"}"#);
    assert!(outcome.logs.iter().any(|l| l.message == "greeting Ola"), "{:?}", outcome.logs);
}

#[test]
fn validation_names_the_problem() {
    let (rt, _tmp) = runtime(RuntimeConfig::default());
    assert!(matches!(rt.prepare_new("sha256:x", b"MZ\x90\x00"), Err(ValidateError::NotWasm)));
    assert!(matches!(rt.prepare_new("sha256:x", b"\0asm\x01\0\0\0"), Err(ValidateError::CoreModule)));
    assert!(matches!(rt.prepare_new("sha256:x", b"\0asm\x0d\0\x01\0"), Err(ValidateError::NoHandler(_))));
}

#[test]
fn stored_versions_load_from_the_cache_or_recompile() {
    let (rt, tmp) = runtime(RuntimeConfig::default());
    let bytes = component("echo");
    rt.prepare_new("sha256:cached", &bytes).unwrap();
    // Cached: the bytes are not needed.
    rt.prepare_stored("sha256:cached", || panic!("should not need the component bytes")).unwrap();
    // Not cached: recompiled from the bytes, and cached for next time.
    let before = std::fs::read_dir(tmp.path()).unwrap().count();
    rt.prepare_stored("sha256:other", || Ok(bytes.clone())).unwrap();
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), before + 2);
}

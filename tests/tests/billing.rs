//! Metering, quotas and billing against the real binary: every admitted call has exactly one
//! committed usage record, refused calls are never billed, bills are exact.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::str::FromStr as _;

use infercell_tests::*;

fn usage(server: &Server, key: &str, query: &str) -> Value {
    let resp = server.get(&format!("/v1/usage{query}"), Some(key));
    assert_eq!(resp.status(), 200);
    resp.json().unwrap()
}

fn dec(v: &Value) -> f64 {
    f64::from_str(v.as_str().expect("decimals are strings")).unwrap()
}

#[test]
fn every_call_is_recorded_and_billed_exactly() {
    let server = Server::start();
    let key = server.tenant("acme", "standard");
    server.deploy(&key, "echo");
    server.deploy(&key, "hostile");
    let mut ids = Vec::new();
    for body in ["a", "bb", "ccc"] {
        let resp = server.invoke(&key, "acme/echo", body);
        assert_eq!(resp.status(), 200);
        let usage = resp.headers()["infercell-usage"].to_str().unwrap().to_string();
        for meter in ["invocations=1", "guest_ms=", "fuel=", "memory_gib_s=", "nn_cpu_ms=0", "nn_gpu_ms=0", "bytes_in="]
        {
            assert!(usage.contains(meter), "{meter} missing in {usage}");
        }
        ids.push(resp.headers()["infercell-request-id"].to_str().unwrap().to_string());
    }
    assert_eq!(server.invoke(&key, "acme/hostile/trap", "").status(), 500);

    let v = usage(&server, &key, "");
    let records = v["records"].as_array().unwrap();
    assert_eq!(records.len(), 4);
    let echo: Vec<&Value> = records.iter().filter(|r| r["function"] == "echo").collect();
    assert_eq!(echo.iter().map(|r| r["request_id"].as_str().unwrap().to_string()).collect::<Vec<_>>(), ids);
    assert_eq!(echo[2]["meters"]["bytes_in"], "3");
    assert_eq!(echo[2]["meters"]["bytes_out"], "3");
    assert_eq!(echo[0]["outcome"], "ok");
    assert_eq!(echo[0]["status"], 200);
    assert!(dec(&echo[0]["meters"]["guest_ms"]) > 0.0);
    assert!(dec(&echo[0]["meters"]["memory_gib_s"]) > 0.0);
    let trap = records.iter().find(|r| r["function"] == "hostile").unwrap();
    assert_eq!(trap["outcome"], "trap");
    assert_eq!(trap["status"], 500);

    let bill: Value = server.get("/v1/billing", Some(&key)).json().unwrap();
    assert_eq!(bill["tenant"], "acme");
    assert_eq!(bill["currency"], "USD");
    let lines = bill["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 20, "10 meters x 2 functions");
    let line = |f: &str, m: &str| lines.iter().find(|l| l["function"] == f && l["meter"] == m).unwrap().clone();
    assert_eq!(line("echo", "invocations")["quantity"], "3");
    assert_eq!(line("echo", "invocations")["unit_price"], "0.0000002");
    assert_eq!(line("echo", "invocations")["amount"], "0.0000006");
    assert_eq!(line("echo", "bytes_out")["quantity"], "6");
    assert_eq!(line("hostile", "invocations")["quantity"], "1");
    // amount = quantity x unit_price, total = sum of amounts, exactly (checked in integers of
    // 10^-30 to avoid float error).
    let exact = |s: &Value| -> i128 {
        let s = s.as_str().unwrap();
        let (int, frac) = s.split_once('.').unwrap_or((s, ""));
        assert!(frac.len() <= 30, "{s}");
        let frac = format!("{frac:0<30}");
        int.parse::<i128>().unwrap() * 10i128.pow(30) + frac.parse::<i128>().unwrap()
    };
    for l in lines {
        // quantity x unit_price == amount, in integers: q * 10^30 * p * 10^30 == a * 10^30 * 10^30.
        let (q, p, a) = (exact(&l["quantity"]), exact(&l["unit_price"]), exact(&l["amount"]));
        let qp = (q / 10i128.pow(15)) * (p / 10i128.pow(15));
        assert_eq!(qp, a, "{l}");
    }
    let sum: i128 = lines.iter().map(|l| exact(&l["amount"])).sum();
    assert_eq!(sum, exact(&bill["total"]));
    let total_due = bill["total_due"].as_str().unwrap();
    assert_eq!(total_due.split('.').nth(1).map(str::len), Some(2), "{total_due}");
    let functions = bill["functions"].as_array().unwrap();
    assert_eq!(functions.iter().find(|f| f["function"] == "echo").unwrap()["invocations"], 3);

    let csv = server.get("/v1/billing?format=csv", Some(&key));
    assert!(csv.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
    let csv = csv.text().unwrap();
    let mut rows = csv.lines();
    assert_eq!(rows.next(), Some("function,meter,quantity,unit_price,amount,kind"));
    assert_eq!(rows.count(), 20, "10 meters x 2 functions");
    assert!(csv.contains("echo,invocations,3,0.0000002,0.0000006,function\n"), "{csv}");

    // Per function, and a range with nothing in it.
    let v = usage(&server, &key, "?function=hostile");
    assert_eq!(v["records"].as_array().unwrap().len(), 1);
    let empty: Value = server.get("/v1/billing?from=2020-01-01&to=2020-02-01", Some(&key)).json().unwrap();
    assert_eq!(empty["lines"], json!([]));
    assert_eq!(empty["total"], "0");
    assert_eq!(empty["total_due"], "0.00");
    assert_eq!(empty["from"], "2020-01-01T00:00:00.000000Z");
}

#[test]
fn usage_pages_with_a_cursor() {
    let server = Server::start();
    let key = server.tenant("acme", "standard");
    server.deploy(&key, "echo");
    for i in 0..5 {
        server.invoke(&key, "acme/echo", &i.to_string());
    }
    let mut seen = HashSet::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let q = match &cursor {
            Some(c) => format!("?limit=2&cursor={c}"),
            None => "?limit=2".to_string(),
        };
        let v = usage(&server, &key, &q);
        for r in v["records"].as_array().unwrap() {
            assert!(seen.insert(r["request_id"].as_str().unwrap().to_string()), "a record came twice");
        }
        pages += 1;
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5);
    assert!(pages >= 3);
}

#[test]
fn report_errors_and_who_may_read() {
    let server = Server::start();
    let acme = server.tenant("acme", "standard");
    let other = server.tenant("other", "standard");
    for (query, needle) in [
        ("?from=yesterday", "not a date"),
        ("?from=2026-02-01&to=2026-01-01", "before"),
        ("?format=xml", "unknown format"),
        ("?bogus=1", "invalid query"),
    ] {
        let msg = expect_error(server.get(&format!("/v1/billing{query}"), Some(&acme)), 400);
        assert!(msg.contains(needle), "{query}: {msg}");
    }
    assert!(expect_error(server.get("/v1/usage?limit=0", Some(&acme)), 400).contains("limit"));
    assert!(expect_error(server.get("/v1/usage?cursor=zzz", Some(&acme)), 400).contains("cursor"));
    expect_error(server.get("/v1/billing", None), 401);
    // tenant= is for the admin only; the admin must name an existing tenant.
    expect_error(server.get("/v1/billing?tenant=other", Some(&acme)), 403);
    expect_error(server.get("/v1/usage?tenant=other", Some(&acme)), 403);
    assert!(expect_error(server.get("/v1/billing", Some(ADMIN_KEY)), 400).contains("tenant="));
    expect_error(server.get("/v1/billing?tenant=nobody", Some(ADMIN_KEY)), 404);
    let bill: Value = server.get("/v1/billing?tenant=other", Some(ADMIN_KEY)).json().unwrap();
    assert_eq!(bill["tenant"], "other");
    let own: Value = server.get("/v1/billing?tenant=other", Some(&other)).json().unwrap();
    assert_eq!(own["tenant"], "other");
}

#[test]
fn over_the_rate_is_429_with_retry_after_and_not_billed() {
    // One token a second: however slow the machine, 40 calls cannot refill the burst enough
    // to leave fewer than 10 refused.
    let server = Server::start_with_config(Some("[plans.free]\nrequests_per_second = 1\nburst = 20\n"));
    let key = server.tenant("acme", "free");
    let neighbour = server.tenant("neighbour", "free");
    server.deploy(&key, "echo");
    server.deploy(&neighbour, "echo");
    let (mut ok, mut limited) = (0, 0);
    for _ in 0..40 {
        let resp = server.invoke(&key, "acme/echo", "x");
        match resp.status().as_u16() {
            200 => ok += 1,
            429 => {
                let retry: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
                assert!((1..=2).contains(&retry));
                assert!(expect_error(resp, 429).contains("rate limit of 1 requests/s"));
                limited += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(ok >= 20, "the burst of 20 is admitted: {ok}");
    assert!(limited >= 10, "{limited}");
    // The neighbour has its own quota.
    assert_eq!(server.invoke(&neighbour, "neighbour/echo", "fine").status(), 200);
    let records = usage(&server, &key, "?limit=1000")["records"].as_array().unwrap().len();
    assert_eq!(records, ok, "refused calls are not recorded");
    let metrics = server.get("/metrics", Some(ADMIN_KEY)).text().unwrap();
    assert!(
        metrics.contains(&format!(r#"infercell_refused_total{{tenant="acme",reason="rate"}} {limited}"#)),
        "{metrics}"
    );
}

#[test]
fn over_concurrency_is_429() {
    let server = Server::start_with_config(Some("[plans.free]\nmax_concurrency = 1\n"));
    let key = server.tenant("acme", "free");
    server.deploy(&key, "hostile");
    let url = format!("{}/fn/acme/hostile/loop", server.url);
    let k = key.clone();
    let looping =
        std::thread::spawn(move || reqwest::blocking::Client::new().post(url).bearer_auth(k).send().unwrap().status());
    wait_until("the loop holds the only slot", || server.metric("infercell_active_instances") >= 1.0);
    let resp = server.invoke(&key, "acme/hostile/ok", "");
    assert!(resp.headers().contains_key("retry-after"));
    assert!(expect_error(resp, 429).contains("concurrent"));
    assert_eq!(looping.join().unwrap(), 504);
    assert_eq!(server.invoke(&key, "acme/hostile/ok", "").status(), 200);
}

#[test]
fn a_spent_budget_is_402_and_not_billed() {
    let server = Server::start_with_config(Some("[plans.free]\nmonthly_budget = \"0.0000001\"\n"));
    let key = server.tenant("acme", "free");
    server.deploy(&key, "echo");
    // The first call is admitted (nothing spent yet) and costs more than the budget.
    assert_eq!(server.invoke(&key, "acme/echo", "x").status(), 200);
    let msg = expect_error(server.invoke(&key, "acme/echo", "x"), 402);
    assert!(msg.contains("monthly budget of 0.0000001 USD"), "{msg}");
    expect_error(server.invoke(&key, "acme/echo", "x"), 402);
    assert_eq!(usage(&server, &key, "")["records"].as_array().unwrap().len(), 1);
    // Reports still work for a tenant over budget.
    assert_eq!(server.get("/v1/billing", Some(&key)).status(), 200);
}

#[test]
fn acknowledged_records_survive_kill_9() {
    let mut server = Server::start();
    let key = server.tenant("acme", "standard");
    server.deploy(&key, "echo");
    let mut acknowledged = HashSet::new();
    for i in 0..30 {
        let resp = server.invoke(&key, "acme/echo", &i.to_string());
        assert_eq!(resp.status(), 200);
        acknowledged.insert(resp.headers()["infercell-request-id"].to_str().unwrap().to_string());
    }
    server.kill9();
    server.restart();
    let v = usage(&server, &key, "?limit=1000");
    let stored: HashSet<String> =
        v["records"].as_array().unwrap().iter().map(|r| r["request_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(stored, acknowledged);
    let bill: Value = server.get("/v1/billing", Some(&key)).json().unwrap();
    let inv = bill["lines"].as_array().unwrap().iter().find(|l| l["meter"] == "invocations").unwrap().clone();
    assert_eq!(inv["quantity"], "30");
}

#[test]
fn cli_prints_bills_as_table_json_and_csv() {
    let server = Server::start();
    let key = server.tenant("acme", "standard");
    server.deploy(&key, "echo");
    server.invoke(&key, "acme/echo", "x");
    let table = server.cli(&key, &["billing"]);
    assert!(table.status.success(), "{}", String::from_utf8_lossy(&table.stderr));
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("Bill for acme") && table.contains("TOTAL DUE") && table.contains("invocations"), "{table}");
    let json_out = server.cli(&key, &["billing", "--format", "json"]);
    let bill: Value = serde_json::from_slice(&json_out.stdout).unwrap();
    assert_eq!(bill["tenant"], "acme");
    let csv = server.cli(&key, &["billing", "--format", "csv"]);
    assert!(String::from_utf8_lossy(&csv.stdout).starts_with("function,meter,quantity,unit_price,amount,kind\n"));
    let admin = server.cli(ADMIN_KEY, &["billing", "--tenant", "acme", "--json"]);
    assert!(admin.status.success());
    let usage_out = server.cli(&key, &["usage"]);
    assert!(String::from_utf8_lossy(&usage_out.stdout).contains("echo"));
    let bad = server.cli(&key, &["billing", "--from", "nonsense"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a date"));
}

#[test]
fn kill_9_under_concurrent_load_loses_no_acknowledged_call() {
    let mut server = Server::start();
    let key = server.tenant("acme", "standard");
    server.deploy(&key, "echo");
    let mut acknowledged: HashSet<String> = HashSet::new();
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for round in 0..20 {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let before = answered.load(std::sync::atomic::Ordering::SeqCst);
        let workers: Vec<_> = (0..6)
            .map(|w| {
                let (url, key, stop) = (format!("{}/fn/acme/echo", server.url), key.clone(), stop.clone());
                let answered = answered.clone();
                std::thread::spawn(move || {
                    let client = reqwest::blocking::Client::new();
                    let mut ids = Vec::new();
                    let mut i = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        i += 1;
                        // A killed server fails the request: that call was not acknowledged.
                        if let Ok(resp) = client.post(&url).bearer_auth(&key).body(format!("{round}/{w}/{i}")).send()
                            && resp.status() == 200
                        {
                            let id = resp.headers()["infercell-request-id"].to_str().unwrap().to_string();
                            if resp.text().is_ok() {
                                ids.push(id);
                                answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            }
                        }
                    }
                    ids
                })
            })
            .collect();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // Under load (a few calls answered), then killed at a random moment.
        wait_until("calls are answered", || answered.load(std::sync::atomic::Ordering::SeqCst) >= before + 5);
        std::thread::sleep(std::time::Duration::from_millis(seed % 250));
        server.kill9();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in workers {
            acknowledged.extend(w.join().unwrap());
        }
        server.restart();
    }
    assert!(acknowledged.len() >= 100, "the load ran: {}", acknowledged.len());
    server.stop();

    let db = rusqlite::Connection::open(server.data_dir.join("usage.db")).unwrap();
    let check: String = db.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    let mut stmt = db.prepare("SELECT request_id, invocations FROM usage").unwrap();
    let stored: Vec<(String, i64)> =
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect();
    let unique: HashSet<&String> = stored.iter().map(|(id, _)| id).collect();
    assert_eq!(unique.len(), stored.len(), "no record is duplicated");
    assert!(stored.iter().all(|(_, n)| *n == 1));
    let missing: Vec<&String> = acknowledged.iter().filter(|id| !unique.contains(id)).collect();
    assert!(missing.is_empty(), "{} acknowledged calls have no record", missing.len());
}

#[test]
fn the_done_when_scenario() {
    let mut server = Server::start();
    let a = server.tenant("alpha", "standard");
    let b = server.tenant("beta", "standard");
    server.deploy(&a, "echo");
    server.deploy(&b, "echo");
    for _ in 0..7 {
        assert_eq!(server.invoke(&a, "alpha/echo", "a").status(), 200);
    }
    for _ in 0..3 {
        assert_eq!(server.invoke(&b, "beta/echo", "b").status(), 200);
    }
    expect_error(server.invoke(&a, "alpha/unknown", "a"), 404);
    for _ in 0..5 {
        assert_eq!(server.invoke(&a, "alpha/echo", "a").status(), 200);
    }
    server.kill9();
    server.restart();
    let bill: Value = server.get("/v1/billing", Some(&a)).json().unwrap();
    let lines = bill["lines"].as_array().unwrap();
    assert!(lines.iter().all(|l| l["function"] == "echo"), "the unknown function is not billed");
    let inv = lines.iter().find(|l| l["meter"] == "invocations").unwrap();
    assert_eq!(inv["quantity"], "12");
    let b_bill: Value = server.get("/v1/billing", Some(&b)).json().unwrap();
    let b_inv = b_bill["lines"].as_array().unwrap().iter().find(|l| l["meter"] == "invocations").unwrap().clone();
    assert_eq!(b_inv["quantity"], "3");
    expect_error(server.get("/v1/billing?tenant=alpha", Some(&b)), 403);
    let admin_view: Value = server.get("/v1/billing?tenant=alpha", Some(ADMIN_KEY)).json().unwrap();
    assert_eq!(admin_view["lines"], bill["lines"]);
}

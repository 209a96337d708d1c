//! Usage records: one per admitted invocation, committed before the call is answered.
//!
//! The invoke path hands each finished call's [`UsageRecord`] to [`Metering::record`] and
//! waits for the commit. One writer thread owns the usage database (`usage.db`, WAL) and
//! commits whatever records are queued in one transaction (group commit): under load a batch
//! holds every call that finished while the previous batch was being written, so commits
//! amortise and a call never waits for a timer. WAL with `synchronous = NORMAL` survives a
//! `kill -9` of the server (the committed pages are in the OS); `metering.fsync = true` makes
//! each commit durable against power loss too.
//!
//! Meters are stored as integers (microseconds, bytes, 64 KiB pages x microseconds) so sums
//! are exact; they become decimals only in reports (see [`Meters::quantity`]).

pub mod billing;
pub mod quota;
mod record;

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context as _;
use rusqlite::{Connection, params};
use rust_decimal::Decimal;
use tokio::sync::oneshot;

pub use crate::clock::{now_us, rfc3339_us};
use record::month_key;
pub use record::{Kind, METERS, Meters, Outcome, UsageRecord, month_bounds};

use crate::config::Prices;
use crate::db::Db;

/// How long the writer gathers records under load before committing them as one batch.
const GATHER: std::time::Duration = std::time::Duration::from_micros(500);

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE usage (
    request_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    kind TEXT NOT NULL,
    function TEXT NOT NULL,
    version INTEGER NOT NULL,
    started_us INTEGER NOT NULL,
    ended_us INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    status INTEGER NOT NULL,
    invocations INTEGER NOT NULL,
    guest_us INTEGER NOT NULL,
    fuel INTEGER NOT NULL,
    memory_page_us INTEGER NOT NULL,
    nn_cpu_us INTEGER NOT NULL,
    nn_gpu_us INTEGER NOT NULL,
    bytes_in INTEGER NOT NULL,
    bytes_out INTEGER NOT NULL,
    -- One B-tree, clustered the way every report reads it: a commit touches as few pages as
    -- possible. Request ids are unique (server-made UUIDv7) and a record never changes, so
    -- writing one twice hits the same key and is ignored.
    PRIMARY KEY (tenant, started_us, request_id)
) WITHOUT ROWID;
"#,
    r#"
-- Where each call's inference ran: model nodes on the CPU and on the GPU.
ALTER TABLE usage ADD COLUMN nn_cpu_nodes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage ADD COLUMN nn_gpu_nodes INTEGER NOT NULL DEFAULT 0;
"#,
    r#"
-- Outbound HTTP: requests sent and body bytes moved.
ALTER TABLE usage ADD COLUMN http_requests INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage ADD COLUMN http_bytes INTEGER NOT NULL DEFAULT 0;
"#,
];

struct Pending {
    record: UsageRecord,
    /// The record's cost at the tenant's prices, when the tenant has a budget.
    cost: Option<Decimal>,
    done: oneshot::Sender<Result<(), String>>,
}

/// What the writer thread does: commit records, or answer a tenant's month-to-date spend.
enum Job {
    Commit(Pending),
    Spend { tenant: String, prices: Box<Prices>, now_us: i64, done: oneshot::Sender<Result<Decimal, String>> },
}

/// Month-to-date spend per tenant: (month key, amount). Written only by the writer thread,
/// after each commit and after each sum it makes; read by admission on every budgeted call.
type Spend = std::sync::Arc<std::sync::Mutex<HashMap<String, (i32, Decimal)>>>;

/// The usage store: the group-commit writer and a read connection for reports.
pub struct Metering {
    enabled: bool,
    tx: std::sync::mpsc::Sender<Job>,
    reader: Db,
    spend: Spend,
}

/// Meter sums per (kind, name) over `[from, to)`: what bills and budgets are made of.
pub type Totals = Vec<((Kind, String), Meters)>;

impl Metering {
    /// Opens `path` (creating and migrating it) and starts the writer thread.
    pub fn open(
        path: &Path,
        enabled: bool,
        fsync: bool,
        batch_sizes: prometheus_client::metrics::histogram::Histogram,
    ) -> anyhow::Result<Self> {
        let reader = Db::open_with(path, MIGRATIONS, "NORMAL")?;
        let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", if fsync { "FULL" } else { "NORMAL" })?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Unbounded, but each sender waits for its own commit, so the queue never holds more
        // than the calls in flight.
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let spend = Spend::default();
        let published = spend.clone();
        std::thread::Builder::new()
            .name("infercell-usage".into())
            .spawn(move || writer(conn, rx, batch_sizes, published))?;
        Ok(Self { enabled, tx, reader, spend })
    }

    /// The month-to-date spend of every tenant whose spend was summed this month (tenants with
    /// a budget, once admission has asked).
    pub fn spend_snapshot(&self) -> Vec<(String, Decimal)> {
        let month = month_key(now_us());
        let spend = self.spend.lock().unwrap_or_else(|e| e.into_inner());
        spend.iter().filter(|(_, (m, _))| *m == month).map(|(t, (_, d))| (t.clone(), *d)).collect()
    }

    /// Commits `record` and returns once it is committed. When the tenant has a budget
    /// (`cost` given: the record's cost at its prices), the cost joins the tenant's
    /// month-to-date spend in the same step.
    pub async fn record(&self, record: UsageRecord, cost: Option<Decimal>) -> anyhow::Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Job::Commit(Pending { record, cost, done }))
            .map_err(|_| anyhow::anyhow!("usage writer stopped"))?;
        wait.await.map_err(|_| anyhow::anyhow!("usage writer stopped"))?.map_err(anyhow::Error::msg)?;
        Ok(())
    }

    /// The tenant's spend this calendar month (UTC) at `prices`: every record committed
    /// before this question, exactly once (the writer thread owns both the commits and the
    /// running sums, so no commit can slip between a sum and its cache).
    pub async fn month_to_date(&self, tenant: &str, prices: &Prices) -> anyhow::Result<Decimal> {
        if !self.enabled {
            return Ok(Decimal::ZERO);
        }
        // The hot path: the writer's published sum, which holds every commit it has made.
        let month = month_key(now_us());
        if let Some((m, amount)) = self.spend.lock().unwrap_or_else(|e| e.into_inner()).get(tenant)
            && *m == month
        {
            return Ok(*amount);
        }
        // Not summed yet this month: the writer sums it, between two of its commits.
        let (done, wait) = oneshot::channel();
        let job = Job::Spend { tenant: tenant.to_string(), prices: Box::new(prices.clone()), now_us: now_us(), done };
        self.tx.send(job).map_err(|_| anyhow::anyhow!("usage writer stopped"))?;
        wait.await.map_err(|_| anyhow::anyhow!("usage writer stopped"))?.map_err(anyhow::Error::msg)
    }

    /// Meter sums per (kind, name) over `[from, to)` (microseconds), optionally of one name only.
    pub async fn totals(&self, tenant: &str, from: i64, to: i64, function: Option<String>) -> anyhow::Result<Totals> {
        let tenant = tenant.to_string();
        self.reader.call(move |conn| Ok(totals(conn, &tenant, from, to, function.as_deref())?)).await
    }

    /// Raw records over `[from, to)`, oldest first, after `cursor` (`started_us:request_id`).
    pub async fn records(
        &self,
        tenant: &str,
        from: i64,
        to: i64,
        function: Option<String>,
        cursor: Option<(i64, String)>,
        limit: usize,
    ) -> anyhow::Result<Vec<UsageRecord>> {
        let tenant = tenant.to_string();
        let (after_us, after_id) = cursor.unwrap_or((i64::MIN, String::new()));
        self.reader
            .call(move |conn| {
                let mut stmt = conn.prepare(
                    "SELECT request_id, tenant, kind, function, version, started_us, ended_us, outcome, status,
                            invocations, guest_us, fuel, memory_page_us, nn_cpu_us, nn_gpu_us, bytes_in, bytes_out,
                            http_requests, http_bytes, nn_cpu_nodes, nn_gpu_nodes
                     FROM usage WHERE tenant = ?1 AND started_us >= ?2 AND started_us < ?3
                       AND (?4 IS NULL OR function = ?4)
                       AND (started_us > ?5 OR (started_us = ?5 AND request_id > ?6))
                     ORDER BY started_us, request_id LIMIT ?7",
                )?;
                let rows =
                    stmt.query_map(params![tenant, from, to, function, after_us, after_id, limit as i64], |r| {
                        let kind: String = r.get(2)?;
                        let outcome: String = r.get(7)?;
                        Ok(UsageRecord {
                            request_id: r.get(0)?,
                            tenant: r.get(1)?,
                            kind: Kind::parse(&kind),
                            function: r.get(3)?,
                            version: r.get(4)?,
                            started_us: r.get(5)?,
                            ended_us: r.get(6)?,
                            outcome: Outcome::parse(&outcome),
                            status: r.get(8)?,
                            meters: Meters::from_row(r, 9)?,
                            nn_cpu_nodes: r.get(19)?,
                            nn_gpu_nodes: r.get(20)?,
                        })
                    })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await
    }
}

/// The writer thread: commits queued records in batches (group commit) and keeps each
/// tenant's month-to-date spend.
fn writer(
    mut conn: Connection,
    rx: std::sync::mpsc::Receiver<Job>,
    sizes: prometheus_client::metrics::histogram::Histogram,
    spend: Spend,
) {
    // Under load (the last batch had company), gather for a moment before committing: one
    // wake-up and one transaction then serve every call that finished meanwhile. A lone call
    // commits at once, so an idle server adds no latency.
    let mut busy = false;
    while let Ok(first) = rx.recv() {
        let mut batch = Vec::new();
        let mut questions = Vec::new();
        match first {
            Job::Commit(p) => batch.push(p),
            Job::Spend { .. } => questions.push(first),
        }
        if !batch.is_empty() {
            if busy {
                std::thread::sleep(GATHER);
            }
            while batch.len() < 4096 {
                match rx.try_recv() {
                    Ok(Job::Commit(p)) => batch.push(p),
                    Ok(question) => questions.push(question),
                    Err(_) => break,
                }
            }
            busy = batch.len() > 1;
            sizes.observe(batch.len() as f64);
            let result = write_batch(&mut conn, &batch).map_err(|e| format!("{e:#}"));
            match &result {
                Ok(()) => {
                    let mut spend = spend.lock().unwrap_or_else(|e| e.into_inner());
                    for p in &batch {
                        if let (Some(cost), Some((month, amount))) = (p.cost, spend.get_mut(&p.record.tenant))
                            && *month == month_key(p.record.started_us)
                        {
                            *amount += cost;
                        }
                    }
                }
                Err(e) => tracing::error!(error = %e, records = batch.len(), "usage commit failed"),
            }
            for p in batch {
                let _ = p.done.send(result.clone());
            }
        }
        for question in questions {
            if let Job::Spend { tenant, prices, now_us, done } = question {
                let month = month_key(now_us);
                let known = spend.lock().unwrap_or_else(|e| e.into_inner()).get(&tenant).copied();
                let answer = match known {
                    Some((m, amount)) if m == month => Ok(amount),
                    _ => {
                        let (from, to) = month_bounds(now_us);
                        totals(&conn, &tenant, from, to, None)
                            .map(|t| t.iter().map(|(_, m)| m.cost(&prices)).sum::<Decimal>())
                            .map_err(|e| format!("{e:#}"))
                            .inspect(|amount| {
                                spend
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .insert(tenant.clone(), (month, *amount));
                            })
                    }
                };
                let _ = done.send(answer);
            }
        }
    }
}

/// Meter sums per (kind, name) of `tenant` over `[from, to)`, optionally of one name only.
fn totals(conn: &Connection, tenant: &str, from: i64, to: i64, function: Option<&str>) -> rusqlite::Result<Totals> {
    let mut stmt = conn.prepare_cached(
        "SELECT kind, function, SUM(invocations), SUM(guest_us), SUM(fuel), SUM(memory_page_us),
                SUM(nn_cpu_us), SUM(nn_gpu_us), SUM(bytes_in), SUM(bytes_out),
                SUM(http_requests), SUM(http_bytes)
         FROM usage WHERE tenant = ?1 AND started_us >= ?2 AND started_us < ?3
           AND (?4 IS NULL OR function = ?4)
         GROUP BY function, kind ORDER BY function, kind",
    )?;
    let rows = stmt.query_map(params![tenant, from, to, function], |r| {
        Ok(((Kind::parse(&r.get::<_, String>(0)?), r.get::<_, String>(1)?), Meters::from_row(r, 2)?))
    })?;
    rows.collect()
}

fn write_batch(conn: &mut Connection, batch: &[Pending]) -> anyhow::Result<()> {
    let tx = conn.transaction()?;
    {
        // Keyed by request id: a record written twice is stored once.
        let mut stmt = tx.prepare_cached(
            "INSERT OR IGNORE INTO usage (request_id, tenant, kind, function, version, started_us, ended_us,
                outcome, status, invocations, guest_us, fuel, memory_page_us, nn_cpu_us, nn_gpu_us, bytes_in, bytes_out,
                http_requests, http_bytes, nn_cpu_nodes, nn_gpu_nodes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)",
        )?;
        for Pending { record: r, .. } in batch {
            let m = &r.meters;
            stmt.execute(params![
                r.request_id,
                r.tenant,
                r.kind.as_str(),
                r.function,
                r.version,
                r.started_us,
                r.ended_us,
                r.outcome.as_str(),
                r.status,
                m.invocations,
                m.guest_us,
                m.fuel,
                m.memory_page_us,
                m.nn_cpu_us,
                m.nn_gpu_us,
                m.bytes_in,
                m.bytes_out,
                m.http_requests,
                m.http_bytes,
                r.nn_cpu_nodes,
                r.nn_gpu_nodes
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod fold_tests {
    //! Property test: the bill computed through the database equals an independent fold of
    //! the raw records with the price sheet, over random records and prices.
    use rand::{Rng as _, SeedableRng as _};

    use super::billing::Bill;
    use super::*;
    use crate::config::Config;

    #[tokio::test]
    async fn bill_equals_the_fold_of_raw_records() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let histogram = prometheus_client::metrics::histogram::Histogram::new([1.0].into_iter());
        let metering = Metering::open(&tmp.path().join("usage.db"), true, false, histogram).expect("open");
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for round in 0..20 {
            let mut prices = Config::embedded().plans["free"].prices.clone();
            for meter in METERS {
                let price = Decimal::new(rng.random_range(0..10_000_000), rng.random_range(0..12));
                match meter {
                    "invocations" => prices.invocations = price,
                    "guest_ms" => prices.guest_ms = price,
                    "fuel" => prices.fuel = price,
                    "memory_gib_s" => prices.memory_gib_s = price,
                    "nn_cpu_ms" => prices.nn_cpu_ms = price,
                    "nn_gpu_ms" => prices.nn_gpu_ms = price,
                    "bytes_in" => prices.bytes_in = price,
                    "bytes_out" => prices.bytes_out = price,
                    "http_requests" => prices.http_requests = price,
                    _ => prices.http_bytes = price,
                }
            }
            let tenant = format!("t{round}");
            let mut raw: Vec<UsageRecord> = Vec::new();
            for i in 0..rng.random_range(1..60) {
                let started_us = 1_790_000_000_000_000 + rng.random_range(0..1_000_000_000i64);
                let record = UsageRecord {
                    request_id: format!("{round}-{i}"),
                    tenant: if rng.random_bool(0.8) { tenant.clone() } else { "someone-else".into() },
                    kind: if rng.random_bool(0.5) { Kind::Function } else { Kind::Model },
                    function: ["a", "b", "c"][rng.random_range(0..3)].to_string(),
                    version: 1,
                    started_us,
                    ended_us: started_us + 10,
                    outcome: Outcome::Ok,
                    status: 200,
                    meters: Meters {
                        invocations: 1,
                        guest_us: rng.random_range(0..5_000_000),
                        fuel: rng.random_range(0..1_000_000_000),
                        memory_page_us: rng.random_range(0..8192i64) * rng.random_range(0..30_000_000i64),
                        nn_cpu_us: rng.random_range(0..1_000_000),
                        nn_gpu_us: rng.random_range(0..1_000_000),
                        bytes_in: rng.random_range(0..16 << 20),
                        bytes_out: rng.random_range(0..16 << 20),
                        http_requests: rng.random_range(0..64),
                        http_bytes: rng.random_range(0..64 << 20),
                    },
                    nn_cpu_nodes: rng.random_range(0..100),
                    nn_gpu_nodes: rng.random_range(0..100),
                };
                metering.record(record.clone(), Some(record.meters.cost(&prices))).await.expect("commit");
                raw.push(record);
            }
            let (from, to) = (1_790_000_000_000_000, 1_790_000_000_000_000 + 600_000_000);
            let totals = metering.totals(&tenant, from, to, None).await.expect("totals");
            let bill = Bill::new(&tenant, "USD", String::new(), String::new(), &totals, &prices);

            // The independent fold: sum each function's raw integer meters in range, then price.
            // Keyed (name, kind): the bill's order, so that the exact sums add up in the same order.
            let mut fold: std::collections::BTreeMap<(String, Kind), Meters> = Default::default();
            for r in raw.iter().filter(|r| r.tenant == tenant && r.started_us >= from && r.started_us < to) {
                let m = fold.entry((r.function.clone(), r.kind)).or_default();
                m.invocations += r.meters.invocations;
                m.guest_us += r.meters.guest_us;
                m.fuel += r.meters.fuel;
                m.memory_page_us += r.meters.memory_page_us;
                m.nn_cpu_us += r.meters.nn_cpu_us;
                m.nn_gpu_us += r.meters.nn_gpu_us;
                m.bytes_in += r.meters.bytes_in;
                m.bytes_out += r.meters.bytes_out;
                m.http_requests += r.meters.http_requests;
                m.http_bytes += r.meters.http_bytes;
            }
            let mut expected_total = Decimal::ZERO;
            let mut expected_lines = 0;
            for ((function, kind), m) in &fold {
                for meter in METERS {
                    let line = bill
                        .lines
                        .iter()
                        .find(|l| l.kind == *kind && &l.function == function && l.meter == meter)
                        .expect("a line per function and meter");
                    assert_eq!(line.quantity, m.quantity(meter));
                    assert_eq!(line.amount, m.quantity(meter) * prices.of(meter), "{function} {meter}");
                    expected_total += line.amount;
                    expected_lines += 1;
                }
            }
            assert_eq!(bill.lines.len(), expected_lines);
            assert_eq!(bill.total, expected_total);
        }
    }
}

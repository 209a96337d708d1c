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

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use anyhow::Context as _;
use rusqlite::{Connection, params};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::config::Prices;
use crate::db::Db;

/// How long the writer gathers records under load before committing them as one batch.
const GATHER: std::time::Duration = std::time::Duration::from_micros(500);

/// Every meter, in report order.
pub const METERS: [&str; 8] =
    ["invocations", "guest_ms", "fuel", "memory_gib_s", "nn_cpu_ms", "nn_gpu_ms", "bytes_in", "bytes_out"];

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
];

/// The meters of one call, or the sums over many.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meters {
    pub invocations: i64,
    /// Time in the sandbox, excluding host inference.
    pub guest_us: i64,
    /// Guest instructions.
    pub fuel: i64,
    /// Peak linear memory in 64 KiB pages, times the call's duration in microseconds.
    pub memory_page_us: i64,
    pub nn_cpu_us: i64,
    pub nn_gpu_us: i64,
    pub bytes_in: i64,
    pub bytes_out: i64,
}

/// GiB-seconds per page-microsecond: 2^-14 GiB per 64 KiB page, 10^-6 s per us. Exact.
fn gib_s_per_page_us() -> Decimal {
    Decimal::from_i128_with_scale(6_103_515_625, 20)
}

impl Meters {
    /// The billable quantity of `meter`: milliseconds with microsecond precision, GiB-seconds
    /// to 12 decimals, counts.
    pub fn quantity(&self, meter: &str) -> Decimal {
        match meter {
            "invocations" => Decimal::from(self.invocations),
            "guest_ms" => Decimal::new(self.guest_us, 3),
            "fuel" => Decimal::from(self.fuel),
            // Rounded (half to even) to 10^-12 GiB-s so that quantity x unit price stays within
            // rust_decimal's 28 digits and every amount is exact.
            "memory_gib_s" => (Decimal::from(self.memory_page_us) * gib_s_per_page_us())
                .round_dp_with_strategy(12, rust_decimal::RoundingStrategy::MidpointNearestEven),
            "nn_cpu_ms" => Decimal::new(self.nn_cpu_us, 3),
            "nn_gpu_ms" => Decimal::new(self.nn_gpu_us, 3),
            "bytes_in" => Decimal::from(self.bytes_in),
            "bytes_out" => Decimal::from(self.bytes_out),
            _ => Decimal::ZERO,
        }
    }

    /// Sum over all meters of quantity x unit price (exact).
    pub fn cost(&self, prices: &Prices) -> Decimal {
        METERS.iter().map(|m| self.quantity(m) * prices.of(m)).sum()
    }

    /// The eight meter columns of a row, in [`METERS`] order, starting at column `first`.
    fn from_row(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Self> {
        Ok(Self {
            invocations: r.get(first)?,
            guest_us: r.get(first + 1)?,
            fuel: r.get(first + 2)?,
            memory_page_us: r.get(first + 3)?,
            nn_cpu_us: r.get(first + 4)?,
            nn_gpu_us: r.get(first + 5)?,
            bytes_in: r.get(first + 6)?,
            bytes_out: r.get(first + 7)?,
        })
    }

    /// `meter=quantity` pairs, as in the `infercell-usage` header (formatted from the integers;
    /// this is on every call's path).
    pub fn header_pairs(&self) -> String {
        let ms = |us: i64| {
            if us % 1000 == 0 {
                format!("{}", us / 1000)
            } else {
                format!("{}.{:03}", us / 1000, us % 1000).trim_end_matches('0').to_string()
            }
        };
        format!(
            "invocations={}, guest_ms={}, fuel={}, memory_gib_s={}, nn_cpu_ms={}, nn_gpu_ms={}, bytes_in={}, bytes_out={}",
            self.invocations,
            ms(self.guest_us),
            self.fuel,
            self.quantity("memory_gib_s").normalize(),
            ms(self.nn_cpu_us),
            ms(self.nn_gpu_us),
            self.bytes_in,
            self.bytes_out
        )
    }
}

/// One admitted invocation, as stored and reported.
#[derive(Debug, Clone)]
pub struct UsageRecord {
    pub request_id: String,
    pub tenant: String,
    /// `function` (or `model` for /v2 calls).
    pub kind: &'static str,
    pub function: String,
    pub version: u32,
    pub started_us: i64,
    pub ended_us: i64,
    /// ok, guest_error, trap, timeout, memory_limit, fuel_limit.
    pub outcome: &'static str,
    pub status: u16,
    pub meters: Meters,
    /// Model nodes its inference ran on the CPU and on the GPU.
    pub nn_cpu_nodes: u32,
    pub nn_gpu_nodes: u32,
}

impl UsageRecord {
    /// `nn_cpu_nodes=N, nn_gpu_nodes=M`, as in the `infercell-usage` header.
    pub fn node_pairs(&self) -> String {
        format!("nn_cpu_nodes={}, nn_gpu_nodes={}", self.nn_cpu_nodes, self.nn_gpu_nodes)
    }

    pub fn to_json(&self) -> Value {
        let mut meters = serde_json::Map::new();
        for m in METERS {
            meters.insert(m.to_string(), Value::String(self.meters.quantity(m).normalize().to_string()));
        }
        json!({
            "request_id": self.request_id,
            "tenant": self.tenant,
            "kind": self.kind,
            "function": self.function,
            "version": self.version,
            "started_at": rfc3339_us(self.started_us),
            "ended_at": rfc3339_us(self.ended_us),
            "outcome": self.outcome,
            "status": self.status,
            "meters": meters,
            "nn_nodes": { "cpu": self.nn_cpu_nodes, "gpu": self.nn_gpu_nodes },
        })
    }
}

/// Microseconds since the epoch as RFC 3339 with microseconds.
pub fn rfc3339_us(us: i64) -> String {
    let t =
        time::OffsetDateTime::from_unix_timestamp_nanos(us as i128 * 1000).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"))
        .unwrap_or_default()
}

/// Now, in microseconds since the epoch.
pub fn now_us() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64
}

struct Pending {
    record: UsageRecord,
    done: oneshot::Sender<Result<(), String>>,
}

/// The usage store: the group-commit writer and a read connection for reports.
pub struct Metering {
    enabled: bool,
    tx: std::sync::mpsc::Sender<Pending>,
    reader: Db,
    /// Month-to-date spend per tenant: (month key, amount), for budgets.
    spend: Mutex<HashMap<String, (i32, Decimal)>>,
}

impl Metering {
    /// Opens `path` (creating and migrating it) and starts the writer thread.
    pub fn open(
        path: &Path,
        enabled: bool,
        fsync: bool,
        batch_sizes: prometheus_client::metrics::histogram::Histogram,
    ) -> anyhow::Result<Self> {
        let reader = Db::open_with(path, MIGRATIONS, "NORMAL")?;
        let mut conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", if fsync { "FULL" } else { "NORMAL" })?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Unbounded, but each sender waits for its own commit, so the queue never holds more
        // than the calls in flight.
        let (tx, rx) = std::sync::mpsc::channel::<Pending>();
        let sizes = batch_sizes;
        std::thread::Builder::new().name("infercell-usage".into()).spawn(move || {
            // Under load (the last batch had company), gather for a moment before committing:
            // one wake-up and one transaction then serve every call that finished meanwhile.
            // A lone call commits at once, so an idle server adds no latency.
            let mut busy = false;
            while let Ok(first) = rx.recv() {
                let mut batch = vec![first];
                if busy {
                    std::thread::sleep(GATHER);
                }
                while batch.len() < 4096 {
                    match rx.try_recv() {
                        Ok(p) => batch.push(p),
                        Err(_) => break,
                    }
                }
                busy = batch.len() > 1;
                sizes.observe(batch.len() as f64);
                let result = write_batch(&mut conn, &batch).map_err(|e| format!("{e:#}"));
                if let Err(e) = &result {
                    tracing::error!(error = %e, records = batch.len(), "usage commit failed");
                }
                for p in batch {
                    let _ = p.done.send(result.clone());
                }
            }
        })?;
        Ok(Self { enabled, tx, reader, spend: Mutex::new(HashMap::new()) })
    }

    /// Commits `record` (returns once it is durable) and, when the tenant has a budget
    /// (`prices` given), adds its cost to the tenant's month-to-date spend.
    pub async fn record(&self, record: UsageRecord, prices: Option<&Prices>) -> anyhow::Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let cost = prices.map(|p| record.meters.cost(p)).unwrap_or_default();
        let (month, tenant) = (month_key(record.started_us), record.tenant.clone());
        let (done, wait) = oneshot::channel();
        self.tx.send(Pending { record, done }).map_err(|_| anyhow::anyhow!("usage writer stopped"))?;
        wait.await.map_err(|_| anyhow::anyhow!("usage writer stopped"))?.map_err(anyhow::Error::msg)?;
        if let Ok(mut spend) = self.spend.lock()
            && let Some((m, amount)) = spend.get_mut(&tenant)
            && *m == month
        {
            *amount += cost;
        }
        Ok(())
    }

    /// The tenant's spend this calendar month (UTC) at `prices`.
    pub async fn month_to_date(&self, tenant: &str, prices: &Prices) -> anyhow::Result<Decimal> {
        let now = now_us();
        let month = month_key(now);
        if let Some((m, amount)) = self.spend.lock().ok().and_then(|s| s.get(tenant).cloned())
            && m == month
        {
            return Ok(amount);
        }
        let (from, to) = month_bounds(now);
        let totals = self.totals(tenant, from, to, None).await?;
        let amount: Decimal = totals.iter().map(|(_, m)| m.cost(prices)).sum();
        if let Ok(mut spend) = self.spend.lock() {
            spend.insert(tenant.to_string(), (month, amount));
        }
        Ok(amount)
    }

    /// Meter sums per function over `[from, to)` (microseconds), optionally one function only.
    pub async fn totals(
        &self,
        tenant: &str,
        from: i64,
        to: i64,
        function: Option<String>,
    ) -> anyhow::Result<Vec<(String, Meters)>> {
        let tenant = tenant.to_string();
        self.reader
            .call(move |conn| {
                let mut stmt = conn.prepare(
                    "SELECT function, SUM(invocations), SUM(guest_us), SUM(fuel), SUM(memory_page_us),
                            SUM(nn_cpu_us), SUM(nn_gpu_us), SUM(bytes_in), SUM(bytes_out)
                     FROM usage WHERE tenant = ?1 AND started_us >= ?2 AND started_us < ?3
                       AND (?4 IS NULL OR function = ?4)
                     GROUP BY function ORDER BY function",
                )?;
                let rows = stmt.query_map(params![tenant, from, to, function], |r| {
                    Ok((r.get::<_, String>(0)?, Meters::from_row(r, 1)?))
                })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await
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
                            nn_cpu_nodes, nn_gpu_nodes
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
                            kind: if kind == "model" { "model" } else { "function" },
                            function: r.get(3)?,
                            version: r.get(4)?,
                            started_us: r.get(5)?,
                            ended_us: r.get(6)?,
                            outcome: outcome_str(&outcome),
                            status: r.get(8)?,
                            meters: Meters::from_row(r, 9)?,
                            nn_cpu_nodes: r.get(17)?,
                            nn_gpu_nodes: r.get(18)?,
                        })
                    })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await
    }
}

fn outcome_str(s: &str) -> &'static str {
    match s {
        "ok" => "ok",
        "guest_error" => "guest_error",
        "trap" => "trap",
        "timeout" => "timeout",
        "memory_limit" => "memory_limit",
        "fuel_limit" => "fuel_limit",
        _ => "other",
    }
}

fn write_batch(conn: &mut Connection, batch: &[Pending]) -> anyhow::Result<()> {
    let tx = conn.transaction()?;
    {
        // Keyed by request id: a record written twice is stored once.
        let mut stmt = tx.prepare_cached(
            "INSERT OR IGNORE INTO usage (request_id, tenant, kind, function, version, started_us, ended_us,
                outcome, status, invocations, guest_us, fuel, memory_page_us, nn_cpu_us, nn_gpu_us, bytes_in, bytes_out,
                nn_cpu_nodes, nn_gpu_nodes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
        )?;
        for Pending { record: r, .. } in batch {
            let m = &r.meters;
            stmt.execute(params![
                r.request_id,
                r.tenant,
                r.kind,
                r.function,
                r.version,
                r.started_us,
                r.ended_us,
                r.outcome,
                r.status,
                m.invocations,
                m.guest_us,
                m.fuel,
                m.memory_page_us,
                m.nn_cpu_us,
                m.nn_gpu_us,
                m.bytes_in,
                m.bytes_out,
                r.nn_cpu_nodes,
                r.nn_gpu_nodes
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// `year * 12 + month` of a timestamp (UTC).
fn month_key(us: i64) -> i32 {
    let t =
        time::OffsetDateTime::from_unix_timestamp_nanos(us as i128 * 1000).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.year() * 12 + t.month() as i32
}

/// The calendar month (UTC) containing `us`, as `[start, end)` in microseconds.
pub fn month_bounds(us: i64) -> (i64, i64) {
    let t =
        time::OffsetDateTime::from_unix_timestamp_nanos(us as i128 * 1000).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let start = time::Date::from_calendar_date(t.year(), t.month(), 1).unwrap_or(time::Date::MIN);
    let (ny, nm) = if t.month() == time::Month::December {
        (t.year() + 1, time::Month::January)
    } else {
        (t.year(), t.month().next())
    };
    let end = time::Date::from_calendar_date(ny, nm, 1).unwrap_or(time::Date::MAX);
    let to_us = |d: time::Date| (d.midnight().assume_utc().unix_timestamp_nanos() / 1000) as i64;
    (to_us(start), to_us(end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_are_exact() {
        let m = Meters {
            invocations: 3,
            guest_us: 1234,
            fuel: 99,
            memory_page_us: 16_384 * 1_000_000,
            nn_cpu_us: 1,
            nn_gpu_us: 0,
            bytes_in: 5,
            bytes_out: 7,
        };
        assert_eq!(m.quantity("guest_ms").to_string(), "1.234");
        assert_eq!(m.quantity("nn_cpu_ms").to_string(), "0.001");
        // 16384 pages (1 GiB) for one second.
        assert_eq!(m.quantity("memory_gib_s").normalize().to_string(), "1");
        let one_page_us = Meters { memory_page_us: 1, ..Meters::default() };
        assert_eq!(one_page_us.quantity("memory_gib_s").to_string(), "0.000000000061");
    }

    #[test]
    fn header_pairs_match_the_quantities() {
        let m = Meters {
            invocations: 1,
            guest_us: 1_230,
            fuel: 5,
            memory_page_us: 16_384,
            nn_cpu_us: 2_000,
            ..Meters::default()
        };
        let header = m.header_pairs();
        for meter in METERS {
            assert!(header.contains(&format!("{meter}={}", m.quantity(meter).normalize())), "{meter} in {header}");
        }
    }

    #[test]
    fn month_bounds_cover_the_month() {
        // 2026-12-15T00:00:00Z
        let (from, to) = month_bounds(1_797_292_800_000_000);
        assert_eq!(rfc3339_us(from), "2026-12-01T00:00:00.000000Z");
        assert_eq!(rfc3339_us(to), "2027-01-01T00:00:00.000000Z");
    }
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
                    _ => prices.bytes_out = price,
                }
            }
            let tenant = format!("t{round}");
            let mut raw: Vec<UsageRecord> = Vec::new();
            for i in 0..rng.random_range(1..60) {
                let started_us = 1_790_000_000_000_000 + rng.random_range(0..1_000_000_000i64);
                let record = UsageRecord {
                    request_id: format!("{round}-{i}"),
                    tenant: if rng.random_bool(0.8) { tenant.clone() } else { "someone-else".into() },
                    kind: "function",
                    function: ["a", "b", "c"][rng.random_range(0..3)].to_string(),
                    version: 1,
                    started_us,
                    ended_us: started_us + 10,
                    outcome: "ok",
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
                    },
                    nn_cpu_nodes: rng.random_range(0..100),
                    nn_gpu_nodes: rng.random_range(0..100),
                };
                metering.record(record.clone(), Some(&prices)).await.expect("commit");
                raw.push(record);
            }
            let (from, to) = (1_790_000_000_000_000, 1_790_000_000_000_000 + 600_000_000);
            let totals = metering.totals(&tenant, from, to, None).await.expect("totals");
            let bill = Bill::new(&tenant, "USD", String::new(), String::new(), &totals, &prices);

            // The independent fold: sum each function's raw integer meters in range, then price.
            let mut fold: std::collections::BTreeMap<String, Meters> = Default::default();
            for r in raw.iter().filter(|r| r.tenant == tenant && r.started_us >= from && r.started_us < to) {
                let m = fold.entry(r.function.clone()).or_default();
                m.invocations += r.meters.invocations;
                m.guest_us += r.meters.guest_us;
                m.fuel += r.meters.fuel;
                m.memory_page_us += r.meters.memory_page_us;
                m.nn_cpu_us += r.meters.nn_cpu_us;
                m.nn_gpu_us += r.meters.nn_gpu_us;
                m.bytes_in += r.meters.bytes_in;
                m.bytes_out += r.meters.bytes_out;
            }
            let mut expected_total = Decimal::ZERO;
            let mut expected_lines = 0;
            for (function, m) in &fold {
                for meter in METERS {
                    let line = bill
                        .lines
                        .iter()
                        .find(|l| &l.function == function && l.meter == meter)
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

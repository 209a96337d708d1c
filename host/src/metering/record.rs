//! What one call is billed for: its meters, kind and outcome ([`UsageRecord`]), and the time
//! helpers reports and budgets share. Meters are integers (microseconds, bytes, 64 KiB pages x
//! microseconds) so that sums are exact; they become decimals only in reports
//! ([`Meters::quantity`]).

use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::clock::rfc3339_us;
use crate::config::Prices;

/// Every meter, in report order.
pub const METERS: [&str; 10] = [
    "invocations",
    "guest_ms",
    "fuel",
    "memory_gib_s",
    "nn_cpu_ms",
    "nn_gpu_ms",
    "bytes_in",
    "bytes_out",
    "http_requests",
    "http_bytes",
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
    /// Outbound HTTP requests the function sent.
    pub http_requests: i64,
    /// Outbound HTTP body bytes, sent and received.
    pub http_bytes: i64,
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
            "http_requests" => Decimal::from(self.http_requests),
            "http_bytes" => Decimal::from(self.http_bytes),
            _ => Decimal::ZERO,
        }
    }

    /// Sum over all meters of quantity x unit price (exact).
    pub fn cost(&self, prices: &Prices) -> Decimal {
        METERS.iter().map(|m| self.quantity(m) * prices.of(m)).sum()
    }

    /// The ten meter columns of a row, in [`METERS`] order, starting at column `first`.
    pub(super) fn from_row(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Self> {
        Ok(Self {
            invocations: r.get(first)?,
            guest_us: r.get(first + 1)?,
            fuel: r.get(first + 2)?,
            memory_page_us: r.get(first + 3)?,
            nn_cpu_us: r.get(first + 4)?,
            nn_gpu_us: r.get(first + 5)?,
            bytes_in: r.get(first + 6)?,
            bytes_out: r.get(first + 7)?,
            http_requests: r.get(first + 8)?,
            http_bytes: r.get(first + 9)?,
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
            "invocations={}, guest_ms={}, fuel={}, memory_gib_s={}, nn_cpu_ms={}, nn_gpu_ms={}, bytes_in={}, bytes_out={}, http_requests={}, http_bytes={}",
            self.invocations,
            ms(self.guest_us),
            self.fuel,
            self.quantity("memory_gib_s").normalize(),
            ms(self.nn_cpu_us),
            ms(self.nn_gpu_us),
            self.bytes_in,
            self.bytes_out,
            self.http_requests,
            self.http_bytes
        )
    }
}

/// What was called: a function (HTTP handler or tensor function) or a model. A model and a
/// function of the same name are different things on a bill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Function,
    Model,
    /// A copy of a call sent to a release's mirror version: run and billed, its answer dropped.
    Shadow,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Function => "function",
            Kind::Model => "model",
            Kind::Shadow => "shadow",
        }
    }

    pub(super) fn parse(s: &str) -> Self {
        match s {
            "model" => Kind::Model,
            "shadow" => Kind::Shadow,
            _ => Kind::Function,
        }
    }
}

/// How a call that ran ended, as stored in its usage record and counted in
/// `infercell_invocations_total`. Refusals (nothing ran) have no outcome: they are not billed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The function or model answered.
    Ok,
    /// The function returned its own error value (bad-request, not-found, internal).
    GuestError,
    /// The sandbox trapped (a panic, a stack overflow, a dropped resource, ...).
    Trap,
    /// Cut by the function's timeout.
    Timeout,
    MemoryLimit,
    FuelLimit,
    /// The inference failed, or the answer was invalid (a model's error, a predictor's bad
    /// tensor, a response the host cannot send).
    Error,
}

impl Outcome {
    /// Every outcome, in label order.
    pub const ALL: [Outcome; 7] = [
        Outcome::Ok,
        Outcome::GuestError,
        Outcome::Trap,
        Outcome::Timeout,
        Outcome::MemoryLimit,
        Outcome::FuelLimit,
        Outcome::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::GuestError => "guest_error",
            Outcome::Trap => "trap",
            Outcome::Timeout => "timeout",
            Outcome::MemoryLimit => "memory_limit",
            Outcome::FuelLimit => "fuel_limit",
            Outcome::Error => "error",
        }
    }

    /// The outcome stored as `s` (older rows may hold labels no longer made: `error`).
    pub(super) fn parse(s: &str) -> Self {
        Self::ALL.into_iter().find(|o| o.as_str() == s).unwrap_or(Outcome::Error)
    }
}

/// One admitted invocation, as stored and reported.
#[derive(Debug, Clone)]
pub struct UsageRecord {
    pub request_id: String,
    pub tenant: String,
    pub kind: Kind,
    /// The function's or the model's name.
    pub function: String,
    pub version: u32,
    pub started_us: i64,
    pub ended_us: i64,
    pub outcome: Outcome,
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
            "kind": self.kind.as_str(),
            "function": self.function,
            "version": self.version,
            "started_at": rfc3339_us(self.started_us),
            "ended_at": rfc3339_us(self.ended_us),
            "outcome": self.outcome.as_str(),
            "status": self.status,
            "meters": meters,
            "nn_nodes": { "cpu": self.nn_cpu_nodes, "gpu": self.nn_gpu_nodes },
        })
    }
}

/// `year * 12 + month` of a timestamp (UTC).
pub(super) fn month_key(us: i64) -> i32 {
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
            http_requests: 2,
            http_bytes: 11,
        };
        assert_eq!(m.quantity("http_bytes").to_string(), "11");
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

//! Each function's recent log lines (guest `log` calls, stdout and stderr), kept in memory
//! per function as a ring of a configured number of lines and bytes (whichever is reached
//! first: a ring of 64 KiB lines is bounded by its bytes, not its count).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;

use crate::runtime::LogLevel;

#[derive(Debug, Clone, Serialize)]
pub struct LogEntry {
    pub time: String,
    pub request_id: String,
    pub version: u32,
    pub level: LogLevel,
    pub message: String,
}

pub struct FunctionLogs {
    cap: usize,
    cap_bytes: usize,
    rings: Mutex<HashMap<(String, String), Ring>>,
}

#[derive(Default)]
struct Ring {
    lines: VecDeque<LogEntry>,
    bytes: usize,
}

/// What a line holds in memory: its message and its fields.
fn weight(entry: &LogEntry) -> usize {
    entry.message.len() + entry.request_id.len() + entry.time.len() + 64
}

impl FunctionLogs {
    pub fn new(cap: usize, cap_bytes: usize) -> Self {
        Self { cap, cap_bytes, rings: Mutex::new(HashMap::new()) }
    }

    pub fn append(&self, tenant: &str, function: &str, entries: impl IntoIterator<Item = LogEntry>) {
        let Ok(mut rings) = self.rings.lock() else { return };
        let ring = rings.entry((tenant.to_string(), function.to_string())).or_default();
        for entry in entries {
            ring.bytes += weight(&entry);
            ring.lines.push_back(entry);
            while ring.lines.len() > self.cap || (ring.bytes > self.cap_bytes && ring.lines.len() > 1) {
                if let Some(old) = ring.lines.pop_front() {
                    ring.bytes -= weight(&old);
                }
            }
        }
    }

    /// The newest `limit` lines, oldest first.
    pub fn tail(&self, tenant: &str, function: &str, limit: usize) -> Vec<LogEntry> {
        let Ok(rings) = self.rings.lock() else { return Vec::new() };
        match rings.get(&(tenant.to_string(), function.to_string())) {
            Some(ring) => ring.lines.iter().skip(ring.lines.len().saturating_sub(limit)).cloned().collect(),
            None => Vec::new(),
        }
    }

    pub fn clear(&self, tenant: &str, function: &str) {
        if let Ok(mut rings) = self.rings.lock() {
            rings.remove(&(tenant.to_string(), function.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(message: String) -> LogEntry {
        LogEntry { time: String::new(), request_id: String::new(), version: 1, level: LogLevel::Info, message }
    }

    #[test]
    fn rings_are_bounded_by_lines_and_by_bytes() {
        let logs = FunctionLogs::new(1000, 256 << 10);
        logs.append("t", "f", (0..1000).map(|i| line(format!("{}{i}", "x".repeat(65536)))));
        let kept = logs.tail("t", "f", 1000);
        assert!(kept.len() <= 4, "1000 lines of 64 KiB are held to 256 KiB: {} kept", kept.len());
        assert!(kept.last().is_some_and(|l| l.message.ends_with("999")), "the newest lines stay");
        logs.append("t", "g", (0..2000).map(|i| line(i.to_string())));
        assert_eq!(logs.tail("t", "g", 5000).len(), 1000);
    }
}

//! Each function's recent log lines (guest `log` calls, stdout and stderr), kept in memory
//! per function as a ring of a configured number of lines.

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
    rings: Mutex<HashMap<(String, String), VecDeque<LogEntry>>>,
}

impl FunctionLogs {
    pub fn new(cap: usize) -> Self {
        Self { cap, rings: Mutex::new(HashMap::new()) }
    }

    pub fn append(&self, tenant: &str, function: &str, entries: impl IntoIterator<Item = LogEntry>) {
        let Ok(mut rings) = self.rings.lock() else { return };
        let ring = rings.entry((tenant.to_string(), function.to_string())).or_default();
        for entry in entries {
            if ring.len() == self.cap {
                ring.pop_front();
            }
            ring.push_back(entry);
        }
    }

    /// The newest `limit` lines, oldest first.
    pub fn tail(&self, tenant: &str, function: &str, limit: usize) -> Vec<LogEntry> {
        let Ok(rings) = self.rings.lock() else { return Vec::new() };
        match rings.get(&(tenant.to_string(), function.to_string())) {
            Some(ring) => ring.iter().skip(ring.len().saturating_sub(limit)).cloned().collect(),
            None => Vec::new(),
        }
    }

    pub fn clear(&self, tenant: &str, function: &str) {
        if let Ok(mut rings) = self.rings.lock() {
            rings.remove(&(tenant.to_string(), function.to_string()));
        }
    }
}

//! The clocks, once each: microseconds since the epoch (usage records, budgets), seconds (key
//! expiry) and RFC 3339 text (every timestamp column and API field).

/// Now, in microseconds since the epoch.
pub fn now_us() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64
}

/// Now, in whole seconds since the epoch.
pub fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Now, in milliseconds since the epoch.
pub fn now_ms() -> u64 {
    (now_us() / 1000).max(0) as u64
}

/// The current time as RFC 3339 (UTC), the format of every timestamp column.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// Seconds since the epoch as RFC 3339 (UTC).
pub fn rfc3339(unix: i64) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp(unix).ok()?.format(&time::format_description::well_known::Rfc3339).ok()
}

/// Microseconds since the epoch as RFC 3339 with microseconds.
pub fn rfc3339_us(us: i64) -> String {
    let t =
        time::OffsetDateTime::from_unix_timestamp_nanos(us as i128 * 1000).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"))
        .unwrap_or_default()
}

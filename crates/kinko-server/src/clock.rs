//! Wall-clock time in milliseconds. Domain code takes `now_ms` as an argument; only the edges read it.

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

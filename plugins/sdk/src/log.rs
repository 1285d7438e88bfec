//! Logging to the host from inside the sandbox.
//!
//! The host rate-limits these per plugin instance and prints them with the
//! plugin's name. Natively (unit tests) they go to standard error.

pub use crate::bindings::tickfold::plugin::log::Level;

/// Logs `message` at `level`.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    crate::bindings::tickfold::plugin::log::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[{level:?}] {message}");
}

/// Logs at debug level.
pub fn debug(message: &str) {
    log(Level::Debug, message)
}

/// Logs at info level.
pub fn info(message: &str) {
    log(Level::Info, message)
}

/// Logs at warn level.
pub fn warn(message: &str) {
    log(Level::Warn, message)
}

/// Logs at error level.
pub fn error(message: &str) {
    log(Level::Error, message)
}

/// Counts occurrences of a repeated problem (a skipped value, a late trade)
/// and says which ones to log: the 1st, 10th, 100th, ... so a stream full
/// of bad values cannot flood the log, yet the count keeps being reported.
///
/// ```
/// let mut skipped = tickfold_sdk::log::Occurrences::default();
/// let logged: Vec<u64> = (0..150).filter_map(|_| skipped.count()).collect();
/// assert_eq!(logged, [1, 10, 100]);
/// assert_eq!(skipped.total(), 150);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Occurrences(u64);

impl Occurrences {
    /// Counts one more occurrence; `Some(total so far)` when this one
    /// should be logged (the total is 1, 10, 100, ...), else `None`.
    pub fn count(&mut self) -> Option<u64> {
        self.0 += 1;
        is_sparse(self.0).then_some(self.0)
    }

    /// How many occurrences were counted.
    pub fn total(&self) -> u64 {
        self.0
    }
}

/// True for 1, 10, 100, ...: the occurrences of a repeated problem that
/// [`Occurrences`] logs.
pub fn is_sparse(n: u64) -> bool {
    let mut m = n;
    while m >= 10 && m.is_multiple_of(10) {
        m /= 10;
    }
    m == 1
}

/// Warns that a non-finite value was skipped, in the words every indicator
/// plugin uses. Call it when [`Occurrences::count`] returns `Some(so_far)`.
pub fn skipped_non_finite(plugin: &str, field: &str, value: f64, key: &str, ts: crate::Millis, so_far: u64) {
    warn(&format!(
        "{plugin}: skipped non-finite `{field}` {value} of key `{key}` at ts {ts}; {so_far} skipped so far (logged at \
         the 1st, 10th, 100th, ...)"
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_logging_is_at_powers_of_ten() {
        let logged: Vec<u64> = (1..=2_000).filter(|&n| is_sparse(n)).collect();
        assert_eq!(logged, [1, 10, 100, 1_000]);
        assert!(!is_sparse(0));
        assert!(is_sparse(10_000_000_000_000_000_000));
    }

    #[test]
    fn occurrences_count_every_one_and_report_the_sparse_ones() {
        let mut o = Occurrences::default();
        let logged: Vec<(u64, u64)> = (1..=1_000).filter_map(|i| o.count().map(|n| (i, n))).collect();
        assert_eq!(logged, [(1, 1), (10, 10), (100, 100), (1_000, 1_000)]);
        assert_eq!(o.total(), 1_000);
    }
}

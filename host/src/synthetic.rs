//! A seeded synthetic market: trades whose prices follow a geometric
//! Brownian motion per symbol, for demos, tests and benchmarks (and the
//! synthetic feed of `tickfold produce`).
//!
//! Everything is a pure function of the seed, so a test or a benchmark run
//! twice sees the same trades.

/// splitmix64: a tiny, well-distributed seeded generator.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        assert!(hi > lo, "empty range {lo}..{hi}");
        lo + (self.next_u64() % (hi - lo) as u64) as i64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u = self.unit().max(f64::MIN_POSITIVE);
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    /// Exponential with mean `mean`.
    pub fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
}

/// One synthetic trade; `symbol` indexes [`Market::symbols`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Trade {
    /// Index into the market's symbols.
    pub symbol: usize,
    /// Event time, ms since the Unix epoch.
    pub ts: i64,
    /// Price.
    pub price: f64,
    /// Size, in whole units (lots of 1 to a few thousand).
    pub size: f64,
}

/// Milliseconds in a (trading) year, for the volatility's time scale.
const YEAR_MS: f64 = 365.25 * 86_400_000.0;

/// A market of symbols trading at a total rate, prices following geometric
/// Brownian motion (annual volatility 20–80 %, drift 0), trade arrivals a
/// Poisson process, sizes log-normal.
#[derive(Clone, Debug)]
pub struct Market {
    symbols: Vec<String>,
    prices: Vec<f64>,
    vols: Vec<f64>,
    rng: Rng,
    now_ms: f64,
    mean_gap_ms: f64,
}

impl Market {
    /// `rate_per_sec` trades per second in total, starting at `start_ms`.
    pub fn new(seed: u64, symbols: &[&str], start_ms: i64, rate_per_sec: f64) -> Self {
        let mut rng = Rng::new(seed);
        let prices = symbols.iter().map(|_| 10.0 * (1.0 + 99.0 * rng.unit())).collect();
        let vols = symbols.iter().map(|_| 0.2 + 0.6 * rng.unit()).collect();
        Market {
            symbols: symbols.iter().map(|s| s.to_string()).collect(),
            prices,
            vols,
            rng,
            now_ms: start_ms as f64,
            mean_gap_ms: 1000.0 / rate_per_sec.max(1e-9),
        }
    }

    /// The symbols, as given.
    pub fn symbols(&self) -> &[String] {
        &self.symbols
    }
}

impl Iterator for Market {
    type Item = Trade;

    fn next(&mut self) -> Option<Trade> {
        let gap = self.rng.exponential(self.mean_gap_ms);
        self.now_ms += gap;
        let s = self.rng.range(0, self.symbols.len() as i64) as usize;
        // The symbol's own time since its last trade is about n × gap; use
        // the market gap × n symbols as its step so volatility is per symbol.
        let dt_years = (gap * self.symbols.len() as f64) / YEAR_MS;
        let sigma = self.vols[s];
        self.prices[s] *= (-0.5 * sigma * sigma * dt_years + sigma * dt_years.sqrt() * self.rng.normal()).exp();
        let size = (self.rng.normal() * 1.2 + 3.0).exp().round().clamp(1.0, 5_000.0);
        Some(Trade { symbol: s, ts: self.now_ms as i64, price: self.prices[s], size })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_market() {
        let a: Vec<Trade> = Market::new(1, &["A", "B"], 0, 1000.0).take(100).collect();
        let b: Vec<Trade> = Market::new(1, &["A", "B"], 0, 1000.0).take(100).collect();
        assert_eq!(a, b);
        assert_ne!(a, Market::new(2, &["A", "B"], 0, 1000.0).take(100).collect::<Vec<_>>());
    }

    #[test]
    fn rate_times_and_prices_are_plausible() {
        let trades: Vec<Trade> = Market::new(3, &["A", "B", "C"], 0, 1000.0).take(100_000).collect();
        assert!(trades.windows(2).all(|w| w[0].ts <= w[1].ts));
        // 100k trades at 1000/s take about 100 s.
        let span_s = trades.last().unwrap().ts as f64 / 1000.0;
        assert!((90.0..110.0).contains(&span_s), "{span_s}");
        assert!(trades.iter().all(|t| t.price > 0.0 && t.size >= 1.0));
        for s in 0..3 {
            assert!(trades.iter().filter(|t| t.symbol == s).count() > 30_000);
        }
    }
}

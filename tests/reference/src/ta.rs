//! References for TA-Lib's indicators, as batch functions over a whole
//! series.
//!
//! Each function follows the C source of the TA-Lib function it names
//! (`ta_SMA.c`, `ta_EMA.c`, `ta_RSI.c`, `ta_MACD.c`, `ta_BBANDS.c`,
//! `ta_STDDEV.c`/`ta_VAR.c`) with the default settings: no unstable period
//! and the default (not Metastock) compatibility. Outputs are aligned with
//! the input: `out[i]` belongs to `input[i]`, and is `None` during the
//! warm-up (TA-Lib's "lookback") where TA-Lib writes nothing.
//!
//! Where TA-Lib keeps a running total (SMA, variance), these recompute each
//! window from scratch: same definition, no drift, and easier to check by
//! eye. Two deliberate differences, both scale-dependent thresholds that
//! make TA-Lib wrong for prices around 1e-6:
//! - RSI: TA-Lib returns 0 when `avgGain + avgLoss` is within 1e-8 of zero;
//!   here only an exact zero does.
//! - Deviation: TA-Lib returns 0 when the variance is below 1e-8; here it
//!   does only when the variance is 0.

/// `TA_SMA`: the mean of `input[i + 1 - period ..= i]`, from `i = period - 1`.
pub fn sma(input: &[f64], period: usize) -> Vec<Option<f64>> {
    assert!(period >= 1, "period must be at least 1");
    let mut out = vec![None; input.len()];
    for i in period - 1..input.len() {
        let window = &input[i + 1 - period..=i];
        out[i] = Some(window.iter().sum::<f64>() / period as f64);
    }
    out
}

/// `TA_EMA`: `k = 2 / (period + 1)`; the first output, at `period - 1`, is
/// the mean of the first `period` values; then
/// `ema[i] = (input[i] - ema[i - 1]) * k + ema[i - 1]`.
pub fn ema(input: &[f64], period: usize) -> Vec<Option<f64>> {
    ema_starting_at(input, period, 0)
}

/// TA-Lib's internal `TA_INT_EMA(startIdx = start, ...)`, which `TA_MACD`
/// calls: the first output is at `max(start, period - 1)` and is the mean of
/// the `period` values ending there; then the same recursion as [`ema`].
pub fn ema_starting_at(input: &[f64], period: usize, start: usize) -> Vec<Option<f64>> {
    assert!(period >= 1, "period must be at least 1");
    let k = 2.0 / ((period + 1) as f64);
    let first = start.max(period - 1);
    let mut out = vec![None; input.len()];
    if first >= input.len() {
        return out;
    }
    let mut prev = input[first + 1 - period..=first].iter().sum::<f64>() / period as f64;
    out[first] = Some(prev);
    for i in first + 1..input.len() {
        prev = ((input[i] - prev) * k) + prev;
        out[i] = Some(prev);
    }
    out
}

/// `TA_RSI`: the first output is at index `period`. The first average gain
/// (loss) is the sum of the gains (losses, as positive numbers) of the first
/// `period` changes divided by `period`; each later change updates them as
/// `avg = (avg * (period - 1) + current) / period`.
/// `RSI = 100 * (gain / (gain + loss))`, or 0 when `gain + loss` is 0.
pub fn rsi(input: &[f64], period: usize) -> Vec<Option<f64>> {
    assert!(period >= 1, "period must be at least 1");
    let mut out = vec![None; input.len()];
    if input.len() <= period {
        return out;
    }
    let rsi_of = |gain: f64, loss: f64| if gain + loss != 0.0 { 100.0 * (gain / (gain + loss)) } else { 0.0 };
    let (mut gain, mut loss) = (0.0, 0.0);
    for i in 1..=period {
        let change = input[i] - input[i - 1];
        if change < 0.0 {
            loss -= change;
        } else {
            gain += change;
        }
    }
    gain /= period as f64;
    loss /= period as f64;
    out[period] = Some(rsi_of(gain, loss));
    for i in period + 1..input.len() {
        let change = input[i] - input[i - 1];
        gain *= (period - 1) as f64;
        loss *= (period - 1) as f64;
        if change < 0.0 {
            loss -= change;
        } else {
            gain += change;
        }
        gain /= period as f64;
        loss /= period as f64;
        out[i] = Some(rsi_of(gain, loss));
    }
    out
}

/// MACD as the composition of standalone EMAs: `macd = ema(fast) -
/// ema(slow)` from index `slow - 1`, `signal = ema(signal)` of that line,
/// `hist = macd - signal`. Outputs `(macd, signal, hist)` from index
/// `slow - 1 + signal - 1`.
pub fn macd(input: &[f64], fast: usize, slow: usize, signal: usize) -> Vec<Option<(f64, f64, f64)>> {
    assert!(1 <= fast && fast < slow, "need 1 <= fast < slow");
    macd_of(&ema(input, fast), &ema(input, slow), slow, signal)
}

/// `TA_MACD` itself: as [`macd`], but `TA_INT_MACD` asks for the fast EMA
/// from the slow one's first index (`TA_INT_EMA(startIdx = slow - 1)`), so
/// the fast EMA is seeded with the mean of `input[slow - fast ..= slow - 1]`.
pub fn macd_talib(input: &[f64], fast: usize, slow: usize, signal: usize) -> Vec<Option<(f64, f64, f64)>> {
    assert!(1 <= fast && fast < slow, "need 1 <= fast < slow");
    macd_of(&ema_starting_at(input, fast, slow - 1), &ema(input, slow), slow, signal)
}

fn macd_of(
    fast: &[Option<f64>],
    slow: &[Option<f64>],
    slow_period: usize,
    signal: usize,
) -> Vec<Option<(f64, f64, f64)>> {
    let mut out = vec![None; fast.len()];
    if fast.len() < slow_period {
        return out;
    }
    let line: Vec<f64> = (slow_period - 1..fast.len()).map(|i| fast[i].unwrap() - slow[i].unwrap()).collect();
    let signal_line = ema(&line, signal);
    for (j, (m, s)) in line.iter().zip(signal_line).enumerate() {
        if let Some(s) = s {
            out[slow_period - 1 + j] = Some((*m, s, m - s));
        }
    }
    out
}

/// `TA_STDDEV` with `nbDev = 1`: the population standard deviation
/// (divided by `period`, not `period - 1`) of `input[i + 1 - period ..= i]`,
/// from `i = period - 1`. TA-Lib computes `sqrt(E[x²] - E[x]²)` from running
/// sums; this computes `sqrt(mean((x - mean)²))` per window, the same
/// quantity without the cancellation.
pub fn stddev(input: &[f64], period: usize) -> Vec<Option<f64>> {
    assert!(period >= 1, "period must be at least 1");
    let mut out = vec![None; input.len()];
    for i in period - 1..input.len() {
        let window = &input[i + 1 - period..=i];
        let mean = window.iter().sum::<f64>() / period as f64;
        let var = window.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / period as f64;
        out[i] = Some(var.sqrt());
    }
    out
}

/// `TA_BBANDS` with the SMA as its moving average and the same `k` up and
/// down: `(middle, upper, lower)` with `middle = sma`, and
/// `upper/lower = middle ± stddev * k`, from index `period - 1`.
pub fn bbands(input: &[f64], period: usize, k: f64) -> Vec<Option<(f64, f64, f64)>> {
    sma(input, period)
        .into_iter()
        .zip(stddev(input, period))
        .map(|(m, d)| Some((m?, m? + d? * k, m? - d? * k)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first<T>(out: &[Option<T>]) -> Option<usize> {
        out.iter().position(Option::is_some)
    }

    #[test]
    fn warm_up_lengths_are_talibs_lookbacks() {
        let xs: Vec<f64> = (0..60).map(|i| 10.0 + ((i * 7) % 11) as f64).collect();
        assert_eq!(first(&sma(&xs, 5)), Some(4));
        assert_eq!(first(&ema(&xs, 12)), Some(11));
        assert_eq!(first(&rsi(&xs, 14)), Some(14));
        assert_eq!(first(&macd(&xs, 12, 26, 9)), Some(33));
        assert_eq!(first(&macd_talib(&xs, 12, 26, 9)), Some(33));
        assert_eq!(first(&bbands(&xs, 20, 2.0)), Some(19));
        assert!(rsi(&xs[..14], 14).iter().all(Option::is_none));
    }

    #[test]
    fn small_examples_by_hand() {
        assert_eq!(ema(&[1.0, 2.0, 3.0, 4.0], 3), vec![None, None, Some(2.0), Some(3.0)]);
        // Started at 3: seeded with mean(1, 2, 3) = 2, not mean(4, 1, 2); then (8 - 2) * 0.5 + 2.
        assert_eq!(ema_starting_at(&[4.0, 1.0, 2.0, 3.0, 8.0], 3, 3), vec![None, None, None, Some(2.0), Some(5.0)]);
        // Changes +1, -1: RSI 50; then +2: gain 1.25, loss 0.25.
        let r = rsi(&[1.0, 2.0, 1.0, 3.0], 2);
        assert_eq!(r[2], Some(50.0));
        assert!((r[3].unwrap() - 100.0 * 1.25 / 1.5).abs() < 1e-12);
        assert_eq!(rsi(&[3.0; 5], 2)[4], Some(0.0));
        let b = bbands(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0], 8, 2.0);
        assert_eq!(b[7], Some((5.0, 9.0, 1.0)));
    }

    #[test]
    fn talib_macd_differs_only_in_the_fast_seed() {
        let xs: Vec<f64> = (0..80).map(|i| 100.0 + (i as f64 * 0.7).sin() * 5.0 + i as f64 * 0.1).collect();
        let (s, t) = (macd(&xs, 12, 26, 9), macd_talib(&xs, 12, 26, 9));
        let fast_s = ema(&xs, 12)[25].unwrap();
        let fast_t = xs[14..=25].iter().sum::<f64>() / 12.0;
        let m = |v: &Vec<Option<(f64, f64, f64)>>| v[33].unwrap().0;
        // The macd lines differ by the fast seeds' gap, decayed over 8 steps.
        let gap = (fast_t - fast_s) * (1.0 - 2.0 / 13.0f64).powi(8);
        assert!((m(&t) - m(&s) - gap).abs() < 1e-9, "{} vs {gap}", m(&t) - m(&s));
        assert!(gap.abs() > 1e-3);
    }
}

use std::collections::BTreeMap;

use tickfold_reference::market::{self, ZscoreOf};
use tickfold_reference::rng::Rng;
use tickfold_sdk::testing::{Harness, Sample};

use super::Anomaly;

type Row = (&'static str, i64, Vec<f64>);

const KEYS: [&str; 3] = ["AAPL", "MSFT", "BTC-USD"];
const T0: i64 = 1_699_833_600_000;

/// Prices of several keys interleaved: a random walk with jumps, flat runs
/// (so some windows are constant), and a few unusable samples (0, negative,
/// NaN, infinite). Times increase strictly per key.
fn generate(seed: u64, n: usize, start: [f64; 3]) -> Vec<Row> {
    let mut rng = Rng(seed);
    let mut clock = T0;
    let mut price = start;
    let mut flat = [0; 3];
    let mut rows = Vec::with_capacity(n);
    for _ in 0..n {
        let k = rng.below(KEYS.len() as u64) as usize;
        clock += 1 + rng.below(1_000) as i64;
        if flat[k] > 0 {
            flat[k] -= 1;
        } else if rng.chance(0.01) {
            flat[k] = 40;
        } else if rng.chance(0.03) {
            price[k] *= 1.0 + (rng.unit() - 0.5) * 0.2;
        } else {
            price[k] *= 1.0 + (rng.unit() - 0.5) * 0.01;
        }
        let x = match rng.below(200) {
            0 => 0.0,
            1 => -price[k],
            2 => f64::NAN,
            3 => f64::INFINITY,
            _ => price[k],
        };
        rows.push((KEYS[k], clock, vec![x]));
    }
    rows
}

fn close_to(got: f64, want: f64) -> bool {
    (got - want).abs() <= want.abs().max(1.0) * 1e-9
}

fn relatively_close(got: f64, want: f64) -> bool {
    (got - want).abs() <= want.abs() * 1e-9
}

fn to_samples(rows: &[Row]) -> Vec<market::Sample> {
    rows.iter().map(|(k, ts, v)| market::Sample { key: k.to_string(), ts: *ts, x: v[0] }).collect()
}

/// Compares the plugin's alerts with the reference's scores: every value
/// with |z| clearly at or above the threshold must be emitted, every other
/// must not; within 1e-9 (relative) of the threshold either is fine.
fn compare(got: &[Sample], rows: &[Row], window: usize, threshold: f64, of: ZscoreOf, near: fn(f64, f64) -> bool) {
    let scored = market::zscores(&to_samples(rows), window, of);
    let mut next = got.iter().peekable();
    for s in &scored {
        let z = s.z.map(f64::abs);
        let must = z.is_some_and(|z| z >= threshold * (1.0 + 1e-9));
        let may = z.is_some_and(|z| z >= threshold * (1.0 - 1e-9));
        match next.peek() {
            Some(g) if g.key == s.key && g.ts == s.ts => {
                let ctx = format!("{} @ {}: got {:?}, want {s:?}", g.key, g.ts, g.values);
                assert!(may, "unexpected alert: {ctx}");
                assert_eq!(g.series, "anomaly");
                let [z, value, mean, stddev] = g.values[..] else { panic!("{ctx}") };
                assert!(near(z, s.z.unwrap()), "z: {ctx}");
                assert_eq!(value, s.value, "value: {ctx}");
                assert!(near(mean, s.mean), "mean: {ctx}");
                assert!(near(stddev, s.stddev), "stddev: {ctx}");
                next.next();
            }
            _ => assert!(!must, "missing alert for {s:?}"),
        }
    }
    assert!(next.next().is_none(), "alerts the reference did not score");
}

fn run(params: &[(&str, &str)], rows: &[Row]) -> (Vec<Sample>, u64) {
    let mut h = Harness::<Anomaly>::open(params).unwrap();
    let out = h.run(rows, None).unwrap();
    let skipped = h.instance().plugin().skipped_samples();
    (out, skipped)
}

fn unusable(x: f64, of: ZscoreOf) -> bool {
    !x.is_finite() || (of == ZscoreOf::Returns && x <= 0.0)
}

#[test]
fn matches_the_reference_on_generated_prices() {
    for (seed, of, of_name, window, threshold) in [
        (1, ZscoreOf::Returns, "returns", 20, 2.5),
        (2, ZscoreOf::Value, "value", 30, 2.0),
        (3, ZscoreOf::Returns, "returns", 2, 1.0),
    ] {
        let rows = generate(seed, 6_000, [180.0, 370.0, 36_000.0]);
        let (w, t) = (window.to_string(), threshold.to_string());
        let params = [("window", w.as_str()), ("threshold", t.as_str()), ("of", of_name), ("field", "price")];
        let (got, skipped) = run(&params, &rows);
        compare(&got, &rows, window, threshold, of, close_to);

        assert_eq!(skipped as usize, rows.iter().filter(|r| unusable(r.2[0], of)).count());
        // The data exercises what it is meant to.
        let scored = market::zscores(&to_samples(&rows), window, of);
        assert!(got.len() >= 30, "only {} alerts", got.len());
        assert!(got.iter().any(|g| g.values[0] < 0.0) && got.iter().any(|g| g.values[0] > 0.0));
        assert!(scored.iter().any(|s| s.z.is_none()), "no constant window");
    }
}

#[test]
fn large_and_tiny_scales() {
    let rows = generate(4, 4_000, [2.0e7, 3.0e-6, 1.5e7]);
    let (got, _) = run(&[("window", "25"), ("of", "value")], &rows);
    compare(&got, &rows, 25, 3.0, ZscoreOf::Value, relatively_close);
    assert!(got.len() >= 10);
    let (got, _) = run(&[("window", "25")], &rows);
    compare(&got, &rows, 25, 3.0, ZscoreOf::Returns, relatively_close);
    assert!(got.len() >= 10);
}

#[test]
fn z_uses_the_previous_values_and_the_sample_deviation() {
    let rows: Vec<Row> = vec![
        ("A", 1, vec![1.0]),
        ("B", 1, vec![10.0]),
        ("A", 2, vec![2.0]),
        ("B", 2, vec![11.0]),
        ("A", 3, vec![3.0]),
        ("B", 3, vec![12.0]),
        ("A", 4, vec![6.0]), // mean 2, sd 1: z 4
        ("B", 4, vec![8.0]), // mean 11, sd 1: z -3
        ("B", 5, vec![f64::NAN]),
        ("B", 6, vec![11.5]), // previous 11, 12, 8: |z| < 3
    ];
    let (got, skipped) = run(&[("window", "3"), ("threshold", "3"), ("of", "value")], &rows);
    assert_eq!(skipped, 1);
    let got: Vec<(&str, i64, Vec<f64>)> = got.iter().map(|s| (s.key.as_str(), s.ts, s.values.clone())).collect();
    assert_eq!(got, vec![("A", 4, vec![4.0, 6.0, 2.0, 1.0]), ("B", 4, vec![-3.0, 8.0, 11.0, 1.0])]);
}

#[test]
fn returns_skip_unusable_prices() {
    // Returns ln 2, (0 and NaN skipped) ln 0.5, then ln 4: previous mean 0,
    // sd sqrt(2) ln 2, so z = sqrt(2).
    let rows: Vec<Row> = vec![
        ("A", 1, vec![100.0]),
        ("A", 2, vec![200.0]),
        ("A", 3, vec![0.0]),
        ("A", 4, vec![f64::NAN]),
        ("A", 5, vec![100.0]),
        ("A", 6, vec![-4.0]),
        ("A", 7, vec![400.0]),
    ];
    let (got, skipped) = run(&[("window", "2"), ("threshold", "1.4")], &rows);
    assert_eq!(skipped, 3);
    assert_eq!(got.len(), 1);
    let ln2 = std::f64::consts::LN_2;
    let want = [std::f64::consts::SQRT_2, 4.0f64.ln(), 0.0, ln2 * std::f64::consts::SQRT_2];
    assert_eq!(got[0].ts, 7);
    assert!(got[0].values.iter().zip(want).all(|(&g, w)| (g - w).abs() < 1e-12), "{:?}", got[0].values);
    // At a threshold just above sqrt(2), nothing.
    let (got, _) = run(&[("window", "2"), ("threshold", "1.4143")], &rows);
    assert!(got.is_empty());
}

#[test]
fn constant_windows_give_no_z() {
    // Constants after varied values, so the running sums are not centred on
    // them: a constant window must still have sd exactly 0, whatever the
    // rounding of the sums. Any z at all would be an alert at this threshold.
    let mut rng = Rng(8);
    let mut alerts = 0;
    for c in [0.1, 1.0 / 3.0, 0.7, -0.3, 123.456, 1.0e7 + 0.3, 2.2e-6] {
        for window in 2..=9 {
            let mut values: Vec<f64> = (0..window + 3).map(|_| c * (0.5 + rng.unit()) + rng.unit()).collect();
            let flat_from = values.len();
            values.extend(std::iter::repeat_n(c, window + 4));
            values.push(c * 3.0 + 1.0);
            let rows: Vec<Row> = values.iter().enumerate().map(|(i, &v)| ("A", i as i64, vec![v])).collect();
            let w = window.to_string();
            let (got, _) = run(&[("window", &w), ("threshold", "1e-300"), ("of", "value")], &rows);
            // From flat_from + window on, the previous values are all `c`
            // (the jump at the end included); the first `c` is scored.
            let ctx = format!("c {c}, window {window}: {got:?}");
            assert!(got.iter().all(|s| s.ts < (flat_from + window) as i64), "{ctx}");
            assert!(got.iter().any(|s| s.ts == flat_from as i64), "{ctx}");
            alerts += got.len();
        }
    }
    assert!(alerts > 100);
}

#[test]
fn the_field_parameter_names_the_input() {
    let mut h = Harness::<Anomaly>::open(&[]).unwrap();
    assert_eq!(h.instance().inputs()[0].name, "input");
    assert_eq!(h.instance().inputs()[0].fields, ["close"]);
    assert_eq!(h.instance().outputs()[0].name, "anomaly");
    assert_eq!(h.instance().outputs()[0].fields, ["z", "value", "mean", "stddev"]);
    let mut h = Harness::<Anomaly>::open(&[("field", "mid")]).unwrap();
    assert_eq!(h.instance().inputs()[0].fields, ["mid"]);
}

/// Groups samples by key, keeping their order, as bit patterns.
fn by_key(samples: impl IntoIterator<Item = Sample>) -> BTreeMap<String, Vec<(i64, Vec<u64>)>> {
    let mut map: BTreeMap<String, Vec<(i64, Vec<u64>)>> = BTreeMap::new();
    for s in samples {
        map.entry(s.key).or_default().push((s.ts, s.values.iter().map(|v| v.to_bits()).collect()));
    }
    map
}

fn feed(h: &mut Harness<Anomaly>, rows: &[Row]) -> Vec<Sample> {
    rows.iter().flat_map(|row| h.process(0, std::slice::from_ref(row)).unwrap()).collect()
}

#[test]
fn snapshot_and_restore_continue_exactly() {
    for params in [[("window", "20"), ("threshold", "2")], [("window", "7"), ("of", "value")]] {
        let rows = generate(5, 3_000, [180.0, 370.0, 36_000.0]);
        let mut whole = Harness::<Anomaly>::open(&params).unwrap();
        let expected = feed(&mut whole, &rows);
        assert!(expected.len() >= 20);

        for split in [1, 100, 1_234, 2_999] {
            let mut first = Harness::<Anomaly>::open(&params).unwrap();
            let mut got = feed(&mut first, &rows[..split]);
            let mut second = Harness::<Anomaly>::restore(&params, first.instance().snapshot()).unwrap();
            // The host names the keys after a restore; new ids, another order.
            for key in KEYS.iter().rev() {
                second.key(key);
            }
            got.extend(feed(&mut second, &rows[split..]));
            assert_eq!(by_key(got), by_key(expected.clone()), "{params:?}, split at {split}");
        }
    }
}

#[test]
fn bad_params_say_what_to_change() {
    let err =
        |params: &[(&str, &str)]| Harness::<Anomaly>::open(params).err().expect("should fail").message().to_string();
    let m = err(&[("window", "1")]);
    assert!(m.contains("anomaly: parameter `window` must be a whole number from 2 to 1000000, got `1`"), "{m}");
    let m = err(&[("window", "ten")]);
    assert!(m.contains("parameter `window` must be a whole number") && m.contains("`ten`"), "{m}");
    for bad in ["0", "-1", "NaN", "inf", "high"] {
        let m = err(&[("threshold", bad)]);
        assert!(m.contains("parameter `threshold` must be a positive number") && m.contains(bad), "{m}");
    }
    let m = err(&[("of", "prices")]);
    assert!(m.contains("parameter `of` must be `returns` or `value`, got `prices`"), "{m}");
    let m = err(&[("field", " ")]);
    assert!(m.contains("parameter `field` must be the name of an input field"), "{m}");
    let m = err(&[("treshold", "2")]);
    assert!(m.contains("did you mean `threshold`"), "{m}");
}

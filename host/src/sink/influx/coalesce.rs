//! Points of one series and symbol at one time, merged before they are
//! posted.
//!
//! InfluxDB keeps one point per measurement, tag set and time: a later
//! write at the same time replaces the fields it carries and keeps the
//! others. A per-trade series (VWAP) has several trades of a symbol in one
//! millisecond, so posting each of them makes the server parse, index and
//! then overwrite points nobody will see. A writer instead holds the newest
//! point of each series and symbol, merges a point with the same time into
//! it (its finite fields win, as on the server), and formats a held point
//! only when a point at another time displaces it or the writer hands its
//! lines over. What the server ends up storing is the same.
//!
//! A series whose names line protocol cannot carry is not merged: such a
//! point is skipped only when the unwritable field is finite, so merging
//! could carry that field into a point that would have been written.

use compact_str::CompactString;
use hashbrown::HashTable;

/// More series × symbols than this remembered, with nothing held, and the
/// table starts again (keys of retired series and vanished symbols).
const MAX_REMEMBERED: usize = 1 << 16;

/// A point waiting to be formatted.
#[derive(Debug)]
pub(super) struct Held {
    pub(super) series: CompactString,
    pub(super) fields: Vec<String>,
    pub(super) symbol: CompactString,
    pub(super) ts: i64,
    pub(super) values: Vec<f64>,
}

struct Slot {
    hash: u64,
    point: Held,
    /// Whether `point` is still to be formatted.
    held: bool,
    /// Its names cannot all be written: its points are not merged.
    direct: bool,
}

/// The newest point of each series and symbol one lane buffer has not
/// formatted yet.
#[derive(Default)]
pub(super) struct Coalescer {
    /// Indexes into `slots`, by the hash of (series, symbol).
    index: HashTable<u32>,
    slots: Vec<Slot>,
    /// Slots holding a point, in the order they began to (a slot that
    /// stopped holding one may still be listed).
    held: Vec<u32>,
    /// Points held.
    holding: usize,
    /// Points merged into a later one since [`take_merged`](Self::take_merged).
    merged: u64,
}

/// What [`Coalescer::put`] did with a point.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Put {
    /// Merged into the held point of the same time: one point fewer to post.
    Merged,
    /// Held; nothing was held for its series and symbol before.
    Held,
    /// Held, after the point it displaced was given to `emit`.
    Displaced,
    /// Not taken: its names cannot all be written, so it is to be
    /// formatted (and skipped) as it is; a point held before for its
    /// series and symbol went to `emit`.
    Direct,
}

impl Coalescer {
    /// Points held.
    pub(super) fn len(&self) -> usize {
        self.holding
    }

    /// Holds a point of `series` and `symbol` (`hash` is of the two),
    /// merging it into the held one if that has the same time. A held point
    /// at another time (or with other fields: a redeployed series) goes to
    /// `emit` first, so a key's points leave in the order they came.
    /// `writable` says whether line protocol can carry a series, its
    /// fields and a symbol (asked once per key and field list).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn put(
        &mut self,
        hash: u64,
        series: &str,
        fields: &[String],
        symbol: &str,
        ts: i64,
        values: &[f64],
        writable: impl FnOnce(&str, &[String], &str) -> bool,
        emit: impl FnOnce(&Held),
    ) -> Put {
        let slots = &self.slots;
        let found = self.index.find(hash, |&i| {
            let p = &slots[i as usize].point;
            p.series == series && p.symbol == symbol
        });
        let Some(&i) = found else {
            let i = self.slots.len() as u32;
            let direct = !writable(series, fields, symbol);
            self.slots.push(Slot {
                hash,
                point: Held {
                    series: series.into(),
                    fields: fields.to_vec(),
                    symbol: symbol.into(),
                    ts,
                    values: values.to_vec(),
                },
                held: !direct,
                direct,
            });
            let slots = &self.slots;
            self.index.insert_unique(hash, i, |&j| slots[j as usize].hash);
            if direct {
                return Put::Direct;
            }
            self.held.push(i);
            self.holding += 1;
            return Put::Held;
        };
        let slot = &mut self.slots[i as usize];
        let same_fields = slot.point.fields == fields;
        if same_fields && slot.direct {
            return Put::Direct;
        }
        if same_fields && slot.held && slot.point.ts == ts {
            for (have, &new) in slot.point.values.iter_mut().zip(values) {
                if new.is_finite() {
                    *have = new;
                }
            }
            self.merged += 1;
            return Put::Merged;
        }
        let displaced = slot.held;
        if displaced {
            emit(&slot.point);
        }
        if !same_fields {
            // A redeployed series: its new names are checked again.
            slot.point.fields = fields.to_vec();
            slot.direct = !writable(series, fields, symbol);
            if slot.direct {
                if displaced {
                    slot.held = false;
                    self.holding -= 1;
                }
                return Put::Direct;
            }
        }
        if !displaced {
            slot.held = true;
            self.held.push(i);
            self.holding += 1;
        }
        slot.point.ts = ts;
        slot.point.values.clear();
        slot.point.values.extend_from_slice(values);
        if displaced { Put::Displaced } else { Put::Held }
    }

    /// Gives every held point to `emit`, in the order they began to be
    /// held, and holds nothing after.
    pub(super) fn drain(&mut self, mut emit: impl FnMut(&Held)) {
        for &i in &self.held {
            let slot = &mut self.slots[i as usize];
            if std::mem::replace(&mut slot.held, false) {
                emit(&slot.point);
            }
        }
        self.held.clear();
        self.holding = 0;
        if self.slots.len() > MAX_REMEMBERED {
            self.index.clear();
            self.slots.clear();
        }
    }

    /// Points merged away since the last call.
    pub(super) fn take_merged(&mut self) -> u64 {
        std::mem::take(&mut self.merged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same as the writer's: any hash works, as long as it is one per
    /// (series, symbol).
    fn hash(series: &str, symbol: &str) -> u64 {
        let mut h = rustc_hash::FxHasher::default();
        std::hash::Hash::hash(&(series, symbol), &mut h);
        std::hash::Hasher::finish(&h)
    }

    /// What a server that merges equal times would store from `points`
    /// written one after another (the plain path): per (series, symbol,
    /// time), each field's last finite value.
    fn server_view<'a>(
        points: impl IntoIterator<Item = (&'a str, &'a str, i64, Vec<f64>)>,
    ) -> std::collections::BTreeMap<(String, String, i64), Vec<Option<f64>>> {
        let mut stored = std::collections::BTreeMap::new();
        for (series, symbol, ts, values) in points {
            if values.iter().all(|v| !v.is_finite()) {
                continue; // a line with no field is not written
            }
            let entry: &mut Vec<Option<f64>> =
                stored.entry((series.to_string(), symbol.to_string(), ts)).or_insert_with(|| vec![None; values.len()]);
            for (have, v) in entry.iter_mut().zip(values) {
                if v.is_finite() {
                    *have = Some(v);
                }
            }
        }
        stored
    }

    #[test]
    fn the_merged_points_leave_what_the_server_would_store_and_each_key_in_order() {
        // A seeded walk over 3 series × 4 symbols, times often equal, some
        // going back, some fields NaN, drained now and then.
        let fields = vec!["a".to_string(), "b".to_string()];
        let (series, symbols) = (["vwap", "bars", "rsi"], ["AAPL", "MSFT", "BTC-USD", "X"]);
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let mut written = Vec::new();
        let mut clock = [[0i64; 4]; 3];
        let mut c = Coalescer::default();
        let mut emitted: Vec<(String, String, i64, Vec<f64>)> = Vec::new();
        let mut counts = (0, 0, 0);
        for _ in 0..20_000 {
            let (s, k) = (next(3) as usize, next(4) as usize);
            clock[s][k] += match next(10) {
                0 => -1,
                1..=5 => 0,
                _ => 1,
            };
            let ts = clock[s][k];
            let value = |n: u64| if n == 0 { f64::NAN } else { n as f64 };
            let values = vec![value(next(5)), value(next(5))];
            written.push((series[s], symbols[k], ts, values.clone()));
            let put = c.put(
                hash(series[s], symbols[k]),
                series[s],
                &fields,
                symbols[k],
                ts,
                &values,
                |_, _, _| true,
                |p| {
                    emitted.push((p.series.to_string(), p.symbol.to_string(), p.ts, p.values.clone()));
                },
            );
            match put {
                Put::Merged => counts.0 += 1,
                Put::Held => counts.1 += 1,
                Put::Displaced => counts.2 += 1,
                Put::Direct => unreachable!("every name here is writable"),
            }
            if next(500) == 0 {
                c.drain(|p| emitted.push((p.series.to_string(), p.symbol.to_string(), p.ts, p.values.clone())));
            }
        }
        c.drain(|p| emitted.push((p.series.to_string(), p.symbol.to_string(), p.ts, p.values.clone())));
        assert_eq!(c.len(), 0);
        // Each kind of step happened, often.
        assert!(counts.0 > 5_000 && counts.1 > 20 && counts.2 > 5_000, "{counts:?}");
        assert_eq!(c.take_merged(), counts.0);
        assert_eq!(emitted.len() as u64, 20_000 - counts.0);

        let plain = server_view(written.iter().map(|(s, k, t, v)| (*s, *k, *t, v.clone())));
        let merged = server_view(emitted.iter().map(|(s, k, t, v)| (s.as_str(), k.as_str(), *t, v.clone())));
        assert_eq!(plain, merged);
        // Per key, the emitted times are the written times with runs of
        // equal ones cut to one (a drain may split a run: then two).
        for s in series {
            for k in symbols {
                let times = |points: &mut dyn Iterator<Item = (&str, &str, i64)>| -> Vec<i64> {
                    let mut t: Vec<i64> = points.filter(|p| p.0 == s && p.1 == k).map(|p| p.2).collect();
                    t.dedup();
                    t
                };
                assert_eq!(
                    times(&mut written.iter().map(|p| (p.0, p.1, p.2))),
                    times(&mut emitted.iter().map(|p| (p.0.as_str(), p.1.as_str(), p.2))),
                    "{s} {k}"
                );
            }
        }
    }

    #[test]
    fn a_series_with_other_fields_is_not_merged_into_the_old_point() {
        let mut c = Coalescer::default();
        let (one, two) = (vec!["a".to_string()], vec!["a".to_string(), "b".to_string()]);
        let h = hash("s", "K");
        let mut out = Vec::new();
        assert_eq!(c.put(h, "s", &one, "K", 5, &[1.0], |_, _, _| true, |_| unreachable!()), Put::Held);
        assert_eq!(
            c.put(
                h,
                "s",
                &two,
                "K",
                5,
                &[2.0, 3.0],
                |_, _, _| true,
                |p| out.push((p.fields.clone(), p.values.clone()))
            ),
            Put::Displaced
        );
        c.drain(|p| out.push((p.fields.clone(), p.values.clone())));
        assert_eq!(out, vec![(one, vec![1.0]), (two, vec![2.0, 3.0])]);
    }

    #[test]
    fn a_series_with_unwritable_names_is_never_held_until_its_fields_change() {
        let mut c = Coalescer::default();
        let (bad, good) = (vec!["v".to_string(), "b\n".to_string()], vec!["v".to_string()]);
        let h = hash("s", "K");
        let writable = |_: &str, fields: &[String], _: &str| !fields.iter().any(|f| f.contains('\n'));
        let mut out = Vec::new();
        for ts in [1, 1, 2] {
            assert_eq!(c.put(h, "s", &bad, "K", ts, &[1.0, 2.0], writable, |_| unreachable!()), Put::Direct);
        }
        assert_eq!(c.len(), 0);
        // Redeployed with writable fields: held and merged again.
        assert_eq!(c.put(h, "s", &good, "K", 3, &[1.0], writable, |_| unreachable!()), Put::Held);
        assert_eq!(c.put(h, "s", &good, "K", 3, &[4.0], writable, |_| unreachable!()), Put::Merged);
        // And back: the held point goes first.
        assert_eq!(c.put(h, "s", &bad, "K", 3, &[1.0, 2.0], writable, |p| out.push(p.values.clone())), Put::Direct);
        assert_eq!((c.len(), out), (0, vec![vec![4.0]]));
        c.drain(|_| unreachable!());
    }

    #[test]
    fn a_key_seen_before_a_drain_is_held_again_after_it() {
        let mut c = Coalescer::default();
        let f = vec!["v".to_string()];
        let h = hash("s", "K");
        c.put(h, "s", &f, "K", 1, &[1.0], |_, _, _| true, |_| unreachable!());
        let mut out = Vec::new();
        c.drain(|p| out.push(p.ts));
        // Same time again, after the drain: a new point, not merged into
        // the one already posted.
        assert_eq!(c.put(h, "s", &f, "K", 1, &[2.0], |_, _, _| true, |_| unreachable!()), Put::Held);
        c.drain(|p| out.push(p.values[0] as i64));
        assert_eq!(out, vec![1, 2]);
        assert_eq!(c.take_merged(), 0);
    }
}

//! Event-time windows, closed by the watermark.
//!
//! A window `[start, start + size)` collects the samples whose event time
//! falls in it and closes once the watermark reaches `start + size +
//! lateness`. Tumbling windows are sliding windows whose slide equals their
//! size. Window starts are aligned to `offset` (0: the Unix epoch, so 1m
//! windows start on the minute, UTC).
//!
//! A sample whose every window has already closed is *late*: [`Windows::add`]
//! says so and the plugin decides what to do (count it, log it). Whether a
//! window is closed depends only on the watermark, so the answer is the
//! same after a restore.

use serde::{Deserialize, Serialize};

use crate::Millis;

/// The shape of a family of windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowSpec {
    /// Length of a window.
    pub size_ms: i64,
    /// Distance between window starts (`== size_ms` for tumbling windows).
    pub slide_ms: i64,
    /// Alignment of window starts.
    pub offset_ms: i64,
    /// How long after its end a window stays open for out-of-order samples.
    pub lateness_ms: i64,
}

impl WindowSpec {
    /// Tumbling windows of `size_ms`. Panics if `size_ms <= 0`.
    pub fn tumbling(size_ms: i64) -> Self {
        Self::sliding(size_ms, size_ms)
    }

    /// Windows of `size_ms` starting every `slide_ms`. Panics unless both
    /// are positive.
    pub fn sliding(size_ms: i64, slide_ms: i64) -> Self {
        assert!(size_ms > 0 && slide_ms > 0, "window size and slide must be positive, got {size_ms} and {slide_ms}");
        WindowSpec { size_ms, slide_ms, offset_ms: 0, lateness_ms: 0 }
    }

    /// Keeps windows open `lateness_ms` past their end.
    pub fn with_lateness(mut self, lateness_ms: i64) -> Self {
        self.lateness_ms = lateness_ms.max(0);
        self
    }

    /// Aligns window starts to `offset_ms` instead of the epoch.
    pub fn with_offset(mut self, offset_ms: i64) -> Self {
        self.offset_ms = offset_ms;
        self
    }

    /// The latest window start at or before `ts`.
    #[inline]
    pub fn last_start(&self, ts: Millis) -> Millis {
        // `x - x mod slide`, not `floor(x / slide) * slide`: the same start
        // without a multiplication, whose overflow check WebAssembly can only
        // do with a 128-bit software multiply. Only times within one slide
        // of i64::MIN can round below it; they saturate.
        let x = ts.saturating_sub(self.offset_ms);
        x.checked_sub(x.rem_euclid(self.slide_ms)).unwrap_or(Millis::MIN).saturating_add(self.offset_ms)
    }

    /// The starts of every window containing `ts`, latest first.
    #[inline]
    pub fn starts(&self, ts: Millis) -> impl Iterator<Item = Millis> + use<> {
        let spec = *self;
        let mut next = Some(spec.last_start(ts));
        std::iter::from_fn(move || {
            let start = next?;
            next = start.checked_sub(spec.slide_ms).filter(|s| s.saturating_add(spec.size_ms) > ts);
            Some(start)
        })
    }

    /// The end (exclusive) of the window starting at `start`.
    #[inline]
    pub fn end(&self, start: Millis) -> Millis {
        start.saturating_add(self.size_ms)
    }

    /// The watermark at which the window starting at `start` closes.
    #[inline]
    pub fn closes_at(&self, start: Millis) -> Millis {
        start.saturating_add(self.size_ms).saturating_add(self.lateness_ms)
    }
}

/// Where [`Windows::add`] put a sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placed {
    /// Into every window that contains it.
    Open,
    /// Into none: they had all closed. With sliding windows, a sample can
    /// also be `PartlyLate`.
    Late,
    /// Into the windows still open, but some containing it had closed.
    PartlyLate,
}

/// The open windows of one key, each with an accumulator `A`.
///
/// A key has few windows open at once (one or two for tumbling windows,
/// size/slide for sliding ones), so they live in a vector sorted by start:
/// a scan of one or two entries beats a tree's pointer chasing, natively and
/// even more in WebAssembly. Saved, the vector reads as a map from start to
/// accumulator (postcard encodes both the same way).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Windows<A> {
    open: Vec<(Millis, A)>,
}

impl<A> Default for Windows<A> {
    fn default() -> Self {
        Windows { open: Vec::new() }
    }
}

impl<A: Default> Windows<A> {
    /// Calls `f(start, accumulator)` for every open window that contains
    /// `ts`, opening windows as needed; `watermark` decides which are
    /// already closed.
    #[inline]
    pub fn add(
        &mut self,
        spec: &WindowSpec,
        ts: Millis,
        watermark: Millis,
        mut f: impl FnMut(Millis, &mut A),
    ) -> Placed {
        let (mut placed, mut late) = (0, 0);
        for start in spec.starts(ts) {
            if spec.closes_at(start) <= watermark {
                late += 1;
            } else {
                placed += 1;
                f(start, self.entry(start));
            }
        }
        match (placed, late) {
            (_, 0) => Placed::Open,
            (0, _) => Placed::Late,
            _ => Placed::PartlyLate,
        }
    }
}

impl<A: Default> Windows<A> {
    /// The accumulator of the window starting at `start`, opened if needed.
    /// New windows are usually the latest, so the search starts at the end.
    #[inline]
    fn entry(&mut self, start: Millis) -> &mut A {
        let i = match self.open.iter().rposition(|(s, _)| *s <= start) {
            Some(i) if self.open[i].0 == start => i,
            Some(i) => {
                self.open.insert(i + 1, (start, A::default()));
                i + 1
            }
            None => {
                self.open.insert(0, (start, A::default()));
                0
            }
        };
        &mut self.open[i].1
    }
}

impl<A> Windows<A> {
    /// Closes, in start order, every window that `watermark` closes, and
    /// hands each to `f(start, accumulator)`.
    pub fn close(&mut self, spec: &WindowSpec, watermark: Millis, mut f: impl FnMut(Millis, A)) {
        let due = self.open.iter().take_while(|(start, _)| spec.closes_at(*start) <= watermark).count();
        for (start, acc) in self.open.drain(..due) {
            f(start, acc);
        }
    }

    /// The watermark at which the next window closes, if any is open.
    pub fn next_close(&self, spec: &WindowSpec) -> Option<Millis> {
        self.open.first().map(|(start, _)| spec.closes_at(*start))
    }

    /// The open windows, by start.
    pub fn iter(&self) -> impl Iterator<Item = (Millis, &A)> {
        self.open.iter().map(|(s, a)| (*s, a))
    }

    /// True when no window is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tumbling_windows_align_to_the_epoch_and_handle_negative_times() {
        let spec = WindowSpec::tumbling(60_000);
        assert_eq!(spec.starts(125_000).collect::<Vec<_>>(), vec![120_000]);
        assert_eq!(spec.starts(-1).collect::<Vec<_>>(), vec![-60_000]);
        assert_eq!(spec.starts(60_000).collect::<Vec<_>>(), vec![60_000]);
    }

    #[test]
    fn sliding_windows_contain_a_sample_size_over_slide_times() {
        let spec = WindowSpec::sliding(300, 100);
        assert_eq!(spec.starts(250).collect::<Vec<_>>(), vec![200, 100, 0]);
        assert_eq!(spec.starts(300).collect::<Vec<_>>(), vec![300, 200, 100]);
    }

    #[test]
    fn windows_close_in_order_and_late_samples_are_reported() {
        let spec = WindowSpec::tumbling(10).with_lateness(5);
        let mut w = Windows::<Vec<i64>>::default();
        assert_eq!(w.add(&spec, 3, i64::MIN, |_, a| a.push(3)), Placed::Open);
        assert_eq!(w.add(&spec, 12, i64::MIN, |_, a| a.push(12)), Placed::Open);
        assert_eq!(w.next_close(&spec), Some(15));
        let mut closed = vec![];
        w.close(&spec, 14, |s, a| closed.push((s, a)));
        assert!(closed.is_empty(), "the lateness keeps [0,10) open until 15");
        // Still within lateness at watermark 14.
        assert_eq!(w.add(&spec, 9, 14, |_, a| a.push(9)), Placed::Open);
        w.close(&spec, 15, |s, a| closed.push((s, a)));
        assert_eq!(closed, vec![(0, vec![3, 9])]);
        assert_eq!(w.add(&spec, 1, 15, |_, a| a.push(1)), Placed::Late);
        w.close(&spec, i64::MAX, |s, a| closed.push((s, a)));
        assert_eq!(closed[1], (10, vec![12]));
        assert!(w.is_empty());
    }

    #[test]
    fn windows_added_out_of_order_stay_sorted_and_close_in_order() {
        let spec = WindowSpec::sliding(30, 10);
        let mut w = Windows::<Vec<i64>>::default();
        for ts in [45, 12, 31, 5, 58, 20] {
            w.add(&spec, ts, i64::MIN, |_, a| a.push(ts));
        }
        let starts: Vec<i64> = w.iter().map(|(s, _)| s).collect();
        let mut sorted = starts.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(starts, sorted);
        let mut closed = vec![];
        w.close(&spec, i64::MAX, |s, a| closed.push((s, a)));
        assert_eq!(closed[0], (-20, vec![5]));
        assert_eq!(closed.iter().map(|c| c.0).collect::<Vec<_>>(), sorted);
    }

    #[test]
    fn saved_windows_read_as_a_map_from_start_to_accumulator() {
        // The format of state saved when windows lived in a BTreeMap.
        let mut map = std::collections::BTreeMap::new();
        map.insert(60_000i64, 2.5f64);
        map.insert(0i64, 1.5f64);
        #[derive(Serialize)]
        struct Old {
            open: std::collections::BTreeMap<i64, f64>,
        }
        let bytes = postcard::to_allocvec(&Old { open: map }).unwrap();
        let w: Windows<f64> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(w.iter().collect::<Vec<_>>(), vec![(0, &1.5), (60_000, &2.5)]);
        assert_eq!(postcard::to_allocvec(&w).unwrap(), bytes);
    }

    #[test]
    fn times_at_the_ends_of_i64_do_not_overflow() {
        let spec = WindowSpec::sliding(60_000, 30_000).with_lateness(1_000);
        let mut w = Windows::<u32>::default();
        assert_eq!(w.add(&spec, i64::MAX - 5, i64::MIN, |_, a| *a += 1), Placed::Open);
        assert_eq!(w.add(&spec, i64::MIN + 5, i64::MIN, |_, a| *a += 1), Placed::Open);
        let mut closed = 0;
        w.close(&spec, i64::MAX, |_, _| closed += 1);
        assert!(closed >= 2);
    }

    #[test]
    fn sliding_samples_can_be_partly_late() {
        let spec = WindowSpec::sliding(20, 10);
        let mut w = Windows::<u32>::default();
        // Window [0,20) closes at 20, [10,30) at 30: at watermark 25 a sample
        // at 15 only reaches the second.
        assert_eq!(w.add(&spec, 15, 25, |_, a| *a += 1), Placed::PartlyLate);
        assert_eq!(w.iter().collect::<Vec<_>>(), vec![(10, &1)]);
    }
}

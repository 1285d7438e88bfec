//! The columnar output batches a call returns.

use crate::{Batch, KeyId, Millis};

/// Collects what one call emits, one columnar batch per output series.
///
/// Buffers are kept between calls, so steady-state emitting does not
/// allocate.
#[derive(Debug, Default)]
pub struct Output {
    batches: Vec<Batch>,
}

impl Output {
    /// An output for series with these field counts, in declaration order.
    pub fn new(field_counts: impl IntoIterator<Item = usize>) -> Self {
        let batches = field_counts.into_iter().enumerate().map(|(i, n)| Batch::new(i as u32, n)).collect();
        Output { batches }
    }

    /// Emits one sample on output series `series` (the index that
    /// [`crate::Io::output`] returned); `values` has one entry per field.
    #[inline]
    pub fn emit(&mut self, series: usize, key: KeyId, ts: Millis, values: &[f64]) {
        self.batches[series].push(key, ts, values);
    }

    /// Takes the non-empty batches, leaving empty ones of the same shape
    /// with room for as many samples as were taken: a plugin emits about as
    /// much per call as the call before, and regrowing every column from
    /// empty on every call costs a dozen reallocations each.
    pub fn take(&mut self) -> Vec<Batch> {
        let mut taken = Vec::new();
        for b in &mut self.batches {
            if !b.is_empty() {
                let n = b.len();
                let fresh = Batch {
                    series: b.series,
                    keys: Vec::with_capacity(n),
                    ts: Vec::with_capacity(n),
                    fields: b.fields.iter().map(|_| Vec::with_capacity(n)).collect(),
                };
                taken.push(std::mem::replace(b, fresh));
            }
        }
        taken
    }
}

//! Reading a columnar [`Batch`] row by row or column by column.

use crate::{Batch, KeyId, Millis};

impl Batch {
    /// An empty batch of `fields` columns for series `series`.
    pub fn new(series: u32, fields: usize) -> Self {
        Batch { series, keys: Vec::new(), ts: Vec::new(), fields: vec![Vec::new(); fields] }
    }

    /// The number of samples.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when the batch holds no samples.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Column `i` (in the order the series declares its fields).
    pub fn field(&self, i: usize) -> &[f64] {
        &self.fields[i]
    }

    /// Appends one sample; `values` has one entry per field.
    ///
    /// `#[inline]`: it runs once per emitted sample and lives in another
    /// crate than its callers, so without the hint it is never inlined.
    #[inline]
    pub fn push(&mut self, key: KeyId, ts: Millis, values: &[f64]) {
        if values.len() != self.fields.len() {
            wrong_width(self.series, self.fields.len(), values.len());
        }
        self.keys.push(key);
        self.ts.push(ts);
        for (column, &v) in self.fields.iter_mut().zip(values) {
            column.push(v);
        }
    }

    /// The samples in arrival order.
    pub fn rows(&self) -> Rows<'_> {
        Rows { batch: self, next: 0 }
    }

    /// Checks the batch's shape: every column as long as `keys`, and the
    /// number of fields the series declares.
    pub(crate) fn check_shape(&self, fields: usize) -> Result<(), String> {
        let n = self.keys.len();
        if self.ts.len() != n {
            return Err(format!("series {}: {} keys but {} timestamps", self.series, n, self.ts.len()));
        }
        if self.fields.len() != fields {
            return Err(format!(
                "series {}: {} field columns, the series declares {}",
                self.series,
                self.fields.len(),
                fields
            ));
        }
        if let Some((i, c)) = self.fields.iter().enumerate().find(|(_, c)| c.len() != n) {
            return Err(format!("series {}: field {} has {} values for {} keys", self.series, i, c.len(), n));
        }
        Ok(())
    }
}

/// Kept out of line so the formatting stays off the hot path.
#[cold]
#[inline(never)]
fn wrong_width(series: u32, fields: usize, got: usize) -> ! {
    panic!("a sample of series {series} needs {fields} values, got {got}")
}

/// One sample of a [`Batch`].
#[derive(Clone, Copy, Debug)]
pub struct Row<'a> {
    /// The sample's key.
    pub key: KeyId,
    /// The sample's event time.
    pub ts: Millis,
    /// The sample's position in its batch.
    pub index: usize,
    batch: &'a Batch,
}

impl Row<'_> {
    /// Field `i` of this sample.
    #[inline]
    pub fn field(&self, i: usize) -> f64 {
        self.batch.fields[i][self.index]
    }
}

/// An iterator over a batch's samples, in arrival order.
pub struct Rows<'a> {
    batch: &'a Batch,
    next: usize,
}

impl<'a> Iterator for Rows<'a> {
    type Item = Row<'a>;

    #[inline]
    fn next(&mut self) -> Option<Row<'a>> {
        let i = self.next;
        let key = *self.batch.keys.get(i)?;
        self.next += 1;
        Some(Row { key, ts: self.batch.ts[i], index: i, batch: self.batch })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.batch.keys.len() - self.next;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Rows<'_> {}

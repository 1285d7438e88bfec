//! The `vwap` plugin (being written).

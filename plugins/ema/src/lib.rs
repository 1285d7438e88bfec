//! The `ema` plugin (being written).

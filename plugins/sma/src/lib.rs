//! The `sma` plugin (being written).

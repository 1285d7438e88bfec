//! The `rsi` plugin (being written).

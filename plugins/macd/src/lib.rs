//! The `macd` plugin (being written).

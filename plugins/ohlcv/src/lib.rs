//! The `ohlcv` plugin (being written).

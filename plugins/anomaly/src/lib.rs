//! The `anomaly` plugin (being written).

//! References for bars, VWAP and anomalies (being written).

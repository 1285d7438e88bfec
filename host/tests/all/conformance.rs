//! Conformance of every first-party plugin with an independent reference (being written).

//! The `bollinger` plugin (being written).

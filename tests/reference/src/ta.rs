//! References for TA-Lib indicators (being written).

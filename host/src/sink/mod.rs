//! Where series go once the plugins have made them.
//!
//! | file | what it owns |
//! | --- | --- |
//!
//! Each worker of the dataflow holds its own writer on each sink and hands
//! it samples as its plugin chain emits them (see [`crate::exec::OutputWriter`]),
//! then tells it when the worker's frontier (the watermark) moves on.

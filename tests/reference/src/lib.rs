//! Independent references for tests: plain batch implementations over whole
//! arrays, written from TA-Lib's published algorithms (for indicators) and
//! from the definitions in each plugin's docs (for bars and VWAP). They
//! share no code with the streaming implementations they check, and favour
//! obviousness over speed. [`rng`] is the one seeded generator every test
//! uses for its data.

pub mod indicator;
pub mod market;
pub mod rng;
pub mod ta;

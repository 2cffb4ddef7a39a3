//! The graph sample: the original's AssureTwin JE decomposition over parquet data.

pub mod data;
pub mod generate;
pub mod patterns;
pub mod sample;

pub use sample::run;

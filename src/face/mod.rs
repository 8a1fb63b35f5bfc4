//! **face**: what a person or systemd talks to. The command line (its clap definitions, exit
//! codes, output formats and signal wiring), the zero-setup demo, and the throwaway PostgreSQL
//! cluster the demo, the tests and the benchmarks start. Uses every layer below; nothing below
//! uses it.

pub mod cli;
pub mod demo;
pub mod pgcluster;

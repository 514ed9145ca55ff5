//! One file per command of the binary. Each takes the [`Terminal`](crate::terminal::Terminal),
//! the output settings and its own arguments, prints its results and returns the exit code.

pub mod announce;
pub mod holds;
pub mod ledger;
pub mod report;
pub mod reservation;
pub mod reserve;
pub mod status;
pub mod watch;

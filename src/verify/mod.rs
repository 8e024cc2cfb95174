//! Comparing nodes: `mm_conflict.table_checksum`, and `table_diff` / `repair`.

pub mod checksum;
pub mod compare;
pub mod diff;
pub mod repair;

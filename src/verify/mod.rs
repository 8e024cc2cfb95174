//! Comparing nodes: `mm_conflict.table_checksum`.

pub mod checksum;

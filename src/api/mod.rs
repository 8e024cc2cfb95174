//! Every function PostgreSQL calls: the triggers ([`triggers`]) and the SQL functions in schema
//! `mm_conflict` ([`functions`], [`mesh`]). Each is a thin shim that raises errors with their own SQLSTATE.

mod args;
pub mod functions;
pub mod mesh;
pub mod triggers;

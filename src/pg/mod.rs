//! Small safe(r) wrappers over PostgreSQL's C API, and the shims for the differences between
//! PostgreSQL majors. Nothing here knows about mm_conflict's tables or rules.
//!
//! * [`compat`]: every difference between majors the extension meets, in one place.
//! * [`names`]: identifiers (quoting, a relation's stable name) and the stable hash.
//! * [`partitions`]: partition trees (root, leaves).
//! * [`relation`]: relations opened for a scope, found by name, their columns and privileges.
//! * [`backend`]: this backend's database, clocks, replication origin and transaction callbacks.
//! * [`trigger`]: a trigger firing and a relation's triggers, seen safely.
//! * [`tuple`]: reading columns of heap tuples and descriptors ([`tuple::TupleRef`]: a safe view).
//! * [`datum`]: values as JSON, read by their own type.
//! * [`scan`]: sequential scans, each row a safe view of the scan's slot.
//! * [`types`]: catalog facts about types (base, kind, element).
//! * [`heap`]: rows written without the executor (heap insert and index entries).
//! * [`amount`]: values of delta columns as exact decimals, and the text of their state.
//! * [`key`]: a primary key's columns, values and binary form.
//! * [`probe`]: the primary-key probe that follows update chains.
//! * [`keylock`]: the per-key lock.
//! * [`statement`]: the statements the executor runs (upserts; where each ends).
//! * [`publication`]: whether a table is published.
//! * [`spi`]: prepared statements.
//! * [`subxact`]: work that may fail, in a subtransaction of its own.
//! * [`security`]: running work with another role's rights.
//! * [`settings`]: values as text that reads the same on every node (settings pinned, text I/O).
//! * [`flag`]: backend-local flags raised for a scope.
//! * [`guc`]: an enum setting with a check hook that only a superuser passes for one value.
//! * [`snapshot`]: a fresh snapshot for a step of a long call.
//! * [`wal`]: the WAL position a wait for peers aims at.

pub mod amount;
pub mod backend;
pub mod compat;
pub mod datum;
pub mod flag;
pub mod guc;
pub mod heap;
pub mod key;
pub mod keylock;
pub mod names;
pub mod partitions;
pub mod probe;
pub mod publication;
pub mod relation;
pub mod scan;
pub mod security;
pub mod settings;
pub mod snapshot;
pub mod spi;
pub mod statement;
pub mod subxact;
pub mod trigger;
pub mod tuple;
pub mod types;
pub mod wal;

pub use compat::is_replicated_session;

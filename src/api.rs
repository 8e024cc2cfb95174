//! SQL functions in schema `mm_conflict`.

#[pgrx::pg_schema]
mod mm_conflict {
    use pgrx::prelude::*;

    /// Version of the loaded shared library (compare with `pg_extension.extversion`).
    #[pg_extern(immutable, parallel_safe)]
    fn version() -> &'static str {
        env!("CARGO_PKG_VERSION")
    }
}

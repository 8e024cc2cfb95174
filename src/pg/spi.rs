//! Prepared statements (the trigger's rare paths: overwrite, re-send, tombstones, conflict log),
//! prepared on first use and kept for the life of their owner.

use std::cell::Cell;
use std::ffi::CString;

use pgrx::pg_sys;

use super::datum::Typed;
use crate::error::MmError;

fn failed(sql: &str, what: String) -> ! {
    MmError::Internal {
        what: format!("{what} (statement \"{sql}\")"),
    }
    .raise()
}

/// The first column of the first row of `query`, read-only (`None`: no row, or NULL). pgrx's
/// `Spi::get_one` marks the transaction as writing (it assigns a transaction id), which a read
/// must not: creating a replication slot waits for every transaction that has one.
pub fn read_one<T: pgrx::FromDatum + pgrx::IntoDatum>(
    query: &str,
    args: &[pgrx::datum::DatumWithOid],
) -> Result<Option<T>, pgrx::spi::Error> {
    pgrx::spi::Spi::connect(|client| {
        let table = client.select(query, Some(1), args)?;
        if table.is_empty() {
            Ok(None)
        } else {
            table.first().get_one::<T>()
        }
    })
}

pub struct CachedPlan {
    pub sql: String,
    argtypes: Vec<pg_sys::Oid>,
    plan: Cell<pg_sys::SPIPlanPtr>,
    /// Run with this role's rights instead of the current user's.
    owner: Option<pg_sys::Oid>,
}

impl CachedPlan {
    pub fn new(sql: String, argtypes: Vec<pg_sys::Oid>) -> CachedPlan {
        CachedPlan {
            sql,
            argtypes,
            plan: Cell::new(std::ptr::null_mut()),
            owner: None,
        }
    }

    /// The same statement, run with `owner`'s rights in a security-restricted operation (see
    /// [`super::security::as_user`]). Without it a statement runs with the current role's rights;
    /// either way under the pinned search path.
    pub fn run_as(mut self, owner: pg_sys::Oid) -> CachedPlan {
        self.owner = Some(owner);
        self
    }

    /// Runs the statement with `values` (`None` = NULL) and returns the number of rows it
    /// processed. Connects to SPI for the call; in a transaction, as everything SQL calls runs.
    /// Each value must be of its parameter's type (checked: a value of another type is a bug of
    /// the caller, raised as an internal error).
    pub fn execute(&self, values: &[Option<Typed>], expected: u32) -> u64 {
        self.check(values);
        // SAFETY: `values` match `self.argtypes` (checked above), which is what run_with_rights
        // (and so `run`) relies on.
        unsafe { self.run_with_rights(values, expected, false).0 }
    }

    /// Like [`CachedPlan::execute`], for a statement with a RETURNING list: also returns the first
    /// row returned, its values copied out of SPI's memory (`None` = NULL).
    pub fn execute_returning(
        &self,
        values: &[Option<Typed>],
        expected: u32,
    ) -> Option<Vec<Option<Typed>>> {
        self.check(values);
        // SAFETY: as for `execute`.
        unsafe { self.run_with_rights(values, expected, true).1 }
    }

    /// Checks that `values` are one per parameter, each of its parameter's type or NULL.
    #[inline]
    fn check(&self, values: &[Option<Typed>]) {
        let fits = values.len() == self.argtypes.len()
            && values
                .iter()
                .zip(&self.argtypes)
                .all(|(value, &typid)| value.is_none_or(|v| v.typid() == typid));
        if !fits {
            failed(
                &self.sql,
                format!("parameters of types {values:?} for {:?}", self.argtypes),
            );
        }
    }

    /// # Safety
    /// `values` match `self.argtypes` ([`CachedPlan::check`]).
    unsafe fn run_with_rights(
        &self,
        values: &[Option<Typed>],
        expected: u32,
        returning: bool,
    ) -> (u64, Option<Vec<Option<Typed>>>) {
        match self.owner {
            // SAFETY: `values` match `argtypes` (`# Safety`); as_user runs the closure right here.
            Some(owner) => {
                super::security::as_user(owner, || unsafe { self.run(values, expected, returning) })
            }
            // SAFETY: as above.
            None => super::security::with_safe_search_path(|| unsafe {
                self.run(values, expected, returning)
            }),
        }
    }

    /// # Safety
    /// `values` match `self.argtypes` ([`CachedPlan::check`]).
    unsafe fn run(
        &self,
        values: &[Option<Typed>],
        expected: u32,
        returning: bool,
    ) -> (u64, Option<Vec<Option<Typed>>>) {
        // SAFETY: SPI is connected and finished here; the kept plan lives until Drop; the
        // parameters are of the plan's argument types (`# Safety`); a returned row's values are
        // read by the result's own descriptor and copied out before SPI_finish.
        unsafe {
            if pg_sys::SPI_connect() != pg_sys::SPI_OK_CONNECT as i32 {
                failed(&self.sql, "SPI_connect failed".into());
            }
            let mut plan = self.plan.get();
            if plan.is_null() {
                let Ok(sql) = CString::new(self.sql.as_str()) else {
                    failed(&self.sql, "a NUL byte in the statement".into());
                };
                let mut argtypes = self.argtypes.clone();
                plan =
                    pg_sys::SPI_prepare(sql.as_ptr(), argtypes.len() as i32, argtypes.as_mut_ptr());
                if plan.is_null() || pg_sys::SPI_keepplan(plan) != 0 {
                    failed(&self.sql, "SPI_prepare failed".into());
                }
                self.plan.set(plan);
            }
            let mut datums: Vec<pg_sys::Datum> = values
                .iter()
                .map(|v| v.map_or(pg_sys::Datum::from(0), Typed::datum))
                .collect();
            let mut nulls: Vec<std::ffi::c_char> = values
                .iter()
                .map(|v| if v.is_some() { b' ' } else { b'n' } as std::ffi::c_char)
                .collect();
            nulls.push(0);
            let rc = pg_sys::SPI_execute_plan(plan, datums.as_mut_ptr(), nulls.as_ptr(), false, 0);
            if rc != expected as i32 {
                failed(&self.sql, format!("unexpected SPI result {rc}"));
            }
            let processed = pg_sys::SPI_processed;
            let mut first_row = None;
            if returning && processed > 0 {
                // Copy the first row's values into the caller's memory before SPI_finish frees it.
                let table = &*pg_sys::SPI_tuptable;
                let tuple = *table.vals;
                let natts = (*table.tupdesc).natts;
                let attrs = super::compat::attributes(table.tupdesc);
                first_row = Some(
                    (1..=natts)
                        .map(|i| {
                            let mut isnull = false;
                            let value = pg_sys::SPI_getbinval(tuple, table.tupdesc, i, &mut isnull);
                            let att = &attrs[i as usize - 1];
                            (!isnull).then(|| {
                                let copy = pg_sys::SPI_datumTransfer(
                                    value,
                                    att.attbyval,
                                    att.attlen as i32,
                                );
                                Typed::new(att.atttypid, copy)
                            })
                        })
                        .collect(),
                );
            }
            pg_sys::SPI_finish();
            (processed, first_row)
        }
    }
}

impl Drop for CachedPlan {
    fn drop(&mut self) {
        let plan = self.plan.replace(std::ptr::null_mut());
        if !plan.is_null() {
            // SAFETY: the plan was kept with SPI_keepplan by this value and is freed once; owners
            // are dropped only when no trigger call uses them (they live behind an `Rc`).
            unsafe { pg_sys::SPI_freeplan(plan) };
        }
    }
}

/// Sleeps `ms` milliseconds, interruptibly (`pg_sleep`, which checks for interrupts).
pub fn sleep_ms(ms: u64) {
    if let Err(e) = read_one::<String>(
        "SELECT pg_catalog.pg_sleep($1)::pg_catalog.text",
        &[(ms as f64 / 1000.0).into()],
    ) {
        failed("SELECT pg_catalog.pg_sleep($1)", e.to_string())
    }
}

//! An enum setting registered by hand, with a check hook that lets only a superuser choose one of
//! its values in a session (pgrx's `GucRegistry` takes no check hook).

use std::cell::UnsafeCell;
use std::ffi::{c_int, c_void, CStr};

use pgrx::pg_sys::{self, GucSource};

/// One option of a [`GuardedEnum`] (the last one is [`END`]).
pub const fn option(name: &'static CStr, value: c_int) -> pg_sys::config_enum_entry {
    pg_sys::config_enum_entry {
        name: name.as_ptr(),
        val: value,
        hidden: false,
    }
}

/// The entry that ends a [`GuardedEnum`]'s options, as `DefineCustomEnumVariable` expects.
pub const END: pg_sys::config_enum_entry = pg_sys::config_enum_entry {
    name: std::ptr::null(),
    val: 0,
    hidden: false,
};

/// The value only a superuser may choose in a session, and why (the check's DETAIL).
pub trait Restricted {
    const VALUE: c_int;
    const DETAIL: &'static CStr;
}

/// An enum setting: its value (written by PostgreSQL's GUC code), its options ending with
/// [`END`], and `R`, the value only a superuser may choose.
pub struct GuardedEnum<const N: usize, R: Restricted> {
    value: UnsafeCell<c_int>,
    options: [pg_sys::config_enum_entry; N],
    _restricted: std::marker::PhantomData<R>,
}

// SAFETY: a backend runs one thread, and PostgreSQL writes the value only from it; the options
// are immutable and point to static strings.
unsafe impl<const N: usize, R: Restricted> Sync for GuardedEnum<N, R> {}

impl<const N: usize, R: Restricted> GuardedEnum<N, R> {
    pub const fn new(boot: c_int, options: [pg_sys::config_enum_entry; N]) -> Self {
        GuardedEnum {
            value: UnsafeCell::new(boot),
            options,
            _restricted: std::marker::PhantomData,
        }
    }

    /// The setting's value.
    pub fn get(&self) -> c_int {
        // SAFETY: a read of a value only this backend's GUC code writes, never while this runs.
        unsafe { *self.value.get() }
    }

    /// Registers the setting (once, at library load: `_PG_init`), user-settable, with `boot`
    /// as its default.
    pub fn define(&'static self, name: &'static CStr, short: &'static CStr, long: &'static CStr) {
        assert!(self.options[N - 1].name.is_null(), "options end with END");
        // SAFETY: the value and options live as long as the library (`&'static self`), the
        // options end with the NULL entry, and the names are static strings.
        unsafe {
            pg_sys::DefineCustomEnumVariable(
                name.as_ptr(),
                short.as_ptr(),
                long.as_ptr(),
                self.value.get(),
                *self.value.get(),
                self.options.as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                0,
                Some(superuser_only::<R>),
                None,
                None,
            );
        }
    }
}

/// The check hook: `R::VALUE` is refused (`42501`, with `R::DETAIL`) to a role that is not a
/// superuser, in a session (`SET`, connection options) or for a role or database (`ALTER ...
/// SET`, checked when it is run). Values from the server's configuration are not checked.
///
/// No Rust value with a destructor lives in this frame: an error PostgreSQL raises inside it
/// (a catalog read of the role) passes through it as through C.
unsafe extern "C-unwind" fn superuser_only<R: Restricted>(
    newval: *mut c_int,
    _extra: *mut *mut c_void,
    source: GucSource::Type,
) -> bool {
    // SAFETY: PostgreSQL passes the proposed value; the privilege check reads the current role's
    // catalog entry, which needs a transaction (checked first); the DETAIL is copied with pstrdup
    // as GUC_check_errdetail does.
    unsafe {
        let checked_source = matches!(
            source,
            GucSource::PGC_S_TEST | GucSource::PGC_S_CLIENT | GucSource::PGC_S_SESSION
        );
        if *newval != R::VALUE
            || !checked_source
            || !pg_sys::IsTransactionState()
            || pg_sys::superuser()
        {
            return true;
        }
        pg_sys::GUC_check_errcode(pgrx::PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE as c_int);
        pg_sys::GUC_check_errdetail_string = pg_sys::pstrdup(R::DETAIL.as_ptr());
        false
    }
}

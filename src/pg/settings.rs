//! Values as text that reads the same on every node: the settings that change how values print
//! and parse, pinned for a piece of work, and a type's text output and input functions.
//!
//! A value's text depends on the session: `DateStyle`, `IntervalStyle` and `TimeZone` change how
//! times print, `extra_float_digits <= 0` rounds floats, `bytea_output` and `lc_monetary` change
//! bytea and money, `search_path` how `regclass` and its kin name objects. [`pinned`] sets them to
//! one value for a scope, so that the text of a value is the same on every node and in every
//! session, and reads back as the very value it came from.

use std::cell::UnsafeCell;
use std::ffi::{c_char, CStr};

use pgrx::pg_sys;

use super::datum::Typed;

/// The settings [`pinned`] sets, and their values.
pub const PINNED: [(&CStr, &CStr); 8] = [
    (c"DateStyle", c"ISO, MDY"),
    (c"IntervalStyle", c"postgres"),
    (c"extra_float_digits", c"3"),
    (c"TimeZone", c"UTC"),
    (c"bytea_output", c"hex"),
    (c"lc_monetary", c"C"),
    (c"xmloption", c"content"),
    (c"search_path", SAFE_SEARCH_PATH),
];

/// The `search_path` under which no object of the session's can stand in for a built-in one:
/// every value printed here, and every statement run with lent rights (`pg::security`).
pub const SAFE_SEARCH_PATH: &CStr = c"pg_catalog, pg_temp";

/// Runs `f` with the settings of [`PINNED`], then puts back the session's own values, also when
/// `f` raises an error (see [`with_settings`]).
pub fn pinned<R>(f: impl FnOnce() -> R) -> R {
    with_settings(&PINNED, f)
}

/// Runs `f` with `settings` (name, value) set, then puts back the session's own values, also when
/// `f` raises an error (as a function's `SET` clause does: a GUC nest level of its own, popped on
/// the way out; (sub)transaction abort would pop it too).
pub fn with_settings<R>(settings: &[(&CStr, &CStr)], f: impl FnOnce() -> R) -> R {
    struct Restore(i32);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: pops the nest level `with_settings` opened (and any deeper one left open),
            // restoring every value saved in it.
            unsafe { pg_sys::AtEOXact_GUC(!std::thread::panicking(), self.0) }
        }
    }
    // SAFETY: a new nest level, popped by `Restore` whatever happens next; each setting is saved
    // in it (GUC_ACTION_SAVE) and set with a session's rights, all of them being user settings.
    // An unknown name or a refused value raises an ERROR (elevel 0 means ERROR for a session).
    let _restore = unsafe {
        let restore = Restore(pg_sys::NewGUCNestLevel());
        for (name, value) in settings {
            pg_sys::set_config_option(
                name.as_ptr(),
                value.as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                0,
                false,
            );
        }
        restore
    };
    f()
}

/// [`pinned`] when `needed`, else `f` alone.
pub fn pinned_if<R>(needed: bool, f: impl FnOnce() -> R) -> R {
    if needed {
        pinned(f)
    } else {
        f()
    }
}

/// A type's I/O function, with a memory context of its own for the function's cache
/// (`fn_extra`), so that it may live as long as the value does, and is freed with it.
struct Function {
    /// `UnsafeCell`: PostgreSQL writes `fn_extra` through this pointer on calls.
    info: Box<UnsafeCell<pg_sys::FmgrInfo>>,
    context: pg_sys::MemoryContext,
}

impl Function {
    /// Function `oid`, looked up in the catalogs (in a transaction, as everything SQL calls runs).
    fn of(oid: pg_sys::Oid) -> Function {
        // SAFETY: a new context under TopMemoryContext, deleted only by `drop`; fmgr_info_cxt
        // fills the zeroed FmgrInfo, which stays at its address in the box, and puts the
        // function's cache in that context.
        unsafe {
            let context = pg_sys::AllocSetContextCreateExtended(
                pg_sys::TopMemoryContext,
                c"mm_conflict type I/O".as_ptr(),
                pg_sys::ALLOCSET_SMALL_MINSIZE as usize,
                pg_sys::ALLOCSET_SMALL_INITSIZE as usize,
                pg_sys::ALLOCSET_SMALL_MAXSIZE as usize,
            );
            let info = Box::new(UnsafeCell::new(std::mem::zeroed()));
            pg_sys::fmgr_info_cxt(oid, info.get(), context);
            Function { info, context }
        }
    }
}

impl Drop for Function {
    fn drop(&mut self) {
        // SAFETY: made by `of` and deleted only here; nothing else points into it (the FmgrInfo,
        // which does, goes with this value).
        unsafe { pg_sys::MemoryContextDelete(self.context) }
    }
}

/// A type's text output function.
pub struct Output {
    function: Function,
    /// The type it prints.
    typid: pg_sys::Oid,
}

impl Output {
    /// The output function of type `typid`, an existing type (catalog lookups: in a transaction).
    pub fn of(typid: pg_sys::Oid) -> Output {
        let (mut func, mut varlena) = (pg_sys::InvalidOid, false);
        // SAFETY: a catalog lookup, which raises for a type that does not exist.
        unsafe { pg_sys::getTypeOutputInfo(typid, &mut func, &mut varlena) };
        Output {
            function: Function::of(func),
            typid,
        }
    }

    /// The type it prints.
    pub fn typid(&self) -> pg_sys::Oid {
        self.typid
    }

    /// The text of `value`, palloc'd in the current memory context.
    ///
    /// # Safety
    /// `value` is a valid, non-NULL datum of the type.
    pub(super) unsafe fn cstring(&self, value: pg_sys::Datum) -> *mut c_char {
        // SAFETY: a valid datum of the function's type (`# Safety`).
        unsafe { pg_sys::OutputFunctionCall(self.function.info.get(), value) }
    }

    /// The text of `value`, a value of the type (checked: another is a bug of the caller, raised
    /// as an internal error), as a Rust string; `None` when it is not UTF-8 (a type's output is
    /// in the database's encoding).
    pub fn string(&self, value: Typed) -> Option<String> {
        if value.typid() != self.typid {
            panic!(
                "{value:?} printed by the output function of type {:?}",
                self.typid
            );
        }
        // SAFETY: a valid datum of the function's type (checked above); the palloc'd text is
        // read, copied and freed here.
        unsafe {
            let text = self.cstring(value.datum());
            let string = CStr::from_ptr(text).to_str().ok().map(str::to_owned);
            pg_sys::pfree(text.cast());
            string
        }
    }
}

/// A column type's text input function.
pub struct Input {
    function: Function,
    typid: pg_sys::Oid,
    typioparam: pg_sys::Oid,
    typmod: i32,
}

impl Input {
    /// The input function of type `typid` (an existing type; catalog lookups: in a transaction)
    /// with modifier `typmod` (a column's `atttypmod`).
    pub fn of(typid: pg_sys::Oid, typmod: i32) -> Input {
        let (mut func, mut typioparam) = (pg_sys::InvalidOid, pg_sys::InvalidOid);
        // SAFETY: a catalog lookup, which raises for a type that does not exist.
        unsafe { pg_sys::getTypeInputInfo(typid, &mut func, &mut typioparam) };
        Input {
            function: Function::of(func),
            typid,
            typioparam,
            typmod,
        }
    }

    /// The value `text` reads as (`None`: NULL, which the input function still sees when it is
    /// not strict, so that a domain checks its `NOT NULL`); raises the input function's error on
    /// text that is not a value of the type (in a transaction, as everything SQL calls runs).
    pub fn value(&self, text: Option<&CStr>) -> Option<Typed> {
        let text_ptr = text.map_or(std::ptr::null_mut(), |t| t.as_ptr().cast_mut());
        // SAFETY: InputFunctionCall takes a NUL-terminated string (or NULL) that it does not
        // modify, and the type's I/O parameter and modifier looked up by `of`; what it returns
        // for a string is a value of the type.
        unsafe {
            let value = pg_sys::InputFunctionCall(
                self.function.info.get(),
                text_ptr,
                self.typioparam,
                self.typmod,
            );
            text.map(|_| Typed::new(self.typid, value))
        }
    }
}

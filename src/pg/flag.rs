//! A backend-local flag raised for the life of a guard, and restored when the guard drops (also
//! when an error unwinds through it).

use std::cell::Cell;
use std::thread::LocalKey;

pub struct ScopedFlag {
    flag: &'static LocalKey<Cell<bool>>,
    previous: bool,
}

impl ScopedFlag {
    pub fn raise(flag: &'static LocalKey<Cell<bool>>) -> ScopedFlag {
        ScopedFlag {
            flag,
            previous: flag.with(|f| f.replace(true)),
        }
    }
}

impl Drop for ScopedFlag {
    fn drop(&mut self) {
        self.flag.with(|f| f.set(self.previous));
    }
}

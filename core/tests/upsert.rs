//! `engine::local_insert` for a row of `INSERT ... ON CONFLICT DO UPDATE`: PostgreSQL waits for
//! the key's stored row after the trigger, and a DELETE holds its row while its trigger waits for
//! the key lock. So the engine must never wait for a row, or for a writer, while holding the key
//! lock, and must go back to the start (where the delete's tombstone is met) when the row went.
//! A scripted store records what the engine does, in order.

use std::collections::VecDeque;

use mm_conflict_core::engine::{self, Action, Local, Lookup, Resolution, Stored};
use mm_conflict_core::{
    Clock, Criterion, Direction, LocalConflictMode, Policy, RowStamps, Store, Tombstone, Tombstones,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Lock,
    Unlock,
    Wait,
    FindTombstone,
    FindRow,
    /// With whether the key lock was held then.
    LockRow(bool),
    LockValues,
}

#[derive(Clone, Copy)]
enum Probe {
    Absent,
    Found,
    InProgress,
}

#[derive(Default)]
struct Scripted {
    events: Vec<Event>,
    locked: bool,
    rows: VecDeque<Probe>,
    row_locks: VecDeque<bool>,
}

impl Tombstones for Scripted {
    type Waiter = ();
    fn lock_key(&mut self) {
        self.locked = true;
        self.events.push(Event::Lock);
    }
    fn unlock_key(&mut self) {
        self.locked = false;
        self.events.push(Event::Unlock);
    }
    fn wait(&mut self, _: ()) {
        assert!(!self.locked, "waited while holding the key lock");
        self.events.push(Event::Wait);
    }
    fn find_tombstone(&mut self) -> Lookup<Tombstone, ()> {
        assert!(self.locked);
        self.events.push(Event::FindTombstone);
        Lookup::Absent
    }
    fn record_tombstone(&mut self, _: &Tombstone) {
        unreachable!("an insert records no tombstone")
    }
    fn remove_tombstone(&mut self) {
        unreachable!("an insert removes no tombstone")
    }
}

impl Store for Scripted {
    type Row = ();
    fn keyed(&self) -> bool {
        true
    }
    fn stamps(&self, _: &()) -> RowStamps {
        RowStamps::default()
    }
    fn find_row(&mut self) -> Lookup<Stored<()>, ()> {
        assert!(self.locked, "looked the row up without the key lock");
        self.events.push(Event::FindRow);
        match self.rows.pop_front().expect("a scripted lookup") {
            Probe::Absent => Lookup::Absent,
            Probe::InProgress => Lookup::InProgress(()),
            Probe::Found => Lookup::Found(Stored {
                stamps: RowStamps::default(),
                delta: None,
                row: None,
            }),
        }
    }
    fn lock_row(&mut self) -> bool {
        self.events.push(Event::LockRow(self.locked));
        self.row_locks.pop_front().expect("a scripted row lock")
    }
    fn overwrite(&mut self, _: &()) -> bool {
        unreachable!()
    }
    fn take_row(&mut self) -> Option<()> {
        unreachable!()
    }
    fn put_row(&mut self, _: &()) {
        unreachable!()
    }
    fn report(&mut self, _: &Resolution<()>) {}
    fn find_unique_conflict(&mut self, _: &()) -> Lookup<Stored<()>, ()> {
        unreachable!()
    }
    fn bury(&mut self, _: &(), _: &Tombstone) -> bool {
        unreachable!()
    }
    fn lock_unique_values(&mut self, _: &(), _: Option<&()>) {
        assert!(self.locked);
        self.events.push(Event::LockValues);
    }
}

fn insert(rows: &[Probe], row_locks: &[bool], upsert: bool) -> (Scripted, Action) {
    let policy = Policy {
        node_id: 1,
        // Under `first` the tombstone lookup is never skipped: every pass shows it.
        criterion: Criterion::LastXactTime,
        direction: Direction::First,
        preferred_node: None,
        delta_columns: Vec::new(),
    };
    let local = Local {
        clock: Clock {
            xact_start: 1_000,
            wall: 2_000,
        },
        mode: LocalConflictMode::Error,
    };
    let mut store = Scripted {
        rows: rows.iter().copied().collect(),
        row_locks: row_locks.iter().copied().collect(),
        ..Scripted::default()
    };
    let action = engine::local_insert(&mut store, &policy, local, &(), upsert).unwrap();
    assert!(
        store.rows.is_empty() && store.row_locks.is_empty(),
        "script not used up"
    );
    (store, action)
}

use Event::*;

#[test]
fn a_plain_insert_never_looks_for_the_row() {
    let (store, action) = insert(&[], &[], false);
    assert_eq!(store.events, [Lock, FindTombstone, LockValues]);
    assert!(
        store.locked,
        "the key lock covers the row until its index entry exists"
    );
    assert!(matches!(action, Action::Stamp(_)));
}

#[test]
fn an_upsert_of_a_new_key_keeps_the_key_lock() {
    let (store, action) = insert(&[Probe::Absent], &[], true);
    assert_eq!(store.events, [Lock, FindTombstone, FindRow, LockValues]);
    assert!(store.locked);
    assert!(matches!(action, Action::Stamp(_)));
}

#[test]
fn an_upsert_of_a_stored_row_locks_it_without_the_key_lock() {
    let (store, action) = insert(&[Probe::Found], &[true], true);
    assert_eq!(
        store.events,
        [Lock, FindTombstone, FindRow, Unlock, LockRow(false)]
    );
    assert!(!store.locked, "nothing is inserted: no key lock is kept");
    assert!(matches!(action, Action::Stamp(_)));
}

#[test]
fn an_upsert_whose_row_went_starts_again_and_meets_the_tombstone() {
    let (store, _) = insert(&[Probe::Found, Probe::Absent], &[false], true);
    assert_eq!(
        store.events,
        [
            Lock,
            FindTombstone,
            FindRow,
            Unlock,
            LockRow(false),
            Lock,
            FindTombstone,
            FindRow,
            LockValues
        ]
    );
    assert!(store.locked);
}

#[test]
fn an_upsert_waits_for_a_writer_without_the_key_lock() {
    let (store, _) = insert(&[Probe::InProgress, Probe::Found], &[true], true);
    assert_eq!(
        store.events,
        [
            Lock,
            FindTombstone,
            FindRow,
            Unlock,
            Wait,
            Lock,
            FindTombstone,
            FindRow,
            Unlock,
            LockRow(false)
        ]
    );
}

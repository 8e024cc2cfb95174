//! Reading columns of heap tuples and tuple descriptors.

use std::ffi::CStr;

use pgrx::pg_sys;

use super::compat;
pub use super::datum::{varlena_bytes, Typed};

/// The attribute of column `attnum` (1-based).
///
/// # Safety
/// `tupdesc` is valid and `attnum` within it.
pub unsafe fn attribute<'a>(
    tupdesc: pg_sys::TupleDesc,
    attnum: pg_sys::AttrNumber,
) -> &'a pg_sys::FormData_pg_attribute {
    // SAFETY: the caller guarantees attnum is one of the descriptor's.
    unsafe { &compat::attributes(tupdesc)[attnum as usize - 1] }
}

/// The name of an attribute.
pub fn attname(att: &pg_sys::FormData_pg_attribute) -> &str {
    // SAFETY: attname is NUL-terminated NameData; names are valid UTF-8 in UTF-8 databases,
    // and a name that is not is read as empty (it then matches nothing).
    unsafe { CStr::from_ptr(att.attname.data.as_ptr()) }
        .to_str()
        .unwrap_or("")
}

/// The live (not dropped) attributes of a descriptor, in attribute-number order.
///
/// # Safety
/// `tupdesc` must be valid while the iterator is used.
pub unsafe fn live_attributes<'a>(
    tupdesc: pg_sys::TupleDesc,
) -> impl Iterator<Item = &'a pg_sys::FormData_pg_attribute> {
    // SAFETY: the caller keeps `tupdesc` valid while the iterator (and so the slice) is used
    // (`# Safety`), which is what compat::attributes needs for the lifetime `'a`.
    unsafe { compat::attributes(tupdesc) }
        .iter()
        .filter(|a| !a.attisdropped)
}

/// Column `attnum` of `tuple` (`None`: NULL).
///
/// # Safety
/// `tuple` is valid and described by `tupdesc`; `attnum` is one of its columns.
pub unsafe fn get(
    tuple: pg_sys::HeapTuple,
    tupdesc: pg_sys::TupleDesc,
    attnum: pg_sys::AttrNumber,
) -> Option<pg_sys::Datum> {
    let mut isnull = false;
    // SAFETY: `tuple` is valid and described by `tupdesc`, and `attnum` is one of its columns
    // (`# Safety`), so heap_getattr reads an existing attribute; `isnull` is a live local.
    let datum = unsafe { pg_sys::heap_getattr(tuple, attnum as i32, tupdesc, &mut isnull) };
    (!isnull).then_some(datum)
}

/// All columns of `tuple`, by attribute number − 1 (`None`: NULL).
///
/// # Safety
/// `tuple` is valid and described by `tupdesc`.
pub unsafe fn deform(
    tuple: pg_sys::HeapTuple,
    tupdesc: pg_sys::TupleDesc,
) -> Vec<Option<pg_sys::Datum>> {
    // SAFETY: the arrays are sized to the descriptor, as heap_deform_tuple requires.
    unsafe {
        let natts = (*tupdesc).natts as usize;
        let mut values = vec![pg_sys::Datum::from(0); natts];
        let mut nulls = vec![false; natts];
        pg_sys::heap_deform_tuple(tuple, tupdesc, values.as_mut_ptr(), nulls.as_mut_ptr());
        values
            .into_iter()
            .zip(nulls)
            .map(|(v, null)| (!null).then_some(v))
            .collect()
    }
}

/// Columns `attnums` of `tuple` (`None`: NULL), read in one pass over the tuple: cheaper than a
/// [`get`] per column when the columns follow a variable-width or NULL one (each `get` would walk
/// the tuple from its start).
///
/// # Safety
/// `tuple` is valid and described by `tupdesc`; `attnums` are its columns.
pub unsafe fn get_many<const N: usize>(
    tuple: pg_sys::HeapTuple,
    tupdesc: pg_sys::TupleDesc,
    attnums: [pg_sys::AttrNumber; N],
) -> [Option<pg_sys::Datum>; N] {
    const ON_STACK: usize = 32;
    // SAFETY: `tuple` is valid and described by `tupdesc` (`# Safety`).
    let natts = unsafe { (*tupdesc).natts } as usize;
    let mut values_stack = [pg_sys::Datum::from(0); ON_STACK];
    let mut nulls_stack = [true; ON_STACK];
    let (mut values_heap, mut nulls_heap) = (Vec::new(), Vec::new());
    let (values, nulls): (&mut [pg_sys::Datum], &mut [bool]) = if natts <= ON_STACK {
        (&mut values_stack[..], &mut nulls_stack[..])
    } else {
        values_heap.resize(natts, pg_sys::Datum::from(0));
        nulls_heap.resize(natts, true);
        (&mut values_heap[..], &mut nulls_heap[..])
    };
    // SAFETY: both arrays hold at least natts entries, as heap_deform_tuple requires; `tuple` is
    // valid and described by `tupdesc` (`# Safety`).
    unsafe {
        pg_sys::heap_deform_tuple(tuple, tupdesc, values.as_mut_ptr(), nulls.as_mut_ptr());
    }
    attnums.map(|a| {
        let i = a as usize - 1;
        (!nulls[i]).then_some(values[i])
    })
}

/// A copy of `tuple` with the columns of `changes` replaced (`None`: NULL), palloc'd in the
/// current memory context.
///
/// # Safety
/// `tuple` is valid and described by `tupdesc`; the changes' columns are its attribute numbers
/// and their values datums of those columns' types.
pub unsafe fn modify(
    tuple: pg_sys::HeapTuple,
    tupdesc: pg_sys::TupleDesc,
    changes: impl ExactSizeIterator<Item = (pg_sys::AttrNumber, Option<pg_sys::Datum>)>,
) -> pg_sys::HeapTuple {
    // The arrays PostgreSQL reads, on the stack for the few columns a trigger replaces (a
    // trigger fires per row: no allocation there).
    const ON_STACK: usize = 8;
    let n = changes.len();
    let (mut c_stack, mut d_stack, mut n_stack) = (
        [0i32; ON_STACK],
        [pg_sys::Datum::from(0); ON_STACK],
        [false; ON_STACK],
    );
    let (mut c_heap, mut d_heap, mut n_heap) = (Vec::new(), Vec::new(), Vec::new());
    let (c, d, nl): (&mut [i32], &mut [pg_sys::Datum], &mut [bool]) = if n <= ON_STACK {
        (&mut c_stack[..n], &mut d_stack[..n], &mut n_stack[..n])
    } else {
        c_heap.resize(n, 0);
        d_heap.resize(n, pg_sys::Datum::from(0));
        n_heap.resize(n, false);
        (&mut c_heap[..], &mut d_heap[..], &mut n_heap[..])
    };
    for (i, (attnum, value)) in changes.take(n).enumerate() {
        c[i] = i32::from(attnum);
        d[i] = value.unwrap_or(pg_sys::Datum::from(0));
        nl[i] = value.is_none();
    }
    // SAFETY: the three arrays hold `n` entries each, one per replaced column; `tuple` is valid
    // and described by `tupdesc`, and the columns are its attribute numbers (`# Safety`).
    unsafe {
        pg_sys::heap_modify_tuple_by_cols(
            tuple,
            tupdesc,
            n as i32,
            c.as_mut_ptr(),
            d.as_mut_ptr(),
            nl.as_mut_ptr(),
        )
    }
}

/// A value to put in a column ([`TupleRef::with`]), checked against the column's type there: a
/// tuple is never formed with a value of another type.
#[derive(Clone, Copy, Debug)]
pub enum Value {
    Bool(bool),
    Int2(i16),
    /// A `timestamp` or `timestamptz`: microseconds since 2000-01-01.
    Micros(i64),
    Typed(Typed),
}

impl Value {
    /// The datum, if the value fits a column of type `typid`.
    #[inline]
    fn datum_for(self, typid: pg_sys::Oid) -> Option<pg_sys::Datum> {
        match self {
            Value::Bool(b) if typid == pg_sys::BOOLOID => Some(pg_sys::Datum::from(b)),
            Value::Int2(i) if typid == pg_sys::INT2OID => Some(pg_sys::Datum::from(i)),
            Value::Micros(m)
                if typid == pg_sys::TIMESTAMPOID || typid == pg_sys::TIMESTAMPTZOID =>
            {
                Some(pg_sys::Datum::from(m))
            }
            Value::Typed(t) if t.typid() == typid => Some(t.datum()),
            _ => None,
        }
    }
}

#[cold]
#[inline(never)]
fn wrong_type(attnum: pg_sys::AttrNumber, value: Value, typid: pg_sys::Oid) -> ! {
    panic!("{value:?} does not fit column {attnum} of type {typid:?}");
}

/// The columns of `tuple` whose values are stored out of line (TOAST pointers to chunks already
/// on disk), each fetched back in full: (attribute number, datum), palloc'd in the current memory
/// context. Empty, and cheap, for a tuple without such values.
///
/// # Safety
/// `tuple` is valid and described by `tupdesc`.
pub unsafe fn external_values(
    tuple: pg_sys::HeapTuple,
    tupdesc: pg_sys::TupleDesc,
) -> Vec<(pg_sys::AttrNumber, Typed)> {
    // SAFETY: `tuple` (with its t_data header) is valid and described by `tupdesc` (`# Safety`),
    // as deform and live_attributes need; a varlena datum of the tuple is read as such, and an
    // on-disk TOAST pointer is fetched by PostgreSQL's own detoaster.
    unsafe {
        if u32::from((*(*tuple).t_data).t_infomask) & pg_sys::HEAP_HASEXTERNAL == 0 {
            return Vec::new();
        }
        let values = deform(tuple, tupdesc);
        live_attributes(tupdesc)
            .filter(|att| att.attlen == -1)
            .filter_map(|att| {
                let datum = values[att.attnum as usize - 1]?;
                let ptr = datum.cast_mut_ptr::<pg_sys::varlena>();
                let on_disk = pgrx::varlena::varatt_is_1b_e(ptr)
                    && u32::from(pgrx::varlena::vartag_external(ptr))
                        == pg_sys::vartag_external::VARTAG_ONDISK;
                on_disk.then(|| {
                    let full = pg_sys::Datum::from(pg_sys::detoast_external_attr(ptr));
                    (att.attnum, Typed::new(att.atttypid, full))
                })
            })
            .collect()
    }
}

#[cold]
#[inline(never)]
fn out_of_range(attnum: pg_sys::AttrNumber, natts: usize) -> ! {
    panic!("column number {attnum} is not one of the tuple's {natts} columns");
}

/// A heap tuple and the descriptor that describes it, both valid for `'a`: its columns read by
/// number without `unsafe` (names: `pg::relation::columns_of`). Column numbers are checked against
/// the descriptor (a number outside it is a bug of the caller, raised as an error, never a read
/// out of bounds).
#[derive(Clone, Copy, Debug)]
pub struct TupleRef<'a> {
    tuple: pg_sys::HeapTuple,
    desc: pg_sys::TupleDesc,
    /// The descriptor's attributes, found once (from 18 on that takes a call).
    attributes: &'a [pg_sys::FormData_pg_attribute],
    _valid: std::marker::PhantomData<&'a pg_sys::HeapTupleData>,
}

impl<'a> TupleRef<'a> {
    /// # Safety
    /// `tuple` is a valid heap tuple described by `desc`; neither is freed or changed while `'a`
    /// lasts (a trigger's tuples while it fires; a copy palloc'd in a context that outlives `'a`).
    #[inline]
    pub unsafe fn new(tuple: pg_sys::HeapTuple, desc: pg_sys::TupleDesc) -> TupleRef<'a> {
        TupleRef {
            tuple,
            desc,
            // SAFETY: the descriptor is valid for 'a (`# Safety`).
            attributes: unsafe { compat::attributes(desc) },
            _valid: std::marker::PhantomData,
        }
    }

    /// The tuple, to hand back to PostgreSQL (a trigger's result).
    #[inline]
    pub fn raw(self) -> pg_sys::HeapTuple {
        self.tuple
    }

    /// Where the tuple is stored (invalid for a tuple made in memory).
    #[inline]
    pub fn tid(self) -> pg_sys::ItemPointerData {
        // SAFETY: the tuple is valid for 'a (`TupleRef::new`'s contract).
        unsafe { (*self.tuple).t_self }
    }

    #[inline]
    fn check(self, attnum: pg_sys::AttrNumber) {
        if attnum < 1 || attnum as usize > self.attributes.len() {
            out_of_range(attnum, self.attributes.len());
        }
    }

    /// The attribute of column `attnum`.
    #[inline]
    pub fn attribute(self, attnum: pg_sys::AttrNumber) -> &'a pg_sys::FormData_pg_attribute {
        self.check(attnum);
        &self.attributes[attnum as usize - 1]
    }

    /// Column `attnum` (`None`: NULL).
    #[inline]
    pub fn get(self, attnum: pg_sys::AttrNumber) -> Option<pg_sys::Datum> {
        self.check(attnum);
        // SAFETY: a valid tuple described by its descriptor (`new`), attnum one of its columns.
        unsafe { get(self.tuple, self.desc, attnum) }
    }

    /// Columns `attnums` read in one pass (see [`get_many`]).
    #[inline]
    pub fn get_many<const N: usize>(
        self,
        attnums: [pg_sys::AttrNumber; N],
    ) -> [Option<pg_sys::Datum>; N] {
        attnums.iter().for_each(|&a| self.check(a));
        // SAFETY: a valid tuple described by its descriptor (`new`), attnums its columns.
        unsafe { get_many(self.tuple, self.desc, attnums) }
    }

    /// Every column, by attribute number − 1.
    pub fn deform(self) -> Vec<Option<pg_sys::Datum>> {
        // SAFETY: a valid tuple described by its descriptor (`new`).
        unsafe { deform(self.tuple, self.desc) }
    }

    /// The values stored out of line, fetched back in full (see [`external_values`]).
    pub fn external_values(self) -> Vec<(pg_sys::AttrNumber, Typed)> {
        // SAFETY: a valid tuple described by its descriptor (`new`).
        unsafe { external_values(self.tuple, self.desc) }
    }

    /// The bytes of column `attnum`, a variable-length column (`text`, `bytea`: its data without
    /// the header, detoasted into the current context); `None`: NULL or not variable-length.
    pub fn bytes(self, attnum: pg_sys::AttrNumber) -> Option<Vec<u8>> {
        if self.attribute(attnum).attlen != -1 {
            return None;
        }
        // SAFETY: a non-NULL datum of a variable-length column is a varlena.
        self.get(attnum)
            .map(|datum| unsafe { varlena_bytes(datum) })
    }

    /// Column `attnum` with its type (`None`: NULL).
    #[inline]
    pub fn typed(self, attnum: pg_sys::AttrNumber) -> Option<Typed> {
        let typid = self.attribute(attnum).atttypid;
        // SAFETY: a non-NULL value of the column, whose type the descriptor gives.
        self.get(attnum)
            .map(|datum| unsafe { Typed::new(typid, datum) })
    }

    /// Columns `attnums` with their types (`None`: NULL), the tuple read once.
    pub fn typed_columns(self, attnums: &[pg_sys::AttrNumber]) -> Vec<Option<Typed>> {
        attnums.iter().for_each(|&a| self.check(a));
        let all = self.deform();
        attnums
            .iter()
            .map(|&a| {
                let typid = self.attributes[a as usize - 1].atttypid;
                // SAFETY: a non-NULL value of the column, whose type the descriptor gives.
                all[a as usize - 1].map(|datum| unsafe { Typed::new(typid, datum) })
            })
            .collect()
    }

    /// Column `attnum` as JSON, read by its own type (`null`: NULL); see [`Typed::json`].
    pub fn json(self, attnum: pg_sys::AttrNumber) -> serde_json::Value {
        self.typed(attnum)
            .map_or(serde_json::Value::Null, Typed::json)
    }

    /// Whether `desc` is the descriptor this tuple is read with.
    #[inline]
    pub fn described_by(self, desc: pg_sys::TupleDesc) -> bool {
        std::ptr::eq(self.desc, desc)
    }

    /// A copy of this tuple with the columns of `changes` replaced, palloc'd in the current
    /// memory context. Each value is checked against its column's type. (A trigger's result:
    /// the trigger module's `Firing::modified`.)
    ///
    /// # Safety
    /// The current memory context outlives `'a`.
    #[inline]
    pub unsafe fn with(self, changes: &[(pg_sys::AttrNumber, Value)]) -> TupleRef<'a> {
        let datums = changes.iter().map(|&(attnum, value)| {
            let typid = self.attribute(attnum).atttypid;
            match value.datum_for(typid) {
                Some(datum) => (attnum, Some(datum)),
                None => wrong_type(attnum, value, typid),
            }
        });
        TupleRef {
            // SAFETY: a valid tuple described by its descriptor (`new`); every column is one of
            // its own (`attribute` checks the number) and every value of that column's type
            // (checked above, before `modify` forms the tuple). The copy lives in the current
            // context, which outlives 'a (`# Safety`), described by the same descriptor.
            tuple: unsafe { modify(self.tuple, self.desc, datums) },
            ..self
        }
    }

    /// A copy palloc'd in the current memory context.
    ///
    /// # Safety
    /// The current memory context outlives `'b`.
    pub unsafe fn copy<'b>(self) -> TupleRef<'b> {
        // SAFETY: a valid tuple (`new`); the copy lives in the current context (`# Safety`), the
        // descriptor as long as the relation is open, which the caller's 'b does not outlast.
        unsafe {
            TupleRef {
                tuple: pg_sys::heap_copytuple(self.tuple),
                ..TupleRef::new(self.tuple, self.desc)
            }
        }
    }
}

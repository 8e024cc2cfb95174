//! Per-trigger cache of everything the engine needs to know about a replicated table: the parsed
//! policy, the attribute numbers of the bookkeeping and criterion columns, the primary key with
//! its equality and binary I/O functions, and the prepared statements of the rare paths.
//!
//! Built on the first firing of a trigger in a backend and dropped by a relcache invalidation
//! (ALTER TABLE, CREATE/DROP TRIGGER, …), so the per-row path does no catalog lookups.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use mm_conflict_core::{
    Criterion, Policy, RowStamps, COL_DELTA, COL_ISLOCAL, COL_NODEID, COL_STATTIME, COL_XACTTIME,
};
use pgrx::pg_sys;

use super::statements::{self, StatementColumn};
use crate::error::MmError;
use crate::pg::amount::{AmountType, AMOUNT_TYPES};
use crate::pg::key::IndexKey;
use crate::pg::names::{self, stable_hash};
use crate::pg::relation::{self, ColumnInfo, Open};
use crate::pg::spi::CachedPlan;
use crate::pg::trigger::{self, TriggerRef};
use crate::pg::tuple::{TupleRef, Typed};

pub struct RelInfo {
    pub relid: pg_sys::Oid,
    /// The table its changes are counted under: the root of its partition tree, or itself.
    pub report_relid: pg_sys::Oid,
    /// The table's stable name (`pg::names::identity`): its identity in tombstones, key locks and
    /// reports, the same on every node (unlike its OID) and in every session.
    pub table: String,
    /// Hash of `table`, the table part of the key lock.
    pub table_hash: u32,
    pub policy: Policy,
    pub att_islocal: pg_sys::AttrNumber,
    pub att_nodeid: pg_sys::AttrNumber,
    pub att_xacttime: pg_sys::AttrNumber,
    pub att_stattime: pg_sys::AttrNumber,
    /// The user criterion column, for `Criterion::Column`.
    pub att_criterion: Option<pg_sys::AttrNumber>,
    /// Whether a publication sends its changes (`pg::publication::is_published`): tombstones are
    /// recorded only for such a table (a temporary table, or one outside every publication, is
    /// not replicated, and its tombstones would be sent to peers that cannot resolve them).
    pub published: bool,
    pub primary_key: Option<IndexKey>,
    /// Its other unique keys, which a replicated row may collide on (see `pg::key::unique_keys`).
    pub unique_keys: Vec<IndexKey>,
    /// The delta columns (`policy.delta_columns`), when the table declares some.
    pub delta: Option<DeltaInfo>,
    /// Attribute numbers of the live (not dropped) columns: the parameters of the statements below.
    pub live_attnums: Vec<pg_sys::AttrNumber>,
    /// Their names, in the same order.
    pub live_names: Vec<String>,
    /// See [`statements::Statements`].
    pub overwrite: CachedPlan,
    pub resend_delete: CachedPlan,
    pub resend_insert: CachedPlan,
}

/// A table's delta columns and the column that holds their state.
pub struct DeltaInfo {
    /// `mm_delta` (text).
    pub att_state: pg_sys::AttrNumber,
    pub columns: Vec<DeltaColumn>,
}

pub struct DeltaColumn {
    pub name: String,
    pub attnum: pg_sys::AttrNumber,
    pub kind: AmountType,
}

thread_local! {
    static CACHE: RefCell<HashMap<pg_sys::Oid, Rc<RelInfo>>> = RefCell::new(HashMap::new());
    /// Set when an invalidation arrives while the map is borrowed; the next lookup flushes all.
    static FLUSH_ALL: Cell<bool> = const { Cell::new(false) };
}

/// Relcache invalidation callback: forget entries of `relid` (all entries for InvalidOid).
#[pgrx::pg_guard]
extern "C-unwind" fn invalidate(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    CACHE.with(|cache| match cache.try_borrow_mut() {
        Ok(mut map) if relid != pg_sys::InvalidOid => map.retain(|_, info| info.relid != relid),
        Ok(mut map) => map.clear(),
        Err(_) => FLUSH_ALL.with(|f| f.set(true)),
    });
    super::tombstones::invalidate(relid);
}

/// Called once from `_PG_init`: the callback only touches this backend's caches.
pub fn register_invalidation() {
    crate::pg::backend::on_relcache_invalidation(Some(invalidate));
}

/// The cached entry of trigger `tgoid`, if any (applying a pending flush of all entries first).
fn cached(tgoid: pg_sys::Oid) -> Option<Rc<RelInfo>> {
    if FLUSH_ALL.with(|f| f.replace(false)) {
        CACHE.with(|c| c.borrow_mut().clear());
    }
    CACHE.with(|c| c.borrow().get(&tgoid).cloned())
}

/// The cached entry for `trigger` on `rel`, built on first use.
pub fn lookup(rel: &impl Open, trigger: TriggerRef) -> Result<Rc<RelInfo>, MmError> {
    if let Some(info) = cached(trigger.oid()) {
        return Ok(info);
    }
    // Build without holding the borrow: catalog access below may run invalidation callbacks.
    let info = Rc::new(build(rel, trigger)?);
    CACHE.with(|c| c.borrow_mut().insert(trigger.oid(), Rc::clone(&info)));
    Ok(info)
}

/// The `mm_resolve` trigger of `rel` (its own, or cloned from a partitioned root), if it has one.
fn mm_resolve_trigger(rel: &impl Open) -> Option<TriggerRef> {
    // Only mm_resolve triggers are cached: a hit needs no catalog lookup.
    trigger::find_trigger(rel, |trigger| {
        cached(trigger.oid()).is_some()
            || names::function_is_named(trigger.function(), c"mm_resolve")
    })
}

/// The entry of the `mm_resolve` trigger of `rel`, if it has one (for tombstones, which name
/// their table but arrive without its trigger).
pub fn lookup_for(rel: &impl Open) -> Result<Option<Rc<RelInfo>>, MmError> {
    let Some(trigger) = mm_resolve_trigger(rel) else {
        return Ok(None);
    };
    lookup(rel, trigger).map(Some)
}

/// Whether `rel` has an `mm_resolve` trigger (its own, or cloned from a partitioned root).
pub fn has_mm_resolve(rel: &impl Open) -> bool {
    mm_resolve_trigger(rel).is_some()
}

const TIME_TYPES: &str = "timestamptz or timestamp";

fn is_time_type(typid: pg_sys::Oid) -> bool {
    typid == pg_sys::TIMESTAMPTZOID || typid == pg_sys::TIMESTAMPOID
}

/// The live column `name` of `columns`.
fn column<'c>(columns: &'c [ColumnInfo], name: &str) -> Option<&'c ColumnInfo> {
    columns.iter().find(|c| c.name == name)
}

/// Finds a bookkeeping column among the table's live `columns` and checks its type.
fn require(
    columns: &[ColumnInfo],
    table: &str,
    name: &str,
    sql_type: &'static str,
    ok: fn(pg_sys::Oid) -> bool,
) -> Result<pg_sys::AttrNumber, MmError> {
    let column = column(columns, name).ok_or_else(|| MmError::MissingColumn {
        table: table.to_string(),
        column: name.to_string(),
        add_column_sql: format!("ALTER TABLE {table} ADD COLUMN {name} {sql_type};"),
    })?;
    // A precision (`timestamptz(3)`) would round the stamps on every peer's input but not here:
    // the versions of one write would differ between nodes.
    if !ok(column.typid) || (column.typmod != -1 && column.typid != pg_sys::BOOLOID) {
        return Err(MmError::UnsupportedColumnType {
            table: table.to_string(),
            column: name.to_string(),
            found: names::type_name_with_modifier(column.typid, column.typmod),
            expected: sql_type.into(),
        });
    }
    Ok(column.attnum)
}

/// The delta columns `policy` declares, checked: each a live column of an exact numeric type that
/// is not a key, bookkeeping, criterion or generated column; and `mm_delta text` for their state.
fn delta_info(
    live: &[ColumnInfo],
    table: &str,
    policy: &Policy,
    primary_key: Option<&IndexKey>,
) -> Result<Option<DeltaInfo>, MmError> {
    if policy.delta_columns.is_empty() {
        return Ok(None);
    }
    let att_state = require(live, table, COL_DELTA, "text", |t| t == pg_sys::TEXTOID)?;
    let mut columns = Vec::new();
    for name in &policy.delta_columns {
        let column = column(live, name).ok_or_else(|| MmError::UnknownDeltaColumn {
            table: table.to_string(),
            column: name.clone(),
        })?;
        let not_allowed = |what: &str| MmError::DeltaColumnNotAllowed {
            table: table.to_string(),
            column: name.clone(),
            what: what.into(),
        };
        if [
            COL_ISLOCAL,
            COL_NODEID,
            COL_XACTTIME,
            COL_STATTIME,
            COL_DELTA,
        ]
        .contains(&name.as_str())
        {
            return Err(not_allowed("a bookkeeping column"));
        }
        if policy.criterion_column() == name {
            return Err(not_allowed("the criterion column"));
        }
        if primary_key.is_some_and(|pk| pk.attnums().any(|a| a == column.attnum)) {
            return Err(not_allowed("part of the primary key"));
        }
        if column.generated {
            return Err(not_allowed("a generated column"));
        }
        let kind = AmountType::of(column.typid, column.typmod).ok_or_else(|| {
            MmError::UnsupportedColumnType {
                table: table.to_string(),
                column: name.clone(),
                found: names::type_name_with_modifier(column.typid, column.typmod),
                expected: AMOUNT_TYPES.into(),
            }
        })?;
        columns.push(DeltaColumn {
            name: name.clone(),
            attnum: column.attnum,
            kind,
        });
    }
    Ok(Some(DeltaInfo { att_state, columns }))
}

fn build(rel: &impl Open, trigger: TriggerRef) -> Result<RelInfo, MmError> {
    let args = trigger::trigger_args(rel, trigger.oid()).ok_or_else(|| MmError::Internal {
        what: format!("trigger {:?} is not one of its relation's", trigger.oid()),
    })?;
    let policy = Policy::parse(&args)?;
    let (schema, relname) = relation::names(rel);
    let relid = relation::oid(rel);
    // A partition is named (tombstones, key locks, reports) and counted as its root.
    let report_relid = if relation::is_partition(rel) {
        crate::pg::partitions::partition_root(relid)
    } else {
        relid
    };
    let table = match names::names_of(report_relid) {
        Some((root_schema, root_name)) if report_relid != relid => {
            names::identity(&root_schema, &root_name)
        }
        _ => names::identity(&schema, &relname),
    };
    let owner = relation::owner(rel);
    let live = relation::columns_of(rel);

    let att_islocal = require(&live, &table, COL_ISLOCAL, "boolean", |t| {
        t == pg_sys::BOOLOID
    })?;
    let att_nodeid = require(&live, &table, COL_NODEID, "smallint", |t| {
        t == pg_sys::INT2OID
    })?;
    let att_xacttime = require(&live, &table, COL_XACTTIME, "timestamptz", is_time_type)?;
    let att_stattime = require(&live, &table, COL_STATTIME, "timestamptz", is_time_type)?;
    let att_criterion = match &policy.criterion {
        Criterion::Column(name) => {
            let column = column(&live, name).ok_or_else(|| MmError::UnknownCriterionColumn {
                table: table.clone(),
                column: name.clone(),
            })?;
            if !is_time_type(column.typid) {
                return Err(MmError::UnsupportedColumnType {
                    table: table.clone(),
                    column: name.clone(),
                    found: names::type_name(column.typid),
                    expected: TIME_TYPES.into(),
                });
            }
            Some(column.attnum)
        }
        _ => None,
    };
    let primary_key = IndexKey::of(rel);
    let unique_keys = crate::pg::key::unique_keys(rel);
    let delta = delta_info(&live, &table, &policy, primary_key.as_ref())?;

    let columns: Vec<StatementColumn> = live
        .iter()
        .map(|a| StatementColumn {
            name: a.name.clone(),
            generated: a.generated,
            identity_always: a.identity_always,
            key_operator: primary_key.as_ref().and_then(|pk| {
                pk.columns
                    .iter()
                    .find(|c| c.attnum == a.attnum)
                    .map(|c| c.eq_operator_sql.clone())
            }),
        })
        .collect();
    let sql = statements::build(&names::sql_qualified(&schema, &relname), &columns);
    let argtypes: Vec<pg_sys::Oid> = live.iter().map(|a| a.typid).collect();

    Ok(RelInfo {
        relid,
        report_relid,
        table_hash: stable_hash(table.as_bytes()),
        table,
        policy,
        att_islocal,
        att_nodeid,
        att_xacttime,
        att_stattime,
        att_criterion,
        published: crate::pg::publication::is_published(relid),
        primary_key,
        unique_keys,
        delta,
        live_attnums: live.iter().map(|a| a.attnum).collect(),
        live_names: live.iter().map(|a| a.name.clone()).collect(),
        // mm_conflict's own writes to the table run as its owner, as PostgreSQL 16's apply
        // workers write: a trigger of the owner's never runs with the rights of whoever
        // caused the write (the subscription's owner, the extension's owner).
        overwrite: CachedPlan::new(sql.overwrite, argtypes.clone()).run_as(owner),
        resend_delete: CachedPlan::new(sql.resend_delete, argtypes.clone()).run_as(owner),
        resend_insert: CachedPlan::new(sql.resend_insert, argtypes).run_as(owner),
    })
}

/// A row of a replicated table: a heap tuple of it, or its live columns' values in the
/// statements' parameter order (a row read back by a statement).
#[derive(Clone, Debug)]
pub enum Row<'a> {
    Tuple(TupleRef<'a>),
    Values(Params),
}

/// A row's live column values in the statements' parameter order, each of its column's type.
#[derive(Clone, Debug)]
pub struct Params(Vec<Option<Typed>>);

impl Params {
    /// `values`: a row of the relation whose statements returned them, one per live column in
    /// the statements' parameter order.
    pub fn new(values: Vec<Option<Typed>>) -> Params {
        Params(values)
    }

    pub fn values(&self) -> &[Option<Typed>] {
        &self.0
    }
}

impl RelInfo {
    /// The stamps of a row.
    pub fn row_stamps(&self, row: &Row) -> RowStamps {
        match row {
            Row::Tuple(tuple) => self.stamps(*tuple),
            Row::Values(values) => self.stamps_from_parameters(values.values()),
        }
    }

    /// A row's live column values, in the statements' parameter order.
    pub fn row_values(&self, row: &Row) -> Vec<Option<Typed>> {
        match row {
            Row::Tuple(tuple) => self.parameters(*tuple),
            Row::Values(values) => values.values().to_vec(),
        }
    }

    /// Column `attnum` of a row (`None`: NULL, or not one of the live columns).
    pub fn row_value(&self, row: &Row, attnum: pg_sys::AttrNumber) -> Option<Typed> {
        match row {
            Row::Tuple(tuple) => tuple.typed(attnum),
            Row::Values(values) => self.parameter_of(attnum).and_then(|i| values.values()[i]),
        }
    }

    /// The row's live columns as a JSON object, each value read by its type; `only` restricts it
    /// to these attribute numbers.
    pub fn row_json(&self, row: &Row, only: Option<&[pg_sys::AttrNumber]>) -> serde_json::Value {
        let mut object = serde_json::Map::new();
        for (i, &attnum) in self.live_attnums.iter().enumerate() {
            if only.is_some_and(|only| !only.contains(&attnum)) {
                continue;
            }
            let value = match row {
                Row::Tuple(tuple) => tuple.json(attnum),
                Row::Values(values) => {
                    values.values()[i].map_or(serde_json::Value::Null, Typed::json)
                }
            };
            object.insert(self.live_names[i].clone(), value);
        }
        serde_json::Value::Object(object)
    }

    /// The bookkeeping values (and the user criterion), each column read by `get` (`None`: NULL).
    fn stamps_by(&self, get: impl Fn(pg_sys::AttrNumber) -> Option<pg_sys::Datum>) -> RowStamps {
        let time = |attnum| get(attnum).map(|d: pg_sys::Datum| d.value() as i64);
        RowStamps {
            xacttime: time(self.att_xacttime),
            stattime: time(self.att_stattime),
            node: get(self.att_nodeid).map(|d| d.value() as i16),
            user_criterion: self.att_criterion.and_then(time),
        }
    }

    /// Reads the bookkeeping values (and the user criterion) of a heap tuple of this relation.
    pub fn stamps(&self, tuple: TupleRef) -> RowStamps {
        let criterion = self.att_criterion.unwrap_or(self.att_xacttime);
        let cols = [
            self.att_xacttime,
            self.att_stattime,
            self.att_nodeid,
            criterion,
        ];
        // Every attnum read here was found in the relation's descriptor by `build` (a relcache
        // invalidation drops this entry); all are by-value columns, read as numbers.
        let values = tuple.get_many(cols);
        self.stamps_by(|attnum| {
            cols.iter()
                .position(|&c| c == attnum)
                .and_then(|i| values[i])
        })
    }

    /// The position of a live column among the statements' parameters.
    fn parameter_of(&self, attnum: pg_sys::AttrNumber) -> Option<usize> {
        self.live_attnums.iter().position(|&a| a == attnum)
    }

    /// The bookkeeping values of a row given as statement parameters (live columns in order).
    pub fn stamps_from_parameters(&self, params: &[Option<Typed>]) -> RowStamps {
        self.stamps_by(|attnum| {
            self.parameter_of(attnum)
                .and_then(|i| params[i])
                .map(Typed::datum)
        })
    }

    /// The values of `tuple`'s live columns, in the order of the statements' parameters.
    pub fn parameters(&self, tuple: TupleRef) -> Vec<Option<Typed>> {
        tuple.typed_columns(&self.live_attnums)
    }

    /// Statement parameters that hold only the key `values` (other columns NULL): enough for the
    /// statements that match a row by key.
    pub fn key_parameters(&self, values: &[Typed]) -> Vec<Option<Typed>> {
        let mut params = vec![None; self.live_attnums.len()];
        for (attnum, &value) in self
            .primary_key
            .iter()
            .flat_map(|pk| pk.attnums())
            .zip(values)
        {
            if let Some(i) = self.parameter_of(attnum) {
                params[i] = Some(value);
            }
        }
        params
    }
}

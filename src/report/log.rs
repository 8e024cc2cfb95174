//! Conflict reports: a server-log line, or a row in `mm_conflict.conflict_log`.

use std::cell::RefCell;

use mm_conflict_core::version::format_micros;
use mm_conflict_core::Version;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use serde_json::Value;

use super::Resolution;
use crate::catalog::relinfo::{RelInfo, Row};
use crate::gucs;
use crate::pg::datum::Typed;
use crate::pg::spi::CachedPlan;

/// Longest value (in characters) of a row shown in a log line.
const LOG_VALUE_CHARS: usize = 64;

thread_local! {
    static LOG_INSERT: RefCell<Option<CachedPlan>> = const { RefCell::new(None) };
}

/// The owner of `mm_conflict.conflict_log` (the extension's owner): its rows are written with that
/// role's rights, whoever applies the change.
fn conflict_log_owner() -> pg_sys::Oid {
    let relid = crate::pg::relation::extension_table(c"conflict_log").unwrap_or(pg_sys::InvalidOid);
    crate::pg::security::relation_owner(relid)
}

/// Shortens every string in `value` to `max` characters (marking the cut with "…").
fn truncate_strings(value: &mut Value, max: usize) {
    match value {
        Value::String(s) if s.chars().count() > max => {
            let cut: String = s.chars().take(max).collect();
            *s = cut + "…";
        }
        Value::Array(items) => items.iter_mut().for_each(|v| truncate_strings(v, max)),
        Value::Object(map) => map.values_mut().for_each(|v| truncate_strings(v, max)),
        _ => {}
    }
}

/// The key (primary-key columns) as JSON, from whichever row the resolution has.
fn key_json(info: &RelInfo, r: &Resolution) -> Value {
    let key_attnums: Vec<_> = info
        .primary_key
        .iter()
        .flat_map(|pk| pk.attnums())
        .collect();
    match r.incoming_row.or(r.stored_row) {
        Some(row) => info.row_json(row, Some(&key_attnums)),
        None => Value::Null,
    }
}

/// The replication origin of this session: its name (`pg_<subscription oid>` for a subscription),
/// or `mm_conflict.repair` for a repair's writes.
fn origin_name() -> Option<String> {
    if crate::pg::flag::RepairWrite::active() {
        return Some("mm_conflict.repair".into());
    }
    let (origin, _) = crate::pg::backend::session_origin()?;
    crate::pg::backend::origin_name(origin)
}

fn describe(version: Option<&Version>, column: &str) -> String {
    match version {
        Some(v) => format!(
            "{column} {}, node {}",
            v.criterion
                .map_or_else(|| "NULL".into(), |t| format_micros(t) + "+00"),
            v.node.map_or_else(|| "NULL".into(), |n| n.to_string())
        ),
        None => "none".into(),
    }
}

pub fn log_line(info: &RelInfo, r: &Resolution) {
    let column = info.policy.criterion_column();
    let versions = format!(
        "{} (stored: {}; incoming: {}; origin {})",
        r.decision.name(),
        describe(r.stored.as_ref(), column),
        describe(Some(&r.incoming), column),
        origin_name().unwrap_or_else(|| "none".into()),
    );
    let message = if gucs::LOG_VALUES.get() {
        let row = |row: Option<&Row>| {
            row.map_or(Value::Null, |row| {
                let mut json = info.row_json(row, None);
                truncate_strings(&mut json, LOG_VALUE_CHARS);
                json
            })
        };
        let mut key = key_json(info, r);
        truncate_strings(&mut key, LOG_VALUE_CHARS);
        let rows = [row(r.stored_row), row(r.incoming_row)];
        format!(
            "mm_conflict: conflict on {} key {key}: {versions}; stored row {}; incoming row {}",
            info.table, rows[0], rows[1],
        )
    } else {
        // No column values: readers of the server log may not be allowed to read the table.
        format!("mm_conflict: conflict on {}: {versions}", info.table)
    };
    ErrorReport::new(
        PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
        message,
        "mm_resolve",
    )
    .report(gucs::log_level());
}

pub fn log_row(info: &RelInfo, r: &Resolution) {
    let row = |row: Option<&Row>| row.map(|row| info.row_json(row, None).to_string());
    let (key, stored_row, incoming_row) = (
        key_json(info, r).to_string(),
        row(r.stored_row),
        row(r.incoming_row),
    );
    let text = |s: &str| Typed::text(s.as_bytes());
    let criterion = |v: Option<&Version>| v.and_then(|v| v.criterion).map(Typed::timestamptz);
    let node = |v: Option<&Version>| v.and_then(|v| v.node).map(Typed::int2);
    let values = [
        Some(text(&info.table)),
        Some(text(&key)),
        Some(text(r.decision.name())),
        Some(text(info.policy.criterion_column())),
        criterion(r.stored.as_ref()),
        node(r.stored.as_ref()),
        criterion(Some(&r.incoming)),
        node(Some(&r.incoming)),
        stored_row.as_deref().map(text),
        incoming_row.as_deref().map(text),
        origin_name().as_deref().map(text),
    ];
    insert_log_row(values, None);
}

/// A conflict_log row for a replicated tombstone this node could not resolve (`reason`: why),
/// written whatever `mm_conflict.log_conflicts` says: the delete it carries was not applied here.
pub fn log_ignored_tombstone(table: &str, key: &[u8], version: &Version, reason: &str) {
    let key = serde_json::json!({ "binary_key": crate::pg::names::bytea_hex(key) }).to_string();
    let text = |s: &str| Typed::text(s.as_bytes());
    let values = [
        Some(text(table)),
        Some(text(&key)),
        Some(text("tombstone_ignored")),
        Some(text("unknown")),
        None,
        None,
        version.criterion.map(Typed::timestamptz),
        version.node.map(Typed::int2),
        None,
        None,
        origin_name().as_deref().map(text),
    ];
    insert_log_row(values, Some(reason));
}

/// Inserts a conflict_log row (with the extension owner's rights).
fn insert_log_row(values: [Option<Typed>; 11], detail: Option<&str>) {
    let mut values = values.to_vec();
    values.push(detail.map(|d| Typed::text(d.as_bytes())));
    LOG_INSERT.with(|plan| {
        let mut plan = plan.borrow_mut();
        let plan = plan.get_or_insert_with(|| {
            CachedPlan::new(
                "INSERT INTO mm_conflict.conflict_log (table_name, key, decision, criterion, \
                 stored_value, stored_node, incoming_value, incoming_node, stored_row, incoming_row, \
                 origin, subscription, detail) \
                 VALUES ($1, $2::pg_catalog.jsonb, $3, $4, $5, $6, $7, $8, $9::pg_catalog.jsonb, \
                 $10::pg_catalog.jsonb, $11, \
                 (SELECT s.subname FROM pg_catalog.pg_subscription s \
                   WHERE 'pg_' OPERATOR(pg_catalog.||) s.oid OPERATOR(pg_catalog.=) $11), $12)"
                    .into(),
                vec![
                    pg_sys::TEXTOID,
                    pg_sys::TEXTOID,
                    pg_sys::TEXTOID,
                    pg_sys::TEXTOID,
                    pg_sys::TIMESTAMPTZOID,
                    pg_sys::INT2OID,
                    pg_sys::TIMESTAMPTZOID,
                    pg_sys::INT2OID,
                    pg_sys::TEXTOID,
                    pg_sys::TEXTOID,
                    pg_sys::TEXTOID,
                    pg_sys::TEXTOID,
                ],
            )
            .run_as(conflict_log_owner())
        });
        plan.execute(&values, pg_sys::SPI_OK_INSERT);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_marks_the_cut_and_keeps_short_values() {
        let mut v = serde_json::json!({"a": "x".repeat(70), "b": "short", "c": 5, "d": ["ééééé"]});
        truncate_strings(&mut v, 4);
        assert_eq!(
            v,
            serde_json::json!({"a": "xxxx…", "b": "shor…", "c": 5, "d": ["éééé…"]})
        );
    }
}

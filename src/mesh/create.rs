//! `mm_conflict.create_mesh`: observe every node, plan (`mm_conflict_core::mesh::create_plan`),
//! run the plan's steps over connections to every node (this one included, each step committed
//! on its node), and on a failure undo what this call did, newest first.
//!
//! Why over connections even to this node: a node must have committed its publication before a
//! peer can subscribe to it, and a slot cannot be created on a node while a transaction there
//! that has written is still open. That is also why the calling transaction must not have written
//! anything.

use std::cell::RefCell;

use super::plan::check_node;
use super::remote::{self, Connection, Value};
use super::{parse_nodes, NodeSpec};
use crate::error::{MmError, OrRaise};
use crate::pg::subxact::{catching, catching_error};
use mm_conflict_core::mesh::{
    create_plan, failure, inspect_query, NodeState, Remote, Step, StepKind, TablePolicy,
};

/// What `create_mesh` was asked.
pub struct Request {
    pub nodes: Option<serde_json::Value>,
    /// The tables' stable names (`_table_name`).
    pub tables: Option<Vec<String>>,
    pub criterion: Option<String>,
    pub method: Option<String>,
    pub preferred_node: Option<i32>,
    /// `{"table": ["column", ...]}`, the tables by their stable names (`_table_name`).
    pub delta_columns: Option<serde_json::Value>,
    pub repair: bool,
}

/// Where the call is, for the error that reports a failure.
struct Progress {
    node: String,
    step: String,
    /// The steps run so far, by index into the plan.
    done: Vec<usize>,
}

/// `delta_columns` read: each key a table of the mesh, each value an array of column names.
fn delta_columns(
    spec: Option<serde_json::Value>,
    tables: &[String],
) -> Result<std::collections::BTreeMap<String, Vec<String>>, MmError> {
    let bad = |message: String| MmError::BadDeltaSpec { message };
    let Some(spec) = spec else {
        return Ok(Default::default());
    };
    let serde_json::Value::Object(map) = spec else {
        return Err(bad("it must be a JSON object".into()));
    };
    map.into_iter()
        .map(|(table, columns)| {
            if !tables.contains(&table) {
                return Err(bad(format!("{table} is not among the tables")));
            }
            let columns: Vec<String> = serde_json::from_value(columns).map_err(|_| {
                bad(format!(
                    "the delta columns of {table} must be an array of column names"
                ))
            })?;
            Ok((table, columns))
        })
        .collect()
}

fn null(argument: &str) -> MmError {
    MmError::NullArgument {
        function: "create_mesh()".into(),
        argument: argument.into(),
    }
}

/// "node 2" or "node 2 (b)".
fn label(node: &NodeSpec) -> String {
    match &node.name {
        Some(name) => format!("node {} ({name})", node.id),
        None => format!("node {}", node.id),
    }
}

/// What a node is, as `create_mesh` and `add_node` must know before changing anything.
pub(super) fn inspect(conn: &Connection, tables: &[String]) -> NodeState {
    let text = conn
        .run(&Remote {
            sql: inspect_query(tables),
            query: true,
        })
        .unwrap_or_default();
    let mut state: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    if state["extension"].as_bool() == Some(true) {
        let node_id = conn.run(&Remote {
            sql: "SELECT node_id FROM mm_conflict.node".into(),
            query: true,
        });
        state["node_id"] = node_id
            .and_then(|id| id.parse::<i64>().ok())
            .map_or(serde_json::Value::Null, serde_json::Value::from);
    }
    serde_json::from_value(state).unwrap_or_else(|e| {
        MmError::Internal {
            what: format!("a node's inspection does not parse: {e}"),
        }
        .raise()
    })
}

pub fn create_mesh(request: Request) -> Result<(), MmError> {
    remote::refuse_written_transaction("create_mesh()")?;
    crate::pg::security::require_superuser("create_mesh()")?;
    let tables = match request.tables {
        Some(tables) if !tables.is_empty() => tables,
        _ => return Err(MmError::MeshWithoutTables),
    };
    let mut delta = delta_columns(request.delta_columns, &tables)?;
    remote::require_dblink_creating("create_mesh()", false);
    let nodes = parse_nodes(request.nodes.ok_or_else(|| null("nodes"))?)?;
    let policy = TablePolicy {
        criterion: request.criterion.ok_or_else(|| null("criterion"))?,
        method: request.method.ok_or_else(|| null("method"))?,
        // 0 is no preferred node, as NULL.
        preferred_node: request.preferred_node.filter(|&p| p != 0).map(i64::from),
        delta_columns: Vec::new(),
    };
    let with_policy: Vec<(String, TablePolicy)> = tables
        .iter()
        .map(|t| {
            let delta_columns = delta.remove(t).unwrap_or_default();
            (
                t.clone(),
                TablePolicy {
                    delta_columns,
                    ..policy.clone()
                },
            )
        })
        .collect();
    let labels: Vec<String> = nodes.iter().map(label).collect();
    let conns: RefCell<Vec<Option<Connection>>> =
        RefCell::new(nodes.iter().map(|_| None).collect());
    let plan: RefCell<Vec<Step>> = RefCell::new(Vec::new());
    let progress = RefCell::new(Progress {
        node: "the first node".into(),
        step: "read the node list".into(),
        done: Vec::new(),
    });
    let at = |node: &str, step: &str| {
        let mut p = progress.borrow_mut();
        p.node = node.to_string();
        p.step = step.to_string();
    };

    let outcome = catching_error(|| {
        // 1. Reach and inspect every node; nothing is changed until all pass.
        let mut states = Vec::with_capacity(nodes.len());
        for (i, node) in nodes.iter().enumerate() {
            at(&labels[i], "connect");
            conns.borrow_mut()[i] = Some(Connection::open(
                format!("mm_conflict_mesh_{}", node.id),
                &node.conninfo,
                &labels[i],
            ));
            at(&labels[i], "inspect");
            let state = inspect(conns.borrow()[i].as_ref().expect("just opened"), &tables);
            check_node(&state, node.id).or_raise();
            states.push(state);
        }
        // 2. The plan's steps, in order.
        *plan.borrow_mut() = create_plan(&nodes, &states, &with_policy);
        let plan = plan.borrow();
        let conns = conns.borrow();
        let conn = |i: usize| conns[i].as_ref().expect("every node was reached");
        for (k, step) in plan.iter().enumerate() {
            at(&labels[step.node], &step.name);
            match &step.kind {
                // Rows are not copied: say so when a table already differs between the nodes.
                StepKind::CompareTable(table) => {
                    let sums: std::collections::HashSet<String> = (0..nodes.len())
                        .filter_map(|i| conn(i).run(&step.command))
                        .collect();
                    if !request.repair && sums.len() > 1 {
                        MmError::TablesDiffer {
                            table: table.clone(),
                        }
                        .warn();
                    }
                }
                StepKind::Exec => {
                    conn(step.node).run(&step.command);
                    progress.borrow_mut().done.push(k);
                }
            }
        }
    });

    let conns = conns.into_inner();
    if let Err(caught) = outcome {
        // Undo what this call did, newest first; what existed before stays.
        let plan = plan.into_inner();
        let progress = progress.into_inner();
        let (mut undone, mut not_undone) = (Vec::new(), Vec::new());
        for &k in progress.done.iter().rev() {
            let step = &plan[k];
            let (Some((undo, name)), Some(conn)) = (&step.undo, &conns[step.node]) else {
                continue;
            };
            match catching(|| conn.run(undo)) {
                Ok(problem) => {
                    undone.push(name.clone());
                    not_undone.extend(problem);
                }
                Err(message) => not_undone.push(format!("{name} ({message})")),
            }
        }
        for conn in conns.into_iter().flatten() {
            let _ = catching(|| conn.close());
        }
        let (message, detail) = failure(
            &progress.node,
            &progress.step,
            &caught.message,
            caught.detail.as_deref(),
            &undone,
            &not_undone,
        );
        caught.raise_as(message, Some(detail));
    }

    // Rows that existed before: each key's winning version written on every node, from the first
    // node (the mesh stands; a failure here leaves it, and repair() can be run again).
    let first = conns[0].as_ref().expect("every node was reached");
    if request.repair {
        for table in &tables {
            let keys = first
                .call("repair", &[Value::Table(table)])
                .and_then(|k| k.parse().ok())
                .unwrap_or(0);
            MmError::MeshRepaired {
                table: table.clone(),
                keys,
            }
            .notice();
        }
    }
    for conn in conns.into_iter().flatten() {
        conn.close();
    }
    Ok(())
}

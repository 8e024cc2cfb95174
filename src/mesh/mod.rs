//! The mesh API: this node's identity and tables ([`local`], through SPI), the checks of what the
//! functions that reach other nodes found ([`plan`]; the plans themselves are in
//! `mm_conflict_core`), the one transport to other nodes ([`remote`]), and the runners:
//! [`create`] (create_mesh), [`subscribe`], [`drop`] (drop_mesh), [`members`] (the runner of [`add`], [`remove`]
//! and [`ddl`]: add_node, remove_node, replicate_ddl). What a schema change does on this node, and
//! the watch over schema changes made without `replicate_ddl`: [`schema`]. See `sql/mesh.sql` for
//! why dblink.

pub mod add;
pub mod create;
pub mod ddl;
pub mod drop;
pub mod local;
pub mod members;
pub mod plan;
pub mod remote;
pub mod remove;
pub mod schema;
pub mod sequences;
pub mod subscribe;

use std::collections::HashSet;

use mm_conflict_core::{MAX_NODE_ID, MIN_NODE_ID};

use crate::error::MmError;

pub use mm_conflict_core::mesh::NodeSpec;

fn bad(message: String) -> MmError {
    MmError::BadMeshSpec { message }
}

/// Parses and checks the node list; errors name the offending element and field.
pub fn parse_nodes(nodes: serde_json::Value) -> Result<Vec<NodeSpec>, MmError> {
    let parsed: Vec<NodeSpec> = serde_path_to_error::deserialize(nodes).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." {
            String::new()
        } else {
            format!("nodes{path}: ")
        };
        bad(format!("{at}{}", e.inner()))
    })?;
    if parsed.len() < 2 {
        return Err(bad(format!(
            "a mesh needs at least 2 nodes, got {}",
            parsed.len()
        )));
    }
    let (mut ids, mut names, mut conninfos) = (HashSet::new(), HashSet::new(), HashSet::new());
    for (i, node) in parsed.iter().enumerate() {
        if !(MIN_NODE_ID..=MAX_NODE_ID).contains(&node.id) {
            return Err(bad(format!(
                "nodes[{i}].id: {} is out of range (node ids are {MIN_NODE_ID}..{MAX_NODE_ID})",
                node.id
            )));
        }
        if !ids.insert(node.id) {
            return Err(bad(format!(
                "nodes[{i}].id: node id {} appears twice",
                node.id
            )));
        }
        if let Some(name) = &node.name {
            if name.trim().is_empty() {
                return Err(bad(format!("nodes[{i}].name: must not be empty")));
            }
            if !names.insert(name.as_str()) {
                return Err(bad(format!(
                    "nodes[{i}].name: name \"{name}\" appears twice"
                )));
            }
        }
        if node.conninfo.trim().is_empty() {
            return Err(bad(format!("nodes[{i}].conninfo: must not be empty")));
        }
        // Never echo a conninfo: it may hold a password.
        if !conninfos.insert(node.conninfo.trim()) {
            return Err(bad(format!(
                "nodes[{i}].conninfo: the same conninfo as an earlier node"
            )));
        }
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn error_of(v: serde_json::Value) -> String {
        parse_nodes(v).unwrap_err().to_string()
    }

    #[test]
    fn parses_a_node_list() {
        let nodes = parse_nodes(json!([
            {"id": 1, "name": "a", "conninfo": "port=1"},
            {"id": 2, "conninfo": "port=2"}
        ]))
        .unwrap();
        assert_eq!(nodes[1].name, None);
        assert_eq!(nodes[1].id, 2);
    }

    #[test]
    fn errors_name_the_bad_field() {
        let e = error_of(json!([{"id": "x", "conninfo": "a"}, {"id": 2, "conninfo": "b"}]));
        assert!(e.contains("nodes[0].id"), "{e}");
        let e = error_of(json!([{"id": 1, "conninfo": "a"}, {"id": 2, "conn": "b"}]));
        assert!(e.contains("nodes[1]") && e.contains("conn"), "{e}");
        let e = error_of(json!([{"id": 1, "conninfo": "a"}, {"id": 1, "conninfo": "b"}]));
        assert!(e.contains("nodes[1].id") && e.contains("twice"), "{e}");
        let e = error_of(json!([{"id": 1, "conninfo": "a"}, {"id": 0, "conninfo": "b"}]));
        assert!(
            e.contains("nodes[1].id") && e.contains("out of range"),
            "{e}"
        );
        let e = error_of(
            json!([{"id": 1, "conninfo": "a password=s"}, {"id": 2, "conninfo": "a password=s"}]),
        );
        assert!(
            e.contains("nodes[1].conninfo") && !e.contains("password"),
            "{e}"
        );
        let e = error_of(json!({"id": 1}));
        assert!(e.contains("expected a sequence"), "{e}");
        let e = error_of(json!([{"id": 1, "conninfo": "a"}]));
        assert!(e.contains("at least 2"), "{e}");
    }
}

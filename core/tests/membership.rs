//! Property test of `remove_node`'s plan (`mm_conflict_core::membership::removal_plan`), run over an
//! in-memory mesh: a target node that may still be sending, survivors that each received some of
//! its changes (some with their subscription from it already disabled, some without one), links
//! between survivors that deliver a node's whole WAL only when the plan waits for it. After the
//! plan ran, every survivor has every change of the target that any survivor had, and nothing
//! serves the target any more.

use std::collections::{BTreeMap, BTreeSet};

use mm_conflict_core::membership::{removal_plan, Action, SurvivorState};
use proptest::prelude::*;

const TARGET: i64 = 9;

/// One survivor: the target's changes it holds, and whether it still receives from the target.
#[derive(Clone, Debug)]
struct Survivor {
    has: BTreeSet<u32>,
    receiving: Option<bool>,
}

/// The mesh as the plan sees it run.
struct Model {
    survivors: BTreeMap<i64, Survivor>,
    /// The target's next change number.
    next: u32,
    /// Every change any survivor held once the target had stopped reaching them all.
    dropped: BTreeSet<i64>,
}

impl Model {
    /// The target, still alive, sends a new change to every survivor that receives from it (or,
    /// as links fail, only to some: `mask`).
    fn target_writes(&mut self, mask: u32) {
        let change = self.next;
        self.next += 1;
        for (i, s) in self.survivors.values_mut().enumerate() {
            if s.receiving == Some(true) && mask & (1 << i) != 0 {
                s.has.insert(change);
            }
        }
    }

    fn run(&mut self, step: &mm_conflict_core::membership::MemberStep) {
        match &step.action {
            Action::Exec(remote) if step.node != TARGET => {
                let s = self.survivors.get_mut(&step.node).unwrap();
                if remote.sql.contains("DISABLE") && !remote.sql.contains("DROP SUBSCRIPTION") {
                    s.receiving = Some(false);
                }
                if remote.sql.contains("DROP SUBSCRIPTION") {
                    s.receiving = None;
                    self.dropped.insert(step.node);
                }
            }
            Action::CatchUp(others) => {
                let has = self.survivors[&step.node].has.clone();
                for other in others {
                    self.survivors
                        .get_mut(other)
                        .unwrap()
                        .has
                        .extend(has.iter().copied());
                }
            }
            _ => {}
        }
    }
}

fn survivors() -> impl Strategy<Value = Vec<(BTreeSet<u32>, Option<bool>)>> {
    prop::collection::vec(
        (
            prop::collection::btree_set(0u32..40, 0..10),
            prop_oneof![Just(None), Just(Some(false)), Just(Some(true))],
        ),
        1..6,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_survivor_ends_with_every_change_any_had(
        start in survivors(),
        target_reached in any::<bool>(),
        writes in prop::collection::vec(any::<u32>(), 0..40),
    ) {
        let mut model = Model {
            survivors: start
                .iter()
                .enumerate()
                .map(|(i, (has, receiving))| {
                    (i as i64 + 1, Survivor { has: has.clone(), receiving: *receiving })
                })
                .collect(),
            next: 100,
            dropped: BTreeSet::new(),
        };
        let observed: Vec<(i64, SurvivorState)> = model
            .survivors
            .iter()
            .map(|(id, s)| {
                (*id, SurvivorState {
                    node_id: Some(*id),
                    receiving: s.receiving,
                    slot: true,
                    peer: true,
                    conninfo_of_caller: None,
                })
            })
            .collect();
        let plan = removal_plan(TARGET, &observed, target_reached);
        let mut writes = writes.into_iter();
        for step in &plan {
            // The target may write between any two steps, to whoever still receives from it.
            if let Some(mask) = writes.next() {
                model.target_writes(mask);
            }
            model.run(step);
        }
        let union: BTreeSet<u32> = model.survivors.values().flat_map(|s| s.has.iter().copied()).collect();
        for (id, s) in &model.survivors {
            prop_assert_eq!(&s.has, &union, "survivor {} lacks changes of the target", id);
            prop_assert_eq!(s.receiving, None, "survivor {} still receives from the target", id);
        }
        // Every survivor's slot for the target goes.
        let slots = plan.iter().filter(|s| matches!(s.action, Action::DropSlot(_))).count();
        prop_assert_eq!(slots, model.survivors.len());
    }
}

/// The check fails for a plan that waits in one direction only (the mutation the test exists for).
#[test]
fn a_one_way_catch_up_would_lose_changes() {
    let observed: Vec<(i64, SurvivorState)> = (1..=2)
        .map(|id| {
            (
                id,
                SurvivorState {
                    node_id: Some(id),
                    receiving: Some(false),
                    ..SurvivorState::default()
                },
            )
        })
        .collect();
    let mut plan = removal_plan(TARGET, &observed, false);
    // Drop node 2's wait for node 1.
    plan.retain(|s| !(s.node == 2 && matches!(s.action, Action::CatchUp(_))));
    let mut model = Model {
        survivors: [
            (
                1,
                Survivor {
                    has: BTreeSet::new(),
                    receiving: Some(false),
                },
            ),
            (
                2,
                Survivor {
                    has: [7].into(),
                    receiving: Some(false),
                },
            ),
        ]
        .into(),
        next: 100,
        dropped: BTreeSet::new(),
    };
    for step in &plan {
        model.run(step);
    }
    assert!(
        model.survivors[&1].has.is_empty(),
        "node 1 never got node 2's change"
    );
}

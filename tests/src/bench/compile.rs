//! Part A: the policy compiler on [`synth::Shape::LARGE`] (issue 2).
//!
//! Measured: YAML parsing (reported apart), a full compile with a fresh [`Compiler`], and the
//! incremental compiler ([`Incremental`], what a long-running controller or agent uses for one
//! change) after one pod is relabelled and after one policy is edited. Changes alternate between
//! the two versions of the object, so every repetition is a real one-object change; each is
//! checked against a fresh full compile once. Heap growth is measured in a repetition of its own,
//! with the counting allocator on (see [`alloc`]).

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, ensure};
use bulkhead_policy::{
    AllocationTable, CompiledState, Compiler, Incremental, Inventory, PolicySet, StateDiff,
    WorkloadRef, load,
};
use jiff::Timestamp;

use super::{
    alloc::{self, HeapGrowth},
    stats::{Samples, timed},
};
use crate::synth::{self, Shape};

/// Repetitions of each timed full compile (after one warm-up).
const REPS: usize = 5;
/// Repetitions of each timed incremental change (after warm-ups).
const CHANGE_REPS: usize = 20;
/// Repetitions of YAML parsing (slow, and not the claim).
const PARSE_REPS: usize = 3;
/// The workload that gets relabelled: it moves from `app-3` to `app-0`'s labels.
const RELABELLED: (usize, &str) = (7, "w-3");
/// The namespace whose policies are edited (variant 1 changes the web policy's port).
const EDITED_NS: usize = 7;

/// What part A measured. Times in seconds.
#[derive(Clone, Debug)]
pub struct CompileReport {
    pub workloads: usize,
    pub namespaces: usize,
    pub policies: usize,
    pub parse_policies: Samples,
    pub parse_inventory: Samples,
    pub full: Samples,
    pub relabel: Samples,
    pub edit: Samples,
    pub policy_entries: usize,
    pub defaults: usize,
    pub addresses: usize,
    pub identities: usize,
    pub rules: usize,
    /// Policy entries whose presence or value differs after the relabel / the edit.
    pub relabel_changed: usize,
    pub edit_changed: usize,
    pub full_heap: HeapGrowth,
    pub recompile_heap: HeapGrowth,
}

impl CompileReport {
    /// Policy entries against `identities x rules`, the rough bound (a ratio <= 1 means
    /// entries do not multiply with pods or with rules times peers).
    pub fn bound_ratio(&self) -> f64 {
        self.policy_entries as f64 / (self.identities as f64 * self.rules as f64)
    }
}

fn compile(compiler: &mut Compiler, set: &PolicySet, inv: &Inventory) -> Result<CompiledState> {
    compiler
        .compile(set, inv, at())
        .context("compiling the synthetic cluster")
}

/// A fixed instant: the synthetic policies have no time windows, so any would do.
fn at() -> Timestamp {
    Timestamp::from_second(1_795_000_000).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Runs part A; `progress` receives one line per step.
pub fn run(progress: &mut dyn FnMut(&str)) -> Result<CompileReport> {
    let shape = Shape::LARGE;
    let policies_text = synth::policies_yaml(shape);
    let inventory_text = synth::inventory_yaml(shape);

    progress("compiler: parsing YAML");
    let mut parse_policies = Samples::default();
    let mut parse_inventory = Samples::default();
    let mut parsed = None;
    for _ in 0..PARSE_REPS {
        let (set, t) = timed(|| PolicySet::from_yaml_str("synth.yaml", &policies_text));
        parse_policies.push(t.as_secs_f64());
        let (inv, t) = timed(|| Inventory::from_yaml_str("inventory.yaml", &inventory_text));
        parse_inventory.push(t.as_secs_f64());
        parsed = Some((set?, inv?));
    }
    let (set, inv) = parsed.context("no parse repetition")?;
    ensure!(
        inv.workloads.len() == shape.namespaces * shape.workloads_per_ns,
        "the synthetic inventory has {} workloads",
        inv.workloads.len()
    );

    progress("compiler: full compiles");
    let (state, full_heap) =
        alloc::measure(|| compile(&mut Compiler::new(AllocationTable::default()), &set, &inv));
    let state = state?;
    let mut full = Samples::default();
    for _ in 0..REPS {
        let mut fresh = Compiler::new(AllocationTable::default());
        let (result, t) = timed(|| compile(&mut fresh, &set, &inv));
        result?;
        full.push(t.as_secs_f64());
    }

    progress("compiler: incremental change: one pod relabel");
    let (ns, name) = RELABELLED;
    let target = WorkloadRef::new(synth::namespace(ns), name);
    let original = inv
        .workload(&target)
        .context("workload to relabel not found")?
        .labels
        .clone();
    let moved = BTreeMap::from([("app".to_owned(), "app-0".to_owned())]);
    let mut relabelled = inv.clone();
    ensure!(
        relabelled.set_workload_labels(&target, moved.clone()),
        "workload to relabel not found"
    );
    let mut inc = Incremental::new(
        Compiler::new(AllocationTable::default()),
        set.clone(),
        inv.clone(),
        at(),
    )?;
    let (diff, recompile_heap) = alloc::measure(|| inc.set_workload_labels(&target, moved.clone()));
    let relabel_changed = policy_changes(&diff?);
    // A fresh compile of the same inputs with the same allocation table (identity numbers
    // depend on the table's history, not only on the inputs).
    let fresh = compile(&mut Compiler::new(inc.table().clone()), &set, &relabelled)?;
    ensure!(
        *inc.state() == fresh,
        "the incremental relabel must equal a fresh compile of the same inputs and table"
    );
    ensure!(
        inc.inventory().workload(&target).map(|w| &w.labels)
            == relabelled.workload(&target).map(|w| &w.labels),
        "the relabel changed the workload's labels"
    );
    let relabel = alternate(|rep| {
        let labels = if rep % 2 == 0 { &original } else { &moved };
        inc.set_workload_labels(&target, labels.clone())
    })?;

    progress("compiler: incremental change: one policy edit");
    let edits: Vec<_> = [1, 0]
        .into_iter()
        .map(|variant| {
            load::parse_documents(
                "edit.yaml",
                &synth::namespace_policies_yaml(EDITED_NS, variant),
            )
        })
        .collect::<Result<_, _>>()?;
    let mut inc = Incremental::new(
        Compiler::new(AllocationTable::default()),
        set.clone(),
        inv.clone(),
        at(),
    )?;
    let mut edit_changed = 0;
    for object in edits[0].iter().cloned() {
        edit_changed += policy_changes(&inc.apply_policy("edit.yaml", object)?);
    }
    let mut edited = set.clone();
    for object in edits[0].iter().cloned() {
        edited.apply("edit.yaml", object)?;
    }
    ensure!(edited.len() == set.len(), "the edit must replace, not add");
    // A fresh compile of the same inputs with the same allocation table (identity numbers
    // depend on the table's history, not only on the inputs).
    let fresh = compile(&mut Compiler::new(inc.table().clone()), &edited, &inv)?;
    ensure!(
        *inc.state() == fresh,
        "the incremental edit must equal a fresh compile of the same inputs and table"
    );
    // The web policy is the edited object (variant 1 changes its port); the other object of
    // the namespace is unchanged, so one object per repetition is applied.
    let web: Vec<_> = edits
        .iter()
        .map(|docs| docs.first().cloned().context("the edit has a web policy"))
        .collect::<Result<_>>()?;
    let edit = alternate(|rep| inc.apply_policy("edit.yaml", web[(rep + 1) % 2].clone()))?;
    ensure!(
        relabel_changed > 0 && edit_changed > 0,
        "a one-object change must change some policy entries ({relabel_changed}, {edit_changed})"
    );

    Ok(CompileReport {
        workloads: inv.workloads.len(),
        namespaces: inv.namespaces.len(),
        policies: set.len(),
        parse_policies,
        parse_inventory,
        full,
        relabel,
        edit,
        policy_entries: state.policy.len(),
        defaults: state.defaults.len(),
        addresses: state.addresses.len(),
        identities: state.identities.len(),
        rules: state.rules.len(),
        relabel_changed,
        edit_changed,
        full_heap,
        recompile_heap,
    })
}

/// Policy trie entries a change upserts or removes.
fn policy_changes(diff: &StateDiff) -> usize {
    diff.policy.upserts.len() + diff.policy.removals.len()
}

/// Times [`CHANGE_REPS`] incremental changes (after four warm-ups); `change(rep)` applies the
/// repetition's version of the object, alternating, so every call is a real change.
fn alternate(
    mut change: impl FnMut(usize) -> Result<StateDiff, bulkhead_policy::Error>,
) -> Result<Samples> {
    for rep in 0..4 {
        ensure!(
            !change(rep)?.is_empty(),
            "every alternation changes the state"
        );
    }
    let mut samples = Samples::default();
    for rep in 0..CHANGE_REPS {
        let (result, t) = timed(|| change(rep));
        ensure!(!result?.is_empty(), "every alternation changes the state");
        samples.push(t.as_secs_f64());
    }
    Ok(samples)
}

//! Part A: the policy compiler on [`synth::Shape::LARGE`] (issue 2).
//!
//! Measured: YAML parsing (reported apart), a full compile with a fresh [`Compiler`], and
//! recompiles with the same `Compiler` after one pod is relabelled and after one policy is
//! edited. Recompiles alternate between the two versions of the input, so every repetition
//! compiles a real one-object change. Heap growth is measured in a repetition of its own, with
//! the counting allocator on (see [`alloc`]).

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, ensure};
use bulkhead_policy::{
    AllocationTable, CompiledState, Compiler, Inventory, PolicySet, WorkloadRef, load,
};
use jiff::Timestamp;

use super::{
    alloc::{self, HeapGrowth},
    stats::{Samples, timed},
};
use crate::synth::{self, Shape};

/// Repetitions of each timed measurement (after one warm-up).
const REPS: usize = 5;
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

/// Entries present in one map and not the other, or present in both with other values.
fn changed<K: Ord, V: PartialEq>(a: &BTreeMap<K, V>, b: &BTreeMap<K, V>) -> usize {
    let gone_or_changed = a.iter().filter(|(k, v)| b.get(k) != Some(v)).count();
    let added = b.keys().filter(|k| !a.contains_key(k)).count();
    gone_or_changed + added
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

    progress("compiler: recompile after one pod relabel");
    let mut relabelled = inv.clone();
    let (ns, name) = RELABELLED;
    let labels = BTreeMap::from([("app".to_owned(), "app-0".to_owned())]);
    ensure!(
        relabelled.set_workload_labels(&WorkloadRef::new(synth::namespace(ns), name), labels),
        "workload to relabel not found"
    );
    let mut compiler = Compiler::new(AllocationTable::default());
    compile(&mut compiler, &set, &inv)?;
    let (after, recompile_heap) = alloc::measure(|| compile(&mut compiler, &set, &relabelled));
    let relabel_changed = changed(&state.policy, &after?.policy);
    let relabel = alternate(&mut compiler, [(&set, &inv), (&set, &relabelled)])?;

    progress("compiler: recompile after one policy edit");
    let mut edited = set.clone();
    let edit_text = synth::namespace_policies_yaml(EDITED_NS, 1);
    for object in load::parse_documents("edit.yaml", &edit_text)? {
        edited.apply("edit.yaml", object)?;
    }
    ensure!(edited.len() == set.len(), "the edit must replace, not add");
    let mut compiler = Compiler::new(AllocationTable::default());
    compile(&mut compiler, &set, &inv)?;
    let edit_changed = changed(
        &state.policy,
        &compile(&mut compiler, &edited, &inv)?.policy,
    );
    let edit = alternate(&mut compiler, [(&set, &inv), (&edited, &inv)])?;
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

/// Times [`REPS`] recompiles with `compiler`, alternating between two inputs that differ by one
/// object (the compiler last compiled the second one, so the first repetition is a change too).
fn alternate(compiler: &mut Compiler, inputs: [(&PolicySet, &Inventory); 2]) -> Result<Samples> {
    let mut samples = Samples::default();
    for rep in 0..REPS {
        let (set, inv) = inputs[rep % 2];
        let (result, t) = timed(|| compile(compiler, set, inv));
        result?;
        samples.push(t.as_secs_f64());
    }
    Ok(samples)
}

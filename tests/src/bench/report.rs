//! The benchmark's report: Markdown tables for the README and a one-line JSON summary.

use std::{fmt::Write as _, fs, time::Duration};

use serde_json::{Value, json};

use super::{
    compile::CompileReport,
    datapath::{Config, DatapathReport, LaneResult, ProgramCost, STATS_ROUNDS},
    stats::{Samples, paired_ratio, ratio},
};

/// Full compile target (issue 2).
pub const FULL_COMPILE_TARGET_S: f64 = 1.0;
/// Incremental recompile target (issue 2).
pub const RECOMPILE_TARGET_S: f64 = 0.010;
/// Connection rate with the enforcer, as a fraction of the baseline (issue 3).
pub const CONNECTION_RATE_TARGET: f64 = 0.95;
/// Throughput with the enforcer, as a fraction of the baseline (issue 3).
pub const THROUGHPUT_TARGET: f64 = 0.98;
/// Run time per invocation with ~10k entries against ~10 entries, up to which the cost counts as
/// not growing with the rule count (the rest is measurement noise on a shared machine).
pub const FLAT_COST_LIMIT: f64 = 1.25;

/// Where and under what load the benchmark ran.
#[derive(Clone, Debug)]
pub struct Machine {
    pub cpus: usize,
    pub kernel: String,
    pub load_before: String,
    pub load_after: String,
}

impl Machine {
    /// The machine now (`load_after` is filled in by [`Machine::finish`]).
    pub fn now() -> Self {
        Self {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: read_trimmed("/proc/sys/kernel/osrelease"),
            load_before: load_average(),
            load_after: String::new(),
        }
    }

    pub fn finish(&mut self) {
        self.load_after = load_average();
    }
}

fn read_trimmed(path: &str) -> String {
    fs::read_to_string(path).map_or_else(|_| "?".to_owned(), |s| s.trim().to_owned())
}

/// The 1-minute load average.
fn load_average() -> String {
    read_trimmed("/proc/loadavg")
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_owned()
}

fn met(ok: bool) -> &'static str {
    if ok { "yes" } else { "**NO**" }
}

/// Seconds in the most readable unit.
fn time(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{:.0} µs", s * 1e6)
    }
}

/// An integer with thousands separators.
fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn gbit(bytes_per_s: f64) -> String {
    format!("{:.2}", bytes_per_s * 8.0 / 1e9)
}

/// The whole report as Markdown.
pub fn markdown(
    machine: &Machine,
    compile: Option<&CompileReport>,
    datapath: Option<&DatapathReport>,
    total: Duration,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## Benchmark (`cargo xtask bench`)\n");
    let _ = writeln!(
        out,
        "Machine: {} CPUs, Linux {}, 1-min load average {} at the start and {} at the end; the run \
         took {:.0} s. **The claims are the ratios** (each configuration against a baseline measured \
         in the same run, repetitions interleaved) and the targets they are checked against; \
         absolute numbers depend on the machine and on its load, and a shared 2-CPU machine makes \
         them noisy. Times are median and best (min) of the repetitions.\n",
        machine.cpus,
        machine.kernel,
        machine.load_before,
        machine.load_after,
        total.as_secs_f64()
    );
    if let Some(c) = compile {
        compile_tables(&mut out, c);
    }
    if let Some(d) = datapath {
        datapath_tables(&mut out, d);
    }
    out
}

fn compile_tables(out: &mut String, c: &CompileReport) {
    let _ = writeln!(
        out,
        "### Policy compiler: {} workloads, {} namespaces, {} policies (`tests/src/synth.rs`)\n",
        count(c.workloads as u64),
        count(c.namespaces as u64),
        count(c.policies as u64)
    );
    let _ = writeln!(out, "| measurement | median | min | target | met |");
    let _ = writeln!(out, "|---|---:|---:|---|---|");
    let row = |out: &mut String, what: &str, s: &Samples, target: Option<f64>| {
        let (target, ok) = match target {
            Some(t) => (format!("< {}", time(t)), met(s.median() < t)),
            None => ("(not part of the compile)".to_owned(), "-"),
        };
        let _ = writeln!(
            out,
            "| {what} | {} | {} | {target} | {ok} |",
            time(s.median()),
            time(s.min())
        );
    };
    row(
        out,
        "parse and validate policy YAML",
        &c.parse_policies,
        None,
    );
    row(out, "parse inventory YAML", &c.parse_inventory, None);
    row(
        out,
        "full compile, fresh compiler",
        &c.full,
        Some(FULL_COMPILE_TARGET_S),
    );
    row(
        out,
        &format!(
            "incremental change: one pod relabel ({} policy entries change)",
            count(c.relabel_changed as u64)
        ),
        &c.relabel,
        Some(RECOMPILE_TARGET_S),
    );
    row(
        out,
        &format!(
            "incremental change: one policy edit ({} policy entries change)",
            count(c.edit_changed as u64)
        ),
        &c.edit,
        Some(RECOMPILE_TARGET_S),
    );
    let _ = writeln!(out, "\n| compiled state | value |");
    let _ = writeln!(out, "|---|---:|");
    for (what, n) in [
        ("policy entries", c.policy_entries),
        ("defaults", c.defaults),
        ("addresses", c.addresses),
        ("identities", c.identities),
        ("rules (rule ids)", c.rules),
    ] {
        let _ = writeln!(out, "| {what} | {} |", count(n as u64));
    }
    let _ = writeln!(
        out,
        "| policy entries / (identities x rules) (bound: <= 1) | {:.5} ({}) |",
        c.bound_ratio(),
        met(c.bound_ratio() <= 1.0)
    );
    let _ = writeln!(
        out,
        "| heap: peak growth during a full compile | {} |",
        mib(c.full_heap.peak)
    );
    let _ = writeln!(
        out,
        "| heap: held by the compiled state | {} |",
        mib(c.full_heap.retained)
    );
    let _ = writeln!(
        out,
        "| heap: peak growth during one incremental change | {} |\n",
        mib(c.recompile_heap.peak)
    );
}

/// The programs' run time per unit of work (a connection, a byte) in the stats pass, shown with
/// `show`, and the CPU-efficiency ratio to the baseline that this time alone would cause: the
/// baseline spends `1 / baseline_per_cpu_s` CPU-seconds per unit, so the ratio is
/// `1 / (1 + cost * baseline_per_cpu_s)`. The statistics' own overhead is included, so the
/// prediction errs on the pessimistic side; what it does not explain is cost outside the
/// programs (attachment dispatch, socket storage, event wake-ups).
fn program_share(
    l: &LaneResult,
    costs: &[ProgramCost],
    units: u64,
    baseline_per_cpu_s: f64,
    show: fn(f64) -> String,
) -> String {
    if !l.config.enforces() || units == 0 {
        return "-".to_owned();
    }
    let ns_per_unit = costs.iter().map(|c| c.run_time_ns).sum::<u64>() as f64 / units as f64;
    let predicted = 1.0 / (1.0 + ns_per_unit * 1e-9 * baseline_per_cpu_s);
    format!("{}; {predicted:.3}", show(ns_per_unit))
}

/// Programs' run time per invocation over all programs of a run.
fn overall(costs: &[ProgramCost]) -> f64 {
    let runs: u64 = costs.iter().map(|c| c.runs).sum();
    let ns: u64 = costs.iter().map(|c| c.run_time_ns).sum();
    ns as f64 / runs as f64
}

/// Selects one run's program costs from a lane's result.
type Pick = fn(&LaneResult) -> &[ProgramCost];

/// Large-over-small run time per invocation of one run kind, over all programs.
fn cost_growth(d: &DatapathReport, pick: Pick) -> f64 {
    match (d.lane(Config::Small), d.lane(Config::Large)) {
        (Some(s), Some(l)) => ratio(overall(pick(l)), overall(pick(s))),
        _ => f64::NAN,
    }
}

fn datapath_tables(out: &mut String, d: &DatapathReport) {
    let Some(base) = d.lane(Config::Baseline) else {
        return;
    };
    let _ = writeln!(
        out,
        "### Datapath: TCP over veth between two workload namespaces\n\n\
         {} repetitions per configuration, interleaved; a repetition is {} sequential connections \
         (connect, 64-byte request and response, close) and {} s of one stream of 64 KiB writes. \
         The enforcer isolates both workloads (client egress, server ingress) and allows the pair \
         on the two benchmark ports; every verdict event is read and checked. Client and server \
         run pinned to one CPU, so every run has the same placement and the wall-clock rate \
         measures the CPU cost of the whole path, programs included; the CPU-efficiency ratios \
         (work per CPU-second of the client and the server, whose tasks run the whole veth path \
         and the programs) check it. The targets are ratios of wall-clock rates. The hook-floor lane attaches \
         programs that pass everything (two instructions) at the same six hooks: what the \
         kernel's hooks cost on this machine before any program body runs, the ceiling of any \
         datapath's ratio here.\n",
        d.reps,
        count(u64::from(d.connections_per_run)),
        d.bulk_time.as_secs_f64()
    );
    let _ = write!(out, "| measurement |");
    for l in &d.lanes {
        let _ = write!(out, " {} |", l.config.label());
    }
    let _ = writeln!(out, " target |");
    let _ = writeln!(out, "|---|{}---|", "---:|".repeat(d.lanes.len()));
    let cells = |f: &dyn Fn(&LaneResult) -> String| -> String {
        d.lanes.iter().map(|l| format!(" {} |", f(l))).collect()
    };
    let _ = writeln!(
        out,
        "| connections/s, median (best) |{} |",
        cells(&|l| format!(
            "{} ({})",
            count(l.connection_rate.median() as u64),
            count(l.connection_rate.max() as u64)
        ))
    );
    let floor = d.lane(Config::Floor);
    let ratio_cell = |l: &LaneResult, s: fn(&LaneResult) -> &Samples, target: f64| {
        let r = paired_ratio(s(l), s(base));
        let best = ratio(s(l).max(), s(base).max());
        match l.config {
            Config::Baseline => "1 (baseline)".to_owned(),
            Config::Floor => {
                format!("{r:.3} (hook floor: no datapath here can do better); best/best {best:.3}")
            }
            Config::Small | Config::Large => {
                format!("{r:.3} ({}); best/best {best:.3}", met(r >= target))
            }
        }
    };
    // The enforcer's lanes against the pass-only programs: the programs' own share.
    let floor_cell = |l: &LaneResult, s: fn(&LaneResult) -> &Samples| match floor {
        Some(f) if l.config.enforces() => format!("{:.3}", paired_ratio(s(l), s(f))),
        _ => "-".to_owned(),
    };
    let _ = writeln!(
        out,
        "| **connection rate / baseline**, median of paired repetitions |{} >= {CONNECTION_RATE_TARGET} |",
        cells(&|l| ratio_cell(l, |l| &l.connection_rate, CONNECTION_RATE_TARGET))
    );
    let _ = writeln!(
        out,
        "| connection rate / hook floor (the programs' own share), median of paired repetitions |{} |",
        cells(&|l| floor_cell(l, |l| &l.connection_rate))
    );
    let _ = writeln!(
        out,
        "| connections per CPU-second (client + server), median |{} |",
        cells(&|l| count(l.connections_per_cpu_s.median() as u64))
    );
    let _ = writeln!(
        out,
        "| **same, CPU efficiency / baseline** (less sensitive to load) |{} >= {CONNECTION_RATE_TARGET} |",
        cells(&|l| ratio_cell(l, |l| &l.connections_per_cpu_s, CONNECTION_RATE_TARGET))
    );
    let _ = writeln!(
        out,
        "| programs' run time per connection (stats pass); the CPU-efficiency ratio it alone predicts |{} |",
        cells(&|l| program_share(
            l,
            &l.connection_costs,
            l.stats_connections,
            base.connections_per_cpu_s.median(),
            |ns| time(ns * 1e-9)
        ))
    );
    let _ = writeln!(
        out,
        "| throughput Gbit/s, median (best) |{} |",
        cells(&|l| format!(
            "{} ({})",
            gbit(l.throughput.median()),
            gbit(l.throughput.max())
        ))
    );
    let _ = writeln!(
        out,
        "| **throughput / baseline**, median of paired repetitions |{} >= {THROUGHPUT_TARGET} |",
        cells(&|l| ratio_cell(l, |l| &l.throughput, THROUGHPUT_TARGET))
    );
    let _ = writeln!(
        out,
        "| throughput / hook floor, median of paired repetitions |{} |",
        cells(&|l| floor_cell(l, |l| &l.throughput))
    );
    let _ = writeln!(
        out,
        "| Gbit per CPU-second (client + server), median |{} |",
        cells(&|l| gbit(l.bytes_per_cpu_s.median()))
    );
    let _ = writeln!(
        out,
        "| **same, CPU efficiency / baseline** (less sensitive to load) |{} >= {THROUGHPUT_TARGET} |",
        cells(&|l| ratio_cell(l, |l| &l.bytes_per_cpu_s, THROUGHPUT_TARGET))
    );
    let _ = writeln!(
        out,
        "| programs' run time per MiB sent (stats pass); the CPU-efficiency ratio it alone predicts |{} |",
        cells(&|l| program_share(
            l,
            &l.bulk_costs,
            l.stats_bulk_bytes,
            base.bytes_per_cpu_s.median(),
            |ns| time(ns * 1e-9 * 1024.0 * 1024.0)
        ))
    );
    let _ = writeln!(
        out,
        "| policy entries / addresses in the maps |{} |",
        cells(&|l| match l.apply {
            Some(_) => format!(
                "{} / {}",
                count(l.policy_entries as u64),
                count(l.addresses as u64)
            ),
            None => "-".to_owned(),
        })
    );
    let _ = writeln!(
        out,
        "| programs attached on the client's cgroup path |{} |",
        cells(&|l| l.programs_on_path.to_string())
    );
    let _ = writeln!(
        out,
        "| `apply` into empty maps |{} |",
        cells(&|l| l
            .apply
            .map_or_else(|| "-".to_owned(), |t| time(t.as_secs_f64())))
    );
    let _ = writeln!(
        out,
        "| verdict events read: connect + SYN (unexpected, lost) |{} |\n",
        cells(&|l| match l.apply {
            Some(_) => format!(
                "{} + {} ({}, {})",
                count(l.connect_events),
                count(l.syn_events),
                l.unexpected_events,
                l.lost_events
            ),
            None => "-".to_owned(),
        })
    );
    program_table(out, d);
}

fn program_table(out: &mut String, d: &DatapathReport) {
    let (Some(small), Some(large)) = (d.lane(Config::Small), d.lane(Config::Large)) else {
        return;
    };
    let _ = writeln!(
        out,
        "Programs' own run time per invocation (`BPF_ENABLE_STATS`, a separate pass of \
         {STATS_ROUNDS} rounds of one connection-rate run and one bulk run per configuration, \
         interleaved, because the statistics cost time themselves). Connections are decided \
         once (connect, SYN) and then follow the socket's cached decision, so bulk packets never \
         look at the policy trie.\n"
    );
    let _ = writeln!(
        out,
        "| run | program | invocations (~10 / ~10k) | ns per invocation, ~10 entries | ns per invocation, ~10k entries | ~10k / ~10 |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|");
    let runs: [(&str, Pick); 2] = [
        ("connections", |l| &l.connection_costs),
        ("bulk", |l| &l.bulk_costs),
    ];
    for (run, pick) in runs {
        for s in pick(small) {
            let l = pick(large).iter().find(|c| c.program == s.program);
            let (l_runs, l_ns) = l.map_or((0, f64::NAN), |c| (c.runs, c.ns_per_run()));
            let _ = writeln!(
                out,
                "| {run} | `{}` | {} / {} | {:.0} | {:.0} | {:.2} |",
                s.program,
                count(s.runs),
                count(l_runs),
                s.ns_per_run(),
                l_ns,
                ratio(l_ns, s.ns_per_run())
            );
        }
        let growth = cost_growth(d, pick);
        let _ = writeln!(
            out,
            "| {run} | **all programs** | | {:.0} | {:.0} | **{growth:.2}** ({} <= {FLAT_COST_LIMIT}) |",
            overall(pick(small)),
            overall(pick(large)),
            met(growth <= FLAT_COST_LIMIT)
        );
    }
    let _ = writeln!(out);
}

fn samples_json(s: &Samples) -> Value {
    json!({"median": s.median(), "min": s.min(), "max": s.max(), "n": s.0.len()})
}

/// The one-line JSON summary.
pub fn json(
    machine: &Machine,
    compile: Option<&CompileReport>,
    datapath: Option<&DatapathReport>,
) -> String {
    let compile = compile.map(|c| {
        json!({
            "parse_policies_s": samples_json(&c.parse_policies),
            "parse_inventory_s": samples_json(&c.parse_inventory),
            "full_compile_s": samples_json(&c.full),
            "recompile_relabel_s": samples_json(&c.relabel),
            "recompile_edit_s": samples_json(&c.edit),
            "full_compile_met": c.full.median() < FULL_COMPILE_TARGET_S,
            "recompile_met": c.relabel.median() < RECOMPILE_TARGET_S
                && c.edit.median() < RECOMPILE_TARGET_S,
            "policy_entries": c.policy_entries,
            "defaults": c.defaults,
            "addresses": c.addresses,
            "identities": c.identities,
            "rules": c.rules,
            "bound_ratio": c.bound_ratio(),
            "heap_peak_bytes": c.full_heap.peak,
            "heap_state_bytes": c.full_heap.retained,
        })
    });
    let datapath = datapath.and_then(|d| {
        let base = d.lane(Config::Baseline)?;
        let lanes: Vec<Value> = d
            .lanes
            .iter()
            .map(|l| {
                json!({
                    "config": format!("{:?}", l.config).to_lowercase(),
                    "policy_entries": l.policy_entries,
                    "connections_per_s": samples_json(&l.connection_rate),
                    "throughput_bytes_per_s": samples_json(&l.throughput),
                    "connection_rate_ratio": paired_ratio(&l.connection_rate, &base.connection_rate),
                    "throughput_ratio": paired_ratio(&l.throughput, &base.throughput),
                    "connection_cpu_efficiency_ratio":
                        paired_ratio(&l.connections_per_cpu_s, &base.connections_per_cpu_s),
                    "throughput_cpu_efficiency_ratio":
                        paired_ratio(&l.bytes_per_cpu_s, &base.bytes_per_cpu_s),
                    "ns_per_invocation_connections": overall(&l.connection_costs),
                    "ns_per_invocation_bulk": overall(&l.bulk_costs),
                })
            })
            .collect();
        let enforced = d.lanes.iter().filter(|l| l.config.enforces());
        let met = |s: fn(&LaneResult) -> &Samples, target: f64| {
            enforced
                .clone()
                .all(|l| paired_ratio(s(l), s(base)) >= target)
        };
        Some(json!({
            "lanes": lanes,
            "connection_rate_met": met(|l| &l.connection_rate, CONNECTION_RATE_TARGET),
            "throughput_met": met(|l| &l.throughput, THROUGHPUT_TARGET),
            "cost_growth_connections": cost_growth(d, |l| &l.connection_costs),
            "cost_growth_bulk": cost_growth(d, |l| &l.bulk_costs),
        }))
    });
    json!({
        "bench": "bulkhead",
        "claim": "ratios to a same-run baseline; absolute numbers are machine- and load-dependent",
        "cpus": machine.cpus,
        "kernel": machine.kernel,
        "load_before": machine.load_before,
        "load_after": machine.load_after,
        "compiler": compile,
        "datapath": datapath,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(time(1.5), "1.50 s");
        assert_eq!(time(0.0123), "12.3 ms");
        assert_eq!(time(0.000_05), "50 µs");
    }
}

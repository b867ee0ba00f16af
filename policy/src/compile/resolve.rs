//! Precedence resolution of one `(local, direction, peer, protocol, port interval)`: tiers,
//! priorities, deny-beats-allow, pass, isolation, audit mode and entry windows (design.md
//! "Precedence", "Audit mode", "Time windows").

use std::sync::Arc;

use enforcer_common::{
    PolicyValue, REASON_ALLOWED_BY_RULE, REASON_DEFAULT_DENY, REASON_DENIED_BY_RULE,
    REASON_NOT_ISOLATED, RULE_NONE, TIME_UNBOUNDED_END, VERDICT_ALLOW, VERDICT_AUDIT, VERDICT_DENY,
};
use jiff::Timestamp;

use crate::ir::{self, Action, Tier};
use crate::model::ObjectKey;

/// Unix-epoch nanoseconds of `t`, clamped to `u64`.
pub(crate) fn nanos(t: Timestamp) -> u64 {
    u64::try_from(t.as_nanosecond().max(0)).unwrap_or(u64::MAX)
}

/// A rule as the resolver sees it, with its selected peers.
pub(crate) struct CRule<'a> {
    pub tier: Tier,
    pub netpol: bool,
    pub priority: u32,
    pub key: &'a ObjectKey,
    pub audit: bool,
    pub rule: &'a ir::Rule,
    /// Sorted peer identities; None = any peer.
    pub peers: Option<Arc<Vec<u32>>>,
    pub active: bool,
}

impl CRule<'_> {
    /// Total precedence order (the documented tie-break: kind, namespace, name, index).
    pub fn order(&self) -> impl Ord + '_ {
        (
            self.tier,
            self.netpol,
            self.priority,
            self.rule.action,
            self.key,
            self.rule.direction,
            self.rule.rule.index,
        )
    }

    /// Whether the rule names `peer` (identity 0 = the wildcard lookup: only any-peer rules).
    pub fn matches_peer(&self, peer: u32) -> bool {
        match &self.peers {
            None => true,
            Some(p) => peer != 0 && p.binary_search(&peer).is_ok(),
        }
    }
}

/// The isolating policies of one `(local, direction)`: rule ids of the first non-audit one and of
/// the first one of all, in `(kind, namespace, name)` order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct Isolation {
    pub actual: Option<u32>,
    pub hypothetical: Option<u32>,
}

type Outcome = (u8, u8, u32);

fn decide(rules: &[&CRule<'_>], iso: Option<u32>, include_audit: bool) -> Outcome {
    let mut passed = false;
    let mut namespace_done = false;
    for r in rules {
        if !r.active || (r.audit && !include_audit) {
            continue;
        }
        if r.tier == Tier::Baseline && !namespace_done {
            namespace_done = true;
            if let Some(i) = iso {
                return (VERDICT_DENY, REASON_DEFAULT_DENY, i);
            }
        }
        if r.tier == Tier::Admin && passed {
            continue;
        }
        match r.rule.action {
            Action::Allow => return (VERDICT_ALLOW, REASON_ALLOWED_BY_RULE, r.rule.rule_id),
            Action::Deny => return (VERDICT_DENY, REASON_DENIED_BY_RULE, r.rule.rule_id),
            Action::Pass => passed = true,
        }
    }
    if !namespace_done && let Some(i) = iso {
        return (VERDICT_DENY, REASON_DEFAULT_DENY, i);
    }
    (VERDICT_ALLOW, REASON_NOT_ISOLATED, RULE_NONE)
}

/// Resolves the rules covering one port interval (sorted by precedence, active or not) into the
/// entry value, windowed by the boundaries of every covering rule around `at`.
pub(crate) fn resolve(rules: &[&CRule<'_>], iso: Isolation, at: Timestamp) -> PolicyValue {
    let actual = decide(rules, iso.actual, false);
    let (verdict, reason, rule_id) = if actual.0 == VERDICT_DENY {
        actual
    } else {
        let hypo = decide(rules, iso.hypothetical, true);
        if hypo.0 == VERDICT_DENY {
            (VERDICT_AUDIT, hypo.1, hypo.2)
        } else {
            actual
        }
    };
    let at_ns = nanos(at);
    let mut lo = 0u64;
    let mut hi = TIME_UNBOUNDED_END;
    for r in rules {
        for b in [r.rule.not_before, r.rule.expires_at].into_iter().flatten() {
            let b = nanos(b);
            if b <= at_ns {
                lo = lo.max(b);
            } else {
                hi = hi.min(b);
            }
        }
    }
    PolicyValue {
        verdict,
        reason,
        _pad: [0; 2],
        rule_id,
        not_before: lo,
        expires_at: hi,
    }
}

/// The value with no covering rule: default deny when isolated, else not isolated.
pub(crate) fn default_value(iso: Isolation) -> PolicyValue {
    resolve(&[], iso, Timestamp::UNIX_EPOCH)
}

/// `allow, NOT_ISOLATED, unbounded`: what an absent default gives.
pub(crate) fn not_isolated() -> PolicyValue {
    default_value(Isolation::default())
}

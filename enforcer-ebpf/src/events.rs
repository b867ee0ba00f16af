//! Writes `VerdictEvent`s to the `EVENTS` ring buffer; counts what does not fit in
//! `EVENT_LOSSES` (per CPU, summed by user space).
//!
//! Batched wake-ups: a submit does not wake the reader (each wake-up is an interrupt and a
//! context switch, more than the program itself costs) until the unread data passes an eighth
//! of the ring; the reader also drains the ring on a short timer (`EventReader`), so an event
//! reaches the log within that period, and a burst wakes it long before the ring fills.

use aya_ebpf::bindings::{
    BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE,
};
use enforcer_common::VerdictEvent;

use crate::maps::{EVENT_LOSSES, EVENTS};

/// The submit flag: wake the reader only once an eighth of the ring is unread.
#[inline(always)]
fn wakeup_flag() -> u64 {
    let unread = EVENTS.query(u64::from(BPF_RB_AVAIL_DATA));
    let size = EVENTS.query(u64::from(BPF_RB_RING_SIZE));
    if unread > size / 8 {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}

/// Reserves, fills and submits one event (its timestamp as given: the decision's instant); on a
/// full ring buffer counts one loss instead.
#[inline(always)]
pub fn emit(event: &VerdictEvent) {
    match EVENTS.reserve::<VerdictEvent>(0) {
        Some(mut slot) => {
            slot.write(*event);
            slot.submit(wakeup_flag());
        }
        None => {
            if let Some(counter) = EVENT_LOSSES.get_ptr_mut(0) {
                // SAFETY: a per-CPU slot: only this CPU's program writes it, one at a time.
                unsafe { *counter += 1 };
            }
        }
    }
}

//! Writes `VerdictEvent`s to the `EVENTS` ring buffer; counts what does not fit in
//! `EVENT_LOSSES` (per CPU, summed by user space).

use enforcer_common::VerdictEvent;

use crate::maps::{EVENT_LOSSES, EVENTS};

/// Reserves, fills and submits one event (its timestamp as given: the decision's instant); on a
/// full ring buffer counts one loss instead.
#[inline(always)]
pub fn emit(event: &VerdictEvent) {
    match EVENTS.reserve::<VerdictEvent>(0) {
        Some(mut slot) => {
            slot.write(*event);
            slot.submit(0);
        }
        None => {
            if let Some(counter) = EVENT_LOSSES.get_ptr_mut(0) {
                // SAFETY: a per-CPU slot: only this CPU's program writes it, one at a time.
                unsafe { *counter += 1 };
            }
        }
    }
}

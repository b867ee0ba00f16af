//! Reading verdict events from the pinned `EVENTS` ring buffer, with the loss count of
//! `EVENT_LOSSES` (one counter per CPU, summed here).
//!
//! Events written while no process was reading stay in the pinned ring buffer until it is full;
//! the rest are counted as lost. A reader's first batch reports every loss since install.

use std::path::Path;

use aya::maps::{MapData, PerCpuArray, RingBuf};
use enforcer_common::VerdictEvent;
use tokio::io::{Interest, unix::AsyncFd};

use super::{DatapathError, maps::open_pinned, maps::typed, pins};

/// How often [`EventReader::next_batch`] looks at the ring when the programs did not wake it.
pub const DRAIN_PERIOD: std::time::Duration = std::time::Duration::from_millis(100);

/// One batch of events and the number lost since the previous batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventBatch {
    pub events: Vec<VerdictEvent>,
    pub lost: u64,
}

/// Reads verdict events; only one reader should consume the ring buffer at a time.
pub struct EventReader {
    ring: AsyncFd<RingBuf<MapData>>,
    losses: PerCpuArray<MapData, u64>,
    reported_losses: u64,
}

impl EventReader {
    /// Opens the pinned ring buffer and loss counters. Must run inside a tokio runtime.
    pub(super) fn open(root: &Path) -> Result<Self, DatapathError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(DatapathError::io(
                "registering (outside a tokio runtime) the ring buffer of",
                pins::map(root, pins::MAP_EVENTS),
                std::io::Error::other("no tokio runtime"),
            ));
        }
        let ring: RingBuf<MapData> = typed!(root, pins::MAP_EVENTS);
        let losses: PerCpuArray<MapData, u64> = typed!(root, pins::MAP_EVENT_LOSSES);
        #[expect(
            unsafe_code,
            reason = "tokio's AsyncFd registration is unsafe since 1.53.3 (pitfall 4)"
        )]
        // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged, for its whole life,
        // and the AsyncFd owns the RingBuf.
        let ring =
            unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }.map_err(|e| {
                DatapathError::io(
                    "registering the ring buffer of",
                    pins::map(root, pins::MAP_EVENTS),
                    e.into(),
                )
            })?;
        Ok(Self {
            ring,
            losses,
            reported_losses: 0,
        })
    }

    /// Total events lost since install (summed over CPUs).
    pub fn lost_total(&self) -> Result<u64, DatapathError> {
        sum_losses(&self.losses)
    }

    /// Takes every event available now (possibly none) and the losses since the last batch.
    pub fn try_next_batch(&mut self) -> Result<EventBatch, DatapathError> {
        let mut events = Vec::new();
        let ring = self.ring.get_mut();
        while let Some(item) = ring.next() {
            if let Some(event) = decode(&item) {
                events.push(event);
            }
        }
        let total = self.lost_total()?;
        let lost = total.saturating_sub(self.reported_losses);
        self.reported_losses = total;
        Ok(EventBatch { events, lost })
    }

    /// Waits until at least one event is available (or a loss was counted) and returns them.
    ///
    /// The programs wake the reader only when an eighth of the ring is unread (one wake-up per
    /// event would cost more than the programs themselves), so this also looks every
    /// [`DRAIN_PERIOD`]: an event waits at most that long.
    pub async fn next_batch(&mut self) -> Result<EventBatch, DatapathError> {
        loop {
            let batch = self.try_next_batch()?;
            if !batch.events.is_empty() || batch.lost > 0 {
                return Ok(batch);
            }
            if let Ok(guard) = tokio::time::timeout(DRAIN_PERIOD, self.ring.readable_mut()).await {
                let mut guard = guard.map_err(|e| {
                    DatapathError::io("waiting on the ring buffer", pins::MAP_EVENTS, e)
                })?;
                guard.clear_ready();
            }
        }
    }
}

/// Every event left in the ring buffer pinned under `root` and the losses its counters hold
/// (all since its install), read without a runtime: for a generation being retired, whose
/// programs no longer run.
pub(super) fn drain(root: &Path) -> Result<EventBatch, DatapathError> {
    let mut ring: RingBuf<MapData> = typed!(root, pins::MAP_EVENTS);
    let losses: PerCpuArray<MapData, u64> = typed!(root, pins::MAP_EVENT_LOSSES);
    let mut events = Vec::new();
    while let Some(item) = ring.next() {
        if let Some(event) = decode(&item) {
            events.push(event);
        }
    }
    Ok(EventBatch {
        events,
        lost: sum_losses(&losses)?,
    })
}

fn sum_losses(losses: &PerCpuArray<MapData, u64>) -> Result<u64, DatapathError> {
    let per_cpu = losses
        .get(&0, 0)
        .map_err(|e| DatapathError::map(pins::MAP_EVENT_LOSSES, "reading", e))?;
    Ok(per_cpu.iter().copied().fold(0u64, u64::saturating_add))
}

/// Decodes one ring-buffer record, field by field at the offsets of the `repr(C)` layout (no
/// unsafe transmute); records of another size are skipped.
fn decode(b: &[u8]) -> Option<VerdictEvent> {
    if b.len() != size_of::<VerdictEvent>() {
        return None;
    }
    let u64_at = |o: usize| u64::from_ne_bytes(b[o..o + 8].try_into().unwrap_or_default());
    let u32_at = |o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().unwrap_or_default());
    let u16_at = |o: usize| u16::from_ne_bytes(b[o..o + 2].try_into().unwrap_or_default());
    let addr_at = |o: usize| -> [u8; 16] { b[o..o + 16].try_into().unwrap_or_default() };
    Some(VerdictEvent {
        timestamp_ns: u64_at(0),
        cgroup_id: u64_at(8),
        socket_cookie: u64_at(16),
        revision: u64_at(24),
        src_addr: addr_at(32),
        dst_addr: addr_at(48),
        src_port: u16_at(64),
        dst_port: u16_at(66),
        local_identity: u32_at(68),
        remote_identity: u32_at(72),
        rule_id: u32_at(76),
        direction: b[80],
        hook: b[81],
        protocol: b[82],
        verdict: b[83],
        reason: b[84],
        family: b[85],
        _pad: [0; 10],
    })
}

#[cfg(test)]
mod tests {
    use std::mem::offset_of;

    use super::*;

    #[test]
    fn decode_offsets_match_the_layout() {
        assert_eq!(offset_of!(VerdictEvent, src_addr), 32);
        assert_eq!(offset_of!(VerdictEvent, src_port), 64);
        assert_eq!(offset_of!(VerdictEvent, local_identity), 68);
        assert_eq!(offset_of!(VerdictEvent, rule_id), 76);
        assert_eq!(offset_of!(VerdictEvent, direction), 80);
        assert_eq!(offset_of!(VerdictEvent, family), 85);
        let mut b = [0u8; 96];
        b[66..68].copy_from_slice(&8080u16.to_ne_bytes());
        b[76..80].copy_from_slice(&77u32.to_ne_bytes());
        b[83] = 2;
        let e = decode(&b).expect("a full record decodes");
        assert_eq!((e.dst_port, e.rule_id, e.verdict), (8080, 77, 2));
        assert!(decode(&b[..95]).is_none());
    }
}

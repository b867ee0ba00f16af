//! A global allocator that can count heap growth: the benchmark binary installs it with
//! `#[global_allocator]`, and [`measure`] reports the peak and the retained growth of the heap
//! while a closure runs. Counting is off outside [`measure`] (one relaxed load per allocation),
//! so timed repetitions run at the system allocator's speed.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicBool, AtomicIsize, Ordering::Relaxed},
};

static COUNTING: AtomicBool = AtomicBool::new(false);
static CURRENT: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

/// The system allocator plus byte counting while [`measure`] runs.
pub struct CountingAlloc;

fn grew(bytes: usize) {
    if COUNTING.load(Relaxed) {
        let delta = isize::try_from(bytes).unwrap_or(isize::MAX);
        let now = CURRENT.fetch_add(delta, Relaxed).saturating_add(delta);
        PEAK.fetch_max(now, Relaxed);
    }
}

fn shrank(bytes: usize) {
    if COUNTING.load(Relaxed) {
        CURRENT.fetch_sub(isize::try_from(bytes).unwrap_or(isize::MAX), Relaxed);
    }
}

#[expect(
    unsafe_code,
    reason = "a GlobalAlloc is unsafe to implement; this one forwards every call to System"
)]
// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so System's
// guarantees hold; the counters have no effect on the memory returned.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we pass on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, i.e. from System, with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from System with `layout`; the caller upholds realloc's contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            grew(new_size);
            shrank(layout.size());
        }
        p
    }
}

/// Heap growth while a closure ran (bytes allocated and not yet freed, relative to the start).
#[derive(Clone, Copy, Debug, Default)]
pub struct HeapGrowth {
    /// The highest point reached.
    pub peak: u64,
    /// What was still allocated when the closure returned (its result included).
    pub retained: u64,
}

/// Runs `f` with counting on. Meaningful only in a binary that installed [`CountingAlloc`] and
/// while no other thread allocates much; returns zeros otherwise.
pub fn measure<T>(f: impl FnOnce() -> T) -> (T, HeapGrowth) {
    CURRENT.store(0, Relaxed);
    PEAK.store(0, Relaxed);
    COUNTING.store(true, Relaxed);
    let out = f();
    COUNTING.store(false, Relaxed);
    let growth = HeapGrowth {
        peak: u64::try_from(PEAK.load(Relaxed)).unwrap_or(0),
        retained: u64::try_from(CURRENT.load(Relaxed)).unwrap_or(0),
    };
    (out, growth)
}

//! Heap accounting for memory figures: the process allocator wrapped in a
//! counter (`cap`), installed by this crate for every binary that links it.

use std::alloc::System;

use cap::Cap;

#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

/// Bytes currently allocated on the heap by this process.
pub fn live_bytes() -> usize {
    ALLOCATOR.allocated()
}

//! Locking that survives a panic elsewhere.
//!
//! The SDK's shared state behind a `std::sync::Mutex` is always left
//! consistent between statements (no invariant spans an `await` or a
//! call that can panic half-way), so a lock poisoned by a panic on
//! another thread still guards valid data. Taking it anyway keeps one
//! panicking task from taking down every later caller with it.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, ignoring poisoning (see the [module docs](self)).
///
/// ```
/// let m = std::sync::Mutex::new(1);
/// *p2p_core::sync::lock(&m) += 1;
/// assert_eq!(*p2p_core::sync::lock(&m), 2);
/// ```
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

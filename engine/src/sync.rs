//! Locks that survive a panic elsewhere.
//!
//! A thread that panics while holding a lock poisons it. Every lock in the engine guards
//! state that stays consistent at each step (a panic is reported through the worker's or the
//! request's own error path), so the engine takes the guard of a poisoned lock rather than
//! spreading the panic to every later reader. These helpers are the one place that says so.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks `m`, taking the guard of a poisoned lock.
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Read-locks `l`, taking the guard of a poisoned lock.
pub(crate) fn read<T: ?Sized>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

/// Write-locks `l`, taking the guard of a poisoned lock.
pub(crate) fn write<T: ?Sized>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves a lock poisoned by a panicking holder still hands out its (consistent) state.
    #[test]
    fn poisoned_locks_still_lock() {
        let m = std::sync::Arc::new(Mutex::new(5));
        let l = std::sync::Arc::new(RwLock::new(7));
        let (m2, l2) = (m.clone(), l.clone());
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().expect("lock");
            let _w = l2.write().expect("write");
            panic!("poison both");
        })
        .join();
        assert!(m.is_poisoned() && l.is_poisoned());
        assert_eq!(*lock(&m), 5);
        assert_eq!(*read(&l), 7);
        *write(&l) = 8;
        assert_eq!(*read(&l), 8);
    }
}

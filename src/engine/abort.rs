//! Cancelling inside a `llama_decode`: llama.cpp asks an abort callback
//! between the nodes of its compute graph, so a decode whose sequences have
//! all been cancelled stops within one node instead of running to the end
//! of the step (or of a whole prompt's prefill).
//!
//! A [`Batch`](super::batch::Batch) arms its gate before each decode with
//! the cancel handles of its live slots, and only when every live slot has
//! one: a decode is aborted only when nothing in it is still wanted, so a
//! cancelled sequence never cuts short the others it shares a step with.

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::events::CancelHandle;

/// What the abort callback reads. Its address is handed to llama.cpp, so it
/// lives in a `Box` that outlives the context.
#[derive(Debug, Default)]
pub(crate) struct AbortGate {
    armed: AtomicBool,
    handles: Mutex<Vec<CancelHandle>>,
}

impl AbortGate {
    /// Arm for the next decode with these handles (one per live sequence),
    /// or disarm with `None` (some live sequence cannot be cancelled).
    pub(crate) fn arm(&self, handles: Option<Vec<CancelHandle>>) {
        let mut h = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        match handles {
            Some(v) if !v.is_empty() => {
                *h = v;
                self.armed.store(true, Ordering::SeqCst);
            }
            _ => {
                self.armed.store(false, Ordering::SeqCst);
                h.clear();
            }
        }
    }

    /// Whether the decode in flight should stop: armed, and every handle
    /// cancelled. Never blocks (llama.cpp calls it between graph nodes).
    pub(crate) fn should_abort(&self) -> bool {
        if !self.armed.load(Ordering::Relaxed) {
            return false;
        }
        match self.handles.try_lock() {
            Ok(h) => !h.is_empty() && h.iter().all(CancelHandle::is_cancelled),
            Err(_) => false,
        }
    }

    /// The callback and its data pointer for `llama_context_params`.
    pub(crate) fn callback(&self) -> (unsafe extern "C" fn(*mut c_void) -> bool, *mut c_void) {
        (abort_callback, self as *const Self as *mut c_void)
    }
}

/// llama.cpp's `ggml_abort_callback`. It must not unwind into C.
unsafe extern "C" fn abort_callback(data: *mut c_void) -> bool {
    if data.is_null() {
        return false;
    }
    // SAFETY: `data` is the `AbortGate` whose `callback()` produced it; the
    // batch keeps that gate (boxed, so it never moves) alive for as long as
    // the context that calls this.
    let gate = unsafe { &*(data as *const AbortGate) };
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| gate.should_abort())).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_aborts_only_when_every_live_sequence_is_cancelled() {
        let gate = AbortGate::default();
        let (a, b) = (CancelHandle::new(), CancelHandle::new());
        assert!(!gate.should_abort(), "unarmed");
        gate.arm(Some(vec![a.clone(), b.clone()]));
        assert!(!gate.should_abort());
        a.cancel();
        assert!(!gate.should_abort(), "b is still wanted");
        b.cancel();
        assert!(gate.should_abort());
        let (cb, data) = gate.callback();
        assert!(unsafe { cb(data) }, "the C callback reads the same gate");
        gate.arm(None);
        assert!(!gate.should_abort() && !unsafe { cb(data) }, "disarmed: a sequence without a handle is in the decode");
        gate.arm(Some(Vec::new()));
        assert!(!gate.should_abort(), "no sequences: nothing to abort");
        assert!(!unsafe { cb(std::ptr::null_mut()) });
    }
}

//! Group commit and poisoning: how far the log is durable, who syncs it next, and whether a failed
//! sync has made the engine refuse writes.
//!
//! GROUP COMMIT
//! ============
//!
//! An fdatasync costs the same for one record as for a hundred, so concurrent writers share it (group
//! commit, DeWitt et al., "Implementation Techniques for Main Memory Database Systems", SIGMOD 1984).
//! Every append advances a byte counter, the lsn (`writer::Writer::lsn`). A writer that needs
//! durability waits until the durable lsn reaches its record's end; the first waiter with no sync in
//! flight becomes the leader, samples the current end of the log, syncs, publishes, and wakes the
//! others; anyone not covered waits for the next round. Invariant: `synced_lsn` only ever names bytes
//! that an fdatasync that started after their `pwrite` has made durable.
//!
//! POISONING
//! =========
//!
//! When fdatasync fails, Linux may already have dropped the dirty pages and will not report the error
//! again ("fsyncgate", PostgreSQL 2018): retrying would falsely succeed. So the first failure poisons
//! the engine: every later write fails with `Error::Poisoned` until the directory is reopened and
//! recovered from what is actually on disk.
//!
//! This module knows nothing of segments or the keydir: [`GroupCommit::wait`] is handed a way to
//! sample the active file and the end of the log, and runs the protocol around it.

use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::options::FileSync;

/// Group-commit state, behind `GroupCommit::state`.
#[derive(Default)]
struct SyncState {
    /// Every byte up to this lsn is durable.
    synced_lsn: u64,
    /// A thread is running fdatasync right now; others wait on `GroupCommit::cv` instead of syncing
    /// too.
    leader: bool,
}

/// The group commit and the poison flag, one per engine (a field of `state::Inner`).
#[derive(Default)]
pub(crate) struct GroupCommit {
    /// Who is syncing and how far the log is durable. Waiters sleep on `cv`; the leader notifies all
    /// after each fdatasync. Never held while taking the writer lock (the leader releases it first).
    state: Mutex<SyncState>,
    /// Signalled after every group-commit fdatasync (success or failure) and after a roll-over sync.
    cv: Condvar,
    /// Set after a failed sync (or an injected crash): every write is then refused.
    poisoned: AtomicBool,
    /// Group-commit fdatasync calls that completed, for `stats()` (roll-over syncs are not counted).
    syncs: AtomicU64,
}

impl GroupCommit {
    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::SeqCst)
    }

    pub(crate) fn poison(&self) {
        self.poisoned.store(true, Ordering::SeqCst);
    }

    /// Every byte up to this lsn is durable.
    pub(crate) fn synced_lsn(&self) -> u64 {
        self.state.lock().synced_lsn
    }

    /// Group-commit fdatasync calls that completed.
    pub(crate) fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Publishes a sync made outside the group commit (the writer's, at roll-over): every byte up to
    /// `lsn` is durable. Wakes the waiters.
    pub(crate) fn publish(&self, lsn: u64) {
        let mut st = self.state.lock();
        st.synced_lsn = st.synced_lsn.max(lsn);
        drop(st);
        self.cv.notify_all();
    }

    /// Waits until `lsn` is durable. The first waiter that finds no sync in flight becomes the leader:
    /// it calls `sample` for the active file and the current end of the log (taking the writer lock
    /// briefly), fdatasyncs that file outside every lock, publishes the new durable lsn and wakes
    /// everyone. Writers that appended meanwhile are covered by the next round, so one fdatasync serves
    /// every writer that arrived during the previous one. A failed fdatasync poisons.
    pub(crate) fn wait(
        &self,
        lsn: u64,
        file_sync: &dyn FileSync,
        sample: impl Fn() -> (Arc<File>, u64),
    ) -> Result<()> {
        let mut st = self.state.lock();
        loop {
            if st.synced_lsn >= lsn {
                return Ok(());
            }
            if self.is_poisoned() {
                return Err(Error::Poisoned);
            }
            if st.leader {
                self.cv.wait(&mut st);
                continue;
            }
            st.leader = true;
            let (result, target) = MutexGuard::unlocked(&mut st, || {
                // Let writers that are runnable right now append first, so this fdatasync covers them
                // too. Costs nothing when no other thread is runnable (a lone writer).
                std::thread::yield_now();
                let (file, target) = sample();
                (file_sync.sync_data(&file), target)
            });
            st.leader = false;
            match result {
                Ok(()) => {
                    st.synced_lsn = st.synced_lsn.max(target);
                    self.syncs.fetch_add(1, Ordering::Relaxed);
                    self.cv.notify_all();
                }
                Err(e) => {
                    self.poison();
                    self.cv.notify_all();
                    tracing::error!(error = %e, "fdatasync failed; engine poisoned, refusing writes");
                    return Err(Error::io(
                        "fdatasync of the active segment (engine now poisoned)",
                        e,
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use super::GroupCommit;
    use crate::error::Error;
    use crate::options::FileSync;

    /// Counts fdatasyncs; fails them once `fail` is set.
    #[derive(Default)]
    struct Counting {
        calls: AtomicU64,
        fail: AtomicBool,
    }

    impl FileSync for Counting {
        fn sync_data(&self, _: &File) -> std::io::Result<()> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.fail.load(Ordering::SeqCst) {
                return Err(std::io::Error::other("injected"));
            }
            Ok(())
        }
        fn sync_dir(&self, _: &File) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn scratch() -> Arc<File> {
        Arc::new(tempfile::tempfile().expect("temp file"))
    }

    #[test]
    fn a_sync_covers_the_sampled_end_of_the_log_and_no_more() {
        let (gc, fs, file) = (GroupCommit::default(), Counting::default(), scratch());
        gc.wait(10, &fs, || (Arc::clone(&file), 25)).expect("sync");
        assert_eq!((gc.synced_lsn(), gc.syncs(), fs.calls.load(Ordering::SeqCst)), (25, 1, 1));
        // Covered already: no second fdatasync.
        gc.wait(25, &fs, || unreachable!("covered")).expect("no sync needed");
        // A roll-over sync published from outside counts as durable but not as a group-commit sync.
        gc.publish(40);
        gc.wait(40, &fs, || unreachable!("covered")).expect("no sync needed");
        assert_eq!((gc.synced_lsn(), gc.syncs()), (40, 1));
    }

    #[test]
    fn a_failed_sync_poisons_and_every_later_wait_fails() {
        let (gc, fs, file) = (GroupCommit::default(), Counting::default(), scratch());
        fs.fail.store(true, Ordering::SeqCst);
        assert!(matches!(gc.wait(1, &fs, || (Arc::clone(&file), 1)), Err(Error::Io { .. })));
        assert!(gc.is_poisoned());
        fs.fail.store(false, Ordering::SeqCst);
        assert!(matches!(gc.wait(1, &fs, || (Arc::clone(&file), 1)), Err(Error::Poisoned)));
        assert_eq!((gc.synced_lsn(), gc.syncs(), fs.calls.load(Ordering::SeqCst)), (0, 0, 1));
    }

    #[test]
    fn concurrent_waiters_all_return_durable() {
        let (gc, fs, file) = (GroupCommit::default(), Counting::default(), scratch());
        let end = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..50 {
                        let lsn = end.fetch_add(1, Ordering::SeqCst) + 1;
                        gc.wait(lsn, &fs, || (Arc::clone(&file), end.load(Ordering::SeqCst)))
                            .expect("sync");
                        assert!(gc.synced_lsn() >= lsn);
                    }
                });
            }
        });
        assert_eq!(gc.synced_lsn(), 400);
        assert!(gc.syncs() <= 400);
    }
}

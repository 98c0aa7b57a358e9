//! The node's actor epoch: what keeps dots unique across restarts and disk loss.
//!
//! ACTOR EPOCH
//! ===========
//! A dot is (actor, counter) and the counter comes from the node's own stored history of the key.
//! If that history is lost, the node would issue counters again that other replicas have already
//! seen for different values, and those writes would be silently dropped (Riak's KV679). So the
//! actor is the node id plus an epoch:
//! - a new data directory gets a random epoch (`epoch` file);
//! - the epoch is kept across a *clean* shutdown (the node writes `clean-shutdown` after its
//!   final sync and removes it at start);
//! - after an unclean stop (kill -9, power loss) a new epoch is drawn, because with a sync policy
//!   other than `always` the tail of the log, and with it the latest counters, may be gone.
//!
//! The rule itself is the protocol's ([`cairn_replication::node::start_epoch`]), so the
//! simulator's restarted nodes follow it too; this module keeps its state in the data directory.
//!
//! The cost is one more entry in the version vectors of keys written after each crash.

use std::path::Path;

use rand::Rng;

use crate::node::NodeError;

/// File holding the current epoch (decimal).
pub const EPOCH_FILE: &str = "epoch";
/// Marker written after a clean shutdown's final sync.
pub const CLEAN_FILE: &str = "clean-shutdown";

/// Reads or draws the epoch for this start, and clears the clean-shutdown marker.
pub fn start_epoch(dir: &Path) -> Result<u32, NodeError> {
    let epoch_path = dir.join(EPOCH_FILE);
    let clean_path = dir.join(CLEAN_FILE);
    let was_clean = clean_path.exists();
    let existing = match std::fs::read_to_string(&epoch_path) {
        Ok(s) => s.trim().parse::<u32>().ok(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(NodeError::Internal(format!("reading {}: {e}", epoch_path.display())));
        }
    };
    let mut rng = rand::rng();
    let epoch = cairn_replication::node::start_epoch(
        existing,
        was_clean,
        || rng.random_range(1..u32::MAX),
        None,
    );
    write_durably(dir, EPOCH_FILE, epoch.to_string().as_bytes())?;
    if was_clean {
        std::fs::remove_file(&clean_path)
            .map_err(|e| NodeError::Internal(format!("removing {}: {e}", clean_path.display())))?;
        sync_dir(dir)?;
    }
    Ok(epoch)
}

/// Records a clean shutdown (call after the engine's final sync).
pub fn mark_clean(dir: &Path) -> Result<(), NodeError> {
    write_durably(dir, CLEAN_FILE, b"clean\n")
}

pub(crate) fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), NodeError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let err = |e: std::io::Error| {
        NodeError::Internal(format!("writing {}: {e}", dir.join(name).display()))
    };
    {
        let f = std::fs::File::create(&tmp).map_err(err)?;
        std::io::Write::write_all(&mut &f, bytes).map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    std::fs::rename(&tmp, dir.join(name)).map_err(err)?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), NodeError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| NodeError::Internal(format!("syncing {}: {e}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_survives_a_clean_restart_and_changes_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let first = start_epoch(dir.path()).unwrap();
        mark_clean(dir.path()).unwrap();
        let second = start_epoch(dir.path()).unwrap();
        assert_eq!(first, second, "a clean restart keeps the epoch");
        // No clean marker now: as after kill -9.
        let third = start_epoch(dir.path()).unwrap();
        assert_ne!(second, third, "an unclean restart draws a new epoch");
        // A lost data directory: new epoch, whatever it was.
        let other = tempfile::tempdir().unwrap();
        assert_ne!(start_epoch(other.path()).unwrap(), 0);
    }
}

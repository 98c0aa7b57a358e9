//! Compaction: rewriting the live records of sealed segments, and its crash-safe switch-over.
//!
//! COMPACTION
//! ==========
//!
//! A log-structured store never overwrites, so superseded records and tombstones accumulate. A
//! compaction (Bitcask's "merge", Sheehy & Smith 2010) takes *every* sealed segment as input, copies
//! each record that the keydir still points at into new segments (record bytes verbatim, timestamp
//! and CRC included), and drops the rest. Output `i` takes the file id of input `i` (there are never
//! more outputs than inputs: the last output absorbs the remainder), so file-id order remains log
//! order and the active segment, whose id is higher than every input, still holds the newest records.
//!
//! TOMBSTONES
//! ==========
//!
//! A tombstone is dropped only if (a) it is the key's latest record, (b) it is older than
//! `Options::tombstone_grace` by the injected clock, and (c) every older record of the key is dropped in
//! the same pass. (c) holds by construction: older records of the key sit in segments with a lower id
//! (or earlier in the same one), all of which are inputs because *all* sealed segments are, and they
//! are not live (the tombstone is), so none is copied. Dropping a tombstone whose shadowed value
//! survived in a segment outside the pass is how Bitcask resurrected deleted keys (basho/bitcask#82);
//! taking all sealed segments makes that impossible.
//!
//! SWITCH-OVER
//! ===========
//!
//! 1. Outputs `compact.tmp/i.seg` and `compact.tmp/i.hint` are written, fdatasynced, and the temp
//!    directory is fsynced. A crash here leaves only `compact.tmp/`, which the next open deletes.
//! 2. Commit point: the commit file `COMPACTION` (input ids, output ids, checksummed) is written to
//!    `COMPACTION.tmp`, synced, renamed, and the directory synced. From here the compaction happens.
//! 3. In memory: new segments are mapped under fresh handles, keydir entries still pointing at the
//!    copied records are moved (compare-and-set, in batches so writers are never blocked for long),
//!    dropped tombstones removed if still current, old handles released.
//! 4. Files: each output replaces the input file with its id by `rename` (atomic), inputs without an
//!    output are deleted, the directory is synced, then `COMPACTION` is deleted and `compact.tmp/`
//!    removed. A crash in step 4 is finished by the next open, which replays step 4 from the commit
//!    file (every action is idempotent). Readers of old locations keep working: their mappings pin the
//!    old inodes.
//!
//! Writers append to the active segment throughout; they only wait for the brief keydir batches.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::error::{CompactionStep, Error, IoContext, Result};
use crate::hint::{self, COMMIT_MAGIC, CommitRecord, HintEntry};
use crate::keydir::Loc;
use crate::mmap;
use crate::options::{CompactionOptions, FileSync};
use crate::record::{Keyspace, RecordKind, ScanItem, Scanner};
use crate::segments::{Seg, hint_path, segment_path, sync_dir};
use crate::state::Inner;

/// Name of the commit file in the data directory.
pub const COMMIT_FILE: &str = "COMPACTION";
/// Name of the directory outputs are written into before the commit.
pub const COMPACT_TMP_DIR: &str = "compact.tmp";
/// Keydir entries moved per write-lock acquisition during the switch: small enough that a writer waits
/// microseconds, not the length of the whole switch.
pub const SWITCH_BATCH: usize = 1024;
/// Input bytes between two progress callbacks.
pub const PROGRESS_EVERY: u64 = 1 << 20;
/// Longest single throttling sleep, so shutdown stays responsive.
pub const MAX_THROTTLE_SLEEP: Duration = Duration::from_millis(100);

/// Progress of a running compaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionProgress {
    /// Input bytes processed.
    pub bytes_done: u64,
    /// Input bytes in total.
    pub bytes_total: u64,
}

/// What a compaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactionReport {
    /// Sealed segments taken as input (and replaced).
    pub segments_rewritten: u64,
    /// Segments written.
    pub segments_written: u64,
    /// Bytes of the input segments.
    pub bytes_before: u64,
    /// Bytes of the output segments.
    pub bytes_after: u64,
    /// Valid records in the inputs.
    pub records_before: u64,
    /// Records copied to the outputs.
    pub records_after: u64,
    /// Records dropped because a newer record of the key exists.
    pub superseded_dropped: u64,
    /// Tombstones dropped (older than the grace period and the key's latest record).
    pub tombstones_dropped: u64,
    /// Corrupt regions skipped in the inputs (their bytes are not copied).
    pub corrupt_skipped: u64,
    /// Wall time.
    pub duration: Duration,
}

/// One copied record: where it was and where it is now.
struct Move {
    ks: Keyspace,
    key: Box<[u8]>,
    old: Loc,
    output: usize,
    off: u32,
}

/// Writes output segments into the temp directory.
struct Outputs<'a> {
    tmp: PathBuf,
    max_outputs: usize,
    segment_size: u64,
    sync: &'a dyn FileSync,
    current: Option<(BufWriter<File>, u64, Vec<HintEntry>)>,
    /// Lengths of finished outputs.
    lens: Vec<u64>,
}

impl Outputs<'_> {
    fn index(&self) -> usize {
        self.lens.len()
    }

    /// Appends a record; returns (output index, offset).
    fn append(&mut self, rec: &[u8], entry: HintEntry) -> Result<(usize, u32)> {
        let len = rec.len() as u64;
        if let Some((_, cur_len, _)) = &self.current
            && *cur_len > 0
            && cur_len + len > self.segment_size
            && self.index() + 1 < self.max_outputs
        {
            self.finish_current()?;
        }
        if self.current.is_none() {
            let path = self.tmp.join(format!("{}.seg", self.index()));
            let f = File::create_new(&path).ctx(|| format!("creating {}", path.display()))?;
            self.current = Some((BufWriter::with_capacity(1 << 20, f), 0, Vec::new()));
        }
        let idx = self.index();
        let tmp = self.tmp.clone();
        let (w, cur_len, hints) =
            self.current.as_mut().ok_or_else(|| Error::corrupt("compaction", "no output"))?;
        let off = u32::try_from(*cur_len)
            .ok()
            .filter(|o| u64::from(*o) + len <= u64::from(u32::MAX))
            .ok_or_else(|| Error::corrupt("compaction", "output segment would exceed 4 GiB"))?;
        w.write_all(rec).ctx(|| format!("writing {}/{idx}.seg", tmp.display()))?;
        hints.push(HintEntry { offset: u64::from(off), ..entry });
        *cur_len += len;
        Ok((idx, off))
    }

    fn finish_current(&mut self) -> Result<()> {
        let Some((w, len, hints)) = self.current.take() else { return Ok(()) };
        let idx = self.index();
        let f = w
            .into_inner()
            .map_err(|e| Error::io("flushing a compaction output", e.into_error()))?;
        self.sync.sync_data(&f).ctx(|| format!("syncing compaction output {idx}"))?;
        let h = hint::encode_hint(len, &hints)
            .ok_or_else(|| Error::corrupt("compaction", "hint file too large"))?;
        hint::write_atomic(&self.tmp.join(format!("{idx}.hint")), &h, Some(self.sync))
            .ctx(|| format!("writing hint of compaction output {idx}"))?;
        self.lens.push(len);
        Ok(())
    }
}

/// Removes a directory when dropped, unless disarmed.
struct TmpDirGuard {
    path: Option<PathBuf>,
}

impl TmpDirGuard {
    fn disarm(&mut self) {
        self.path = None;
    }
}

impl Drop for TmpDirGuard {
    fn drop(&mut self) {
        if let Some(p) = self.path.take()
            && let Err(e) = fs::remove_dir_all(&p)
        {
            tracing::warn!(error = %e, dir = %p.display(), "could not remove partial compaction outputs");
        }
    }
}

impl Inner {
    /// Test hook: behaves like a process crash at `step` if `Options::crash_at` says so.
    fn crash_point(&self, step: CompactionStep) -> Result<()> {
        if self.opts.crash_at == Some(step) {
            self.poison();
            return Err(Error::InjectedCrash(step));
        }
        Ok(())
    }

    fn shutting_down(&self) -> bool {
        *self.shutdown.lock()
    }
}

/// Runs one compaction. `roll`: seal the active segment first so that it is included (explicit
/// compactions); `max_bytes_per_sec`: 0 = unthrottled.
pub(crate) fn compact(
    inner: &Inner,
    roll: bool,
    max_bytes_per_sec: u64,
    progress: &mut dyn FnMut(&CompactionProgress),
) -> Result<CompactionReport> {
    let _one_at_a_time = inner.compaction.lock();
    if inner.is_poisoned() {
        return Err(Error::Poisoned);
    }
    let started = Instant::now();
    if roll {
        let mut w = inner.writer.lock();
        if w.len > 0 {
            inner.roll(&mut w)?;
        }
    }
    // Inputs: every sealed segment, in id order.
    let mut inputs: Vec<(u32, u64, bytes::Bytes, u64)> = inner
        .segments
        .read()
        .iter()
        .filter(|(_, s)| s.sealed)
        .map(|(h, s)| (h, s.id, s.bytes.clone(), s.len))
        .collect();
    inputs.sort_by_key(|i| i.1);
    let mut report = CompactionReport {
        segments_rewritten: inputs.len() as u64,
        bytes_before: inputs.iter().map(|i| i.3).sum(),
        ..CompactionReport::default()
    };
    if inputs.is_empty() {
        report.duration = started.elapsed();
        return Ok(report);
    }
    let dir = inner.dir.clone();
    let sync = &*inner.opts.file_sync;
    let tmp = dir.join(COMPACT_TMP_DIR);
    if tmp.exists() {
        fs::remove_dir_all(&tmp).ctx(|| format!("removing {}", tmp.display()))?;
    }
    fs::create_dir(&tmp).ctx(|| format!("creating {}", tmp.display()))?;
    // Until the commit point, any early return (an I/O error, shutdown) removes the partial outputs.
    let mut cleanup = TmpDirGuard { path: Some(tmp.clone()) };

    let now = inner.opts.clock.now_ms();
    let grace_ms = u64::try_from(inner.opts.tombstone_grace.as_millis()).unwrap_or(u64::MAX);
    let mut out = Outputs {
        tmp: tmp.clone(),
        max_outputs: inputs.len(),
        segment_size: inner.opts.segment_size,
        sync,
        current: None,
        lens: Vec::new(),
    };
    let mut moves: Vec<Move> = Vec::new();
    let mut drops: Vec<(Keyspace, Box<[u8]>, Loc)> = Vec::new();
    let mut last_progress = 0u64;
    let mut copied = 0u64;
    progress(&CompactionProgress { bytes_done: 0, bytes_total: report.bytes_before });
    for (handle, id, bytes, len) in &inputs {
        let seg_bytes = &bytes[..*len as usize];
        for item in Scanner::new(seg_bytes) {
            let (offset, rec) = match item {
                ScanItem::Record { offset, record } => (offset, record),
                ScanItem::Corrupt { offset, len, reason } => {
                    tracing::warn!(segment = id, offset, len, %reason, "compaction skips corrupt region");
                    report.corrupt_skipped += 1;
                    continue;
                }
            };
            report.records_before += 1;
            let off32 = u32::try_from(offset).unwrap_or(u32::MAX);
            let current = inner.keydirs[rec.keyspace.index()].read().map.get(rec.key).copied();
            let live = current.filter(|l| l.handle == *handle && l.off == off32);
            let Some(old) = live else {
                report.superseded_dropped += 1;
                continue;
            };
            if rec.kind == RecordKind::Tombstone && now.saturating_sub(rec.timestamp_ms) >= grace_ms
            {
                report.tombstones_dropped += 1;
                drops.push((rec.keyspace, Box::from(rec.key), old));
                continue;
            }
            let start = offset as usize;
            let raw = &seg_bytes[start..start + rec.total_len];
            let entry = HintEntry {
                keyspace: rec.keyspace.tag(),
                kind: rec.kind.tag(),
                offset: 0,
                len: old.len(),
                key: rec.key.to_vec(),
            };
            let (output, off) = out.append(raw, entry)?;
            moves.push(Move { ks: rec.keyspace, key: Box::from(rec.key), old, output, off });
            report.records_after += 1;
            copied += raw.len() as u64;
            if max_bytes_per_sec > 0 {
                let due = Duration::from_secs_f64(copied as f64 / max_bytes_per_sec as f64);
                let elapsed = started.elapsed();
                if due > elapsed {
                    std::thread::sleep((due - elapsed).min(MAX_THROTTLE_SLEEP));
                }
                if inner.shutting_down() {
                    drop(out);
                    return Err(Error::ShuttingDown);
                }
            }
        }
        let before: u64 = inputs.iter().take_while(|i| i.1 <= *id).map(|i| i.3).sum();
        if before - last_progress >= PROGRESS_EVERY || before == report.bytes_before {
            last_progress = before;
            progress(&CompactionProgress { bytes_done: before, bytes_total: report.bytes_before });
        }
    }
    out.finish_current()?;
    let lens = std::mem::take(&mut out.lens);
    drop(out);
    sync_dir(sync, &tmp)?;
    report.segments_written = lens.len() as u64;
    report.bytes_after = lens.iter().sum();
    if let Err(e) = inner.crash_point(CompactionStep::OutputsWritten) {
        cleanup.disarm(); // a crash leaves the files as they are
        return Err(e);
    }

    // Commit point.
    let commit = CommitRecord {
        inputs: inputs.iter().map(|i| i.1).collect(),
        outputs: inputs.iter().take(lens.len()).map(|i| i.1).collect(),
    };
    let body = rmp_serde::to_vec(&commit).map_err(|e| Error::corrupt("commit", e.to_string()))?;
    let framed = hint::encode_container(COMMIT_MAGIC, 0, &body)
        .ok_or_else(|| Error::corrupt("commit", "too large"))?;
    hint::write_atomic(&dir.join(COMMIT_FILE), &framed, Some(sync))
        .ctx(|| "writing the compaction commit file")?;
    // The commit file is in place: from here the outputs belong to it, and a failure must poison the
    // engine so that the next open (which replays the commit) happens before anything else.
    cleanup.disarm();
    if let Err(e) = sync_dir(sync, &dir) {
        inner.poison();
        return Err(e);
    }
    inner.crash_point(CompactionStep::Committed)?;

    // Past the commit point the compaction must complete: if switching fails, the engine is poisoned
    // so that nothing else runs (in particular no second compaction overwriting the commit file) until
    // the next open replays the commit.
    if let Err(e) = switch_over(inner, &inputs, &lens, &moves, &drops, &commit, &report) {
        if !matches!(e, Error::InjectedCrash(_)) {
            inner.poison();
            tracing::error!(error = %e, "compaction switch-over failed after its commit; engine poisoned, reopen to finish it");
        }
        return Err(e);
    }
    inner.counters.compactions.fetch_add(1, Ordering::Relaxed);
    report.duration = started.elapsed();
    tracing::info!(
        inputs = report.segments_rewritten,
        outputs = report.segments_written,
        bytes_before = report.bytes_before,
        bytes_after = report.bytes_after,
        "compaction finished"
    );
    Ok(report)
}

/// Steps 3 and 4 of the switch-over (see the module doc).
#[allow(clippy::too_many_arguments)]
fn switch_over(
    inner: &Inner,
    inputs: &[(u32, u64, bytes::Bytes, u64)],
    lens: &[u64],
    moves: &[Move],
    drops: &[(Keyspace, Box<[u8]>, Loc)],
    commit: &CommitRecord,
    report: &CompactionReport,
) -> Result<()> {
    let dir = &inner.dir;
    let tmp = dir.join(COMPACT_TMP_DIR);
    let sync = &*inner.opts.file_sync;
    // In-memory switch.
    let mut handles = Vec::with_capacity(lens.len());
    for (i, len) in lens.iter().enumerate() {
        let path = tmp.join(format!("{i}.seg"));
        let f = File::open(&path).ctx(|| format!("opening {}", path.display()))?;
        let bytes = mmap::map(&f, *len).ctx(|| format!("mapping {}", path.display()))?;
        let id = commit.outputs[i];
        handles.push(inner.segments.write().add(Seg::new(id, bytes, *len, true)));
    }
    for ks in Keyspace::ALL {
        let mine: Vec<&Move> = moves.iter().filter(|m| m.ks == ks).collect();
        for batch in mine.chunks(SWITCH_BATCH) {
            let mut kd = inner.keydirs[ks.index()].write();
            for m in batch {
                if let Some(loc) = kd.map.get_mut(&m.key)
                    && *loc == m.old
                {
                    *loc = Loc::new(handles[m.output], m.off, m.old.len(), m.old.is_tombstone());
                    if let Some(seg) = inner.segments.read().get(handles[m.output]) {
                        seg.live.fetch_add(u64::from(m.old.len()), Ordering::Relaxed);
                    }
                }
            }
        }
        let mine: Vec<_> = drops.iter().filter(|d| d.0 == ks).collect();
        for batch in mine.chunks(SWITCH_BATCH) {
            let mut kd = inner.keydirs[ks.index()].write();
            for (_, key, old) in batch {
                if kd.remove_if(key, *old) {
                    inner.counters.live_bytes.fetch_sub(u64::from(old.len()), Ordering::Relaxed);
                }
            }
        }
    }
    {
        let mut segs = inner.segments.write();
        for (h, ..) in inputs {
            segs.remove(*h);
        }
    }
    inner.counters.total_bytes.fetch_sub(report.bytes_before, Ordering::Relaxed);
    inner.counters.total_bytes.fetch_add(report.bytes_after, Ordering::Relaxed);

    // File switch-over.
    apply_commit(dir, commit, sync, &mut |step| inner.crash_point(step))
}

/// Step 4 of the switch-over (see the module doc); idempotent, so the next open can replay it.
fn apply_commit(
    dir: &Path,
    commit: &CommitRecord,
    sync: &dyn FileSync,
    crash: &mut dyn FnMut(CompactionStep) -> Result<()>,
) -> Result<()> {
    let tmp = dir.join(COMPACT_TMP_DIR);
    for (i, &id) in commit.outputs.iter().enumerate() {
        let src = tmp.join(format!("{i}.seg"));
        if src.exists() {
            // The input's hint must not outlive its segment: remove it before the new segment lands.
            remove_if_exists(&hint_path(dir, id))?;
            let dst = segment_path(dir, id);
            fs::rename(&src, &dst)
                .ctx(|| format!("renaming {} to {}", src.display(), dst.display()))?;
        }
        let hsrc = tmp.join(format!("{i}.hint"));
        if hsrc.exists() {
            let dst = hint_path(dir, id);
            fs::rename(&hsrc, &dst).ctx(|| format!("renaming {}", hsrc.display()))?;
        }
        if i == 0 {
            crash(CompactionStep::FirstRenamed)?;
        }
    }
    for id in commit.inputs.iter().filter(|id| !commit.outputs.contains(id)) {
        remove_if_exists(&segment_path(dir, *id))?;
        remove_if_exists(&hint_path(dir, *id))?;
    }
    sync_dir(sync, dir)?;
    crash(CompactionStep::Switched)?;
    remove_if_exists(&dir.join(COMMIT_FILE))?;
    sync_dir(sync, dir)?;
    if tmp.exists() {
        fs::remove_dir_all(&tmp).ctx(|| format!("removing {}", tmp.display()))?;
    }
    Ok(())
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
    }
}

/// At open: finishes a committed compaction, or discards an uncommitted one.
pub(crate) fn recover_pending(dir: &Path, sync: &dyn FileSync) -> Result<()> {
    let commit_path = dir.join(COMMIT_FILE);
    if commit_path.exists() {
        let bytes = fs::read(&commit_path).ctx(|| format!("reading {}", commit_path.display()))?;
        let (_, body) = hint::decode_container(&bytes, COMMIT_MAGIC)
            .map_err(|why| Error::corrupt(commit_path.display().to_string(), why))?;
        let commit: CommitRecord = rmp_serde::from_slice(body)
            .map_err(|e| Error::corrupt(commit_path.display().to_string(), e.to_string()))?;
        if commit.outputs.len() > commit.inputs.len() {
            return Err(Error::corrupt(
                commit_path.display().to_string(),
                "more outputs than inputs",
            ));
        }
        tracing::info!(inputs = ?commit.inputs, "finishing a compaction interrupted after its commit");
        apply_commit(dir, &commit, sync, &mut |_| Ok(()))?;
    }
    let tmp = dir.join(COMPACT_TMP_DIR);
    if tmp.exists() {
        tracing::info!("removing the outputs of a compaction that never committed");
        fs::remove_dir_all(&tmp).ctx(|| format!("removing {}", tmp.display()))?;
    }
    Ok(())
}

/// Body of the background compaction thread: wake every interval (plus jitter), compact if enough of
/// the log is dead, throttled.
pub(crate) fn background_loop(inner: &Arc<Inner>, c: &CompactionOptions) {
    let mut rng = seed();
    loop {
        let jitter_ms = u64::try_from(c.jitter.as_millis()).unwrap_or(u64::MAX);
        let extra = if jitter_ms == 0 { 0 } else { xorshift(&mut rng) % jitter_ms };
        if inner.wait_shutdown(c.interval + Duration::from_millis(extra)) {
            return;
        }
        if inner.is_poisoned() {
            continue;
        }
        // Only sealed segments can be compacted (the background thread does not seal the active one),
        // so only their dead bytes count.
        let total: u64 =
            inner.segments.read().iter().filter(|(_, s)| s.sealed).map(|(_, s)| s.len).sum();
        let dead = inner.reclaimable_bytes();
        if total == 0 || dead < c.min_dead_bytes || (dead as f64 / total as f64) < c.min_dead_ratio
        {
            continue;
        }
        match compact(inner, false, c.max_bytes_per_sec, &mut |_| {}) {
            Ok(r) => tracing::info!(
                reclaimed = r.bytes_before.saturating_sub(r.bytes_after),
                "background compaction done"
            ),
            Err(Error::ShuttingDown) => return,
            Err(e) => tracing::warn!(error = %e, "background compaction failed"),
        }
    }
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    (t ^ (u64::from(std::process::id()) << 32)) | 1
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

//! The member table: per-member status driven by heartbeats, failed requests and the clock.
//!
//! MEMBER STATES
//! =============
//!
//! ```text
//!            heartbeat                      phi >= suspect_phi,
//!   (new) ─────────────▶ Up ──────────────▶ Suspect  (request failed, connection lost)
//!                         ▲ ◀─────────────── │
//!                         │    heartbeat      │ phi >= phi_threshold
//!                         │                   ▼
//!                         └──── heartbeat ── Down
//! ```
//!
//! - **Up**: heartbeats arrive on time.
//! - **Suspect**: something is wrong but not proven: phi crossed the suspect level
//!   (half the threshold by default), a request to the member failed or timed out, or the last
//!   connection to it closed. Callers should prefer other replicas but may still try it.
//! - **Down**: phi crossed the threshold. Only a new heartbeat brings the member back, and then
//!   the detector history is reset (the outage is not a sample of its heartbeat rhythm).
//!
//! Every transition is reported once as a [`MemberEvent`]; the table never emits an event for a
//! state the member is already in.
//!
//! Heartbeats carry `(incarnation, seq)`. A restarted process picks a new, larger incarnation,
//! so its sequence numbers may start again from zero; within one incarnation a heartbeat whose
//! `seq` is not newer than the last one seen is a duplicate (gossip may deliver a message by
//! two paths) and is ignored.
//!
//! The table is sync and takes `now` from the caller; the swarm task owns the only instance.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::phi::{PhiAccrual, PhiConfig};

/// Status of a member as seen by the local node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberStatus {
    /// Heartbeats arrive on time.
    Up,
    /// Possibly failed: phi above the suspect level, or a request/connection failed.
    Suspect,
    /// Declared failed: phi above the threshold.
    Down,
}

/// A status transition of one member, broadcast to the replication layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberEvent {
    /// The member was first seen, or came back from Suspect or Down (start hinted handoff).
    Up(String),
    /// The member became suspect.
    Suspect(String),
    /// The member was declared down.
    Down(String),
}

impl MemberEvent {
    /// The node id the event is about.
    pub fn node(&self) -> &str {
        match self {
            MemberEvent::Up(n) | MemberEvent::Suspect(n) | MemberEvent::Down(n) => n,
        }
    }

    /// The status the member entered.
    pub fn status(&self) -> MemberStatus {
        match self {
            MemberEvent::Up(_) => MemberStatus::Up,
            MemberEvent::Suspect(_) => MemberStatus::Suspect,
            MemberEvent::Down(_) => MemberStatus::Down,
        }
    }
}

/// What a member announces about itself in every heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// libp2p peer id (base58).
    pub peer_id: String,
    /// Multiaddrs the member listens on.
    pub addresses: Vec<String>,
    /// HTTP address of the member's API.
    pub http_addr: String,
    /// Software version of the member.
    pub version: String,
    /// TCP port of the member's data plane ([`crate::wire`]); 0 if it announced none.
    #[serde(default)]
    pub data_port: u16,
}

/// One member as shown in the [`MemberView`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Operator-chosen node id (e.g. `n1`).
    pub node_id: String,
    /// What the member last announced (peer id, addresses, HTTP address, version).
    #[serde(flatten)]
    pub announced: Announcement,
    /// Current status.
    pub status: MemberStatus,
    /// Current phi of the member's detector (0 for the local node).
    pub phi: f64,
    /// Time since the last heartbeat arrived (`None` for the local node).
    pub last_heartbeat_age: Option<Duration>,
    /// Number of heartbeats received from the member.
    pub heartbeats: u64,
}

/// Snapshot of every known member, published on a watch channel.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemberView {
    /// The local node id.
    pub local: String,
    /// Every member including the local node, by node id.
    pub members: BTreeMap<String, MemberInfo>,
}

impl MemberView {
    /// Status of `node`, if known.
    pub fn status(&self, node: &str) -> Option<MemberStatus> {
        self.members.get(node).map(|m| m.status)
    }

    /// Node ids currently `Up` (the local node included).
    pub fn up(&self) -> impl Iterator<Item = &str> {
        self.members.values().filter(|m| m.status == MemberStatus::Up).map(|m| m.node_id.as_str())
    }
}

/// Thresholds of the member table.
#[derive(Debug, Clone, PartialEq)]
pub struct TableConfig {
    /// Detector tuning per member.
    pub phi: PhiConfig,
    /// Phi at or above which a member is declared Down.
    pub phi_threshold: f64,
    /// Phi at or above which an Up member becomes Suspect.
    pub suspect_phi: f64,
}

impl TableConfig {
    /// Defaults: suspect at half the down threshold.
    pub fn new(heartbeat_interval: Duration, phi_threshold: f64) -> Self {
        TableConfig {
            phi: PhiConfig::new(heartbeat_interval),
            phi_threshold,
            suspect_phi: phi_threshold / 2.0,
        }
    }
}

#[derive(Debug, Clone)]
struct Member {
    announced: Announcement,
    status: MemberStatus,
    detector: PhiAccrual,
    incarnation: u64,
    seq: u64,
    heartbeats: u64,
    /// The last detector update came from an out-of-rhythm heartbeat: the next regular one
    /// rebases the detector instead of adding an arbitrary interval as a sample.
    rebase_next: bool,
}

/// A heartbeat as the table needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// Sender node id.
    pub node_id: String,
    /// Sender process incarnation (larger after every restart).
    pub incarnation: u64,
    /// Sequence number within the incarnation.
    pub seq: u64,
    /// Sender's self-description.
    pub announced: Announcement,
    /// An out-of-rhythm heartbeat (sent when a peer subscribes, to be seen at once). It proves
    /// liveness and can bring a member Up, but is not an inter-arrival sample for a member
    /// already Up: it would distort the detector's estimate of the regular rhythm.
    pub extra: bool,
}

/// Status of every remote member, plus the local node's own announcement.
///
/// Invariants:
/// - the local node is never in `members` (it is added to views as always Up);
/// - an event is emitted exactly when a member's status changes.
#[derive(Debug, Clone)]
pub struct MemberTable {
    config: TableConfig,
    local: String,
    local_announced: Announcement,
    members: BTreeMap<String, Member>,
}

impl MemberTable {
    /// An empty table for the local node `local`.
    pub fn new(
        local: impl Into<String>,
        local_announced: Announcement,
        config: TableConfig,
    ) -> Self {
        MemberTable { config, local: local.into(), local_announced, members: BTreeMap::new() }
    }

    /// Replaces the local node's announcement (e.g. when a listen address is added).
    pub fn set_local_announcement(&mut self, announced: Announcement) {
        self.local_announced = announced;
    }

    /// The local node's announcement.
    pub fn local_announcement(&self) -> &Announcement {
        &self.local_announced
    }

    /// Records a heartbeat received at `now`. Returns the transition it caused, if any.
    pub fn heartbeat(&mut self, hb: Heartbeat, now: Instant) -> Option<MemberEvent> {
        if hb.node_id == self.local {
            return None;
        }
        let Some(m) = self.members.get_mut(&hb.node_id) else {
            let mut detector = PhiAccrual::new(self.config.phi.clone());
            detector.heartbeat(now);
            let node = hb.node_id.clone();
            self.members.insert(
                hb.node_id,
                Member {
                    announced: hb.announced,
                    status: MemberStatus::Up,
                    detector,
                    incarnation: hb.incarnation,
                    seq: hb.seq,
                    heartbeats: 1,
                    rebase_next: hb.extra,
                },
            );
            return Some(MemberEvent::Up(node));
        };
        let newer =
            hb.incarnation > m.incarnation || (hb.incarnation == m.incarnation && hb.seq > m.seq);
        if !newer {
            return None;
        }
        if hb.incarnation != m.incarnation || m.status == MemberStatus::Down {
            // A restarted process or a return from Down: the gap is not a rhythm sample.
            m.detector.reset();
        }
        m.incarnation = hb.incarnation;
        m.seq = hb.seq;
        m.announced = hb.announced;
        m.heartbeats += 1;
        if hb.extra && m.status == MemberStatus::Up && m.detector.last_heartbeat().is_some() {
            return None;
        }
        if hb.extra {
            m.detector.rebase(now);
            m.rebase_next = true;
        } else if std::mem::take(&mut m.rebase_next) {
            m.detector.rebase(now);
        } else {
            m.detector.heartbeat(now);
        }
        if m.status != MemberStatus::Up {
            m.status = MemberStatus::Up;
            return Some(MemberEvent::Up(hb.node_id));
        }
        None
    }

    /// A request to `node` failed or its last connection closed: an Up member becomes Suspect
    /// at once. Unknown, Suspect and Down members are unchanged.
    pub fn request_failed(&mut self, node: &str, _now: Instant) -> Option<MemberEvent> {
        let m = self.members.get_mut(node)?;
        if m.status == MemberStatus::Up {
            m.status = MemberStatus::Suspect;
            return Some(MemberEvent::Suspect(node.to_owned()));
        }
        None
    }

    /// Re-evaluates every member's phi at `now`; returns the transitions, in node-id order.
    pub fn tick(&mut self, now: Instant) -> Vec<MemberEvent> {
        let mut events = Vec::new();
        for (node, m) in &mut self.members {
            if m.status == MemberStatus::Down {
                continue;
            }
            let phi = m.detector.phi(now);
            if phi >= self.config.phi_threshold {
                m.status = MemberStatus::Down;
                events.push(MemberEvent::Down(node.clone()));
            } else if phi >= self.config.suspect_phi && m.status == MemberStatus::Up {
                m.status = MemberStatus::Suspect;
                events.push(MemberEvent::Suspect(node.clone()));
            }
        }
        events
    }

    /// Status of `node` (the local node is always Up).
    pub fn status(&self, node: &str) -> Option<MemberStatus> {
        if node == self.local {
            return Some(MemberStatus::Up);
        }
        self.members.get(node).map(|m| m.status)
    }

    /// The node id that announced `peer_id`, if any. If several did (a data directory reused
    /// under a new node id), a member that is not Down wins.
    pub fn node_of_peer(&self, peer_id: &str) -> Option<&str> {
        let mut found = None;
        for (node, m) in self.members.iter().filter(|(_, m)| m.announced.peer_id == peer_id) {
            if m.status != MemberStatus::Down {
                return Some(node.as_str());
            }
            found = found.or(Some(node.as_str()));
        }
        found
    }

    /// What `node` last announced.
    pub fn announcement(&self, node: &str) -> Option<&Announcement> {
        if node == self.local {
            return Some(&self.local_announced);
        }
        self.members.get(node).map(|m| &m.announced)
    }

    /// Node ids of remote members in the given status.
    pub fn with_status(&self, status: MemberStatus) -> impl Iterator<Item = &str> {
        self.members.iter().filter(move |(_, m)| m.status == status).map(|(n, _)| n.as_str())
    }

    /// A snapshot for the watch channel, with phi and ages evaluated at `now`.
    pub fn view(&self, now: Instant) -> MemberView {
        let mut members = BTreeMap::new();
        members.insert(
            self.local.clone(),
            MemberInfo {
                node_id: self.local.clone(),
                announced: self.local_announced.clone(),
                status: MemberStatus::Up,
                phi: 0.0,
                last_heartbeat_age: None,
                heartbeats: 0,
            },
        );
        for (node, m) in &self.members {
            members.insert(
                node.clone(),
                MemberInfo {
                    node_id: node.clone(),
                    announced: m.announced.clone(),
                    status: m.status,
                    phi: m.detector.phi(now),
                    last_heartbeat_age: m
                        .detector
                        .last_heartbeat()
                        .map(|t| now.saturating_duration_since(t)),
                    heartbeats: m.heartbeats,
                },
            );
        }
        MemberView { local: self.local.clone(), members }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);
    const MS: Duration = Duration::from_millis(1);

    fn table() -> MemberTable {
        MemberTable::new("n1", Announcement::default(), TableConfig::new(SECOND, 8.0))
    }

    fn hb(node: &str, incarnation: u64, seq: u64) -> Heartbeat {
        Heartbeat {
            node_id: node.into(),
            incarnation,
            seq,
            announced: Announcement { peer_id: format!("peer-{node}"), ..Default::default() },
            extra: false,
        }
    }

    /// Drives the table with a fake clock: `n2` beats every second from `start` for `beats`
    /// beats, ticking every 100 ms; returns the events and the time of the last beat.
    fn run(
        t: &mut MemberTable,
        start: Instant,
        inc: u64,
        beats: u64,
    ) -> (Vec<MemberEvent>, Instant) {
        let mut events = Vec::new();
        let mut now = start;
        for seq in 0..beats {
            events.extend(t.heartbeat(hb("n2", inc, seq), now));
            for _ in 0..10 {
                now += 100 * MS;
                events.extend(t.tick(now));
            }
        }
        (events, now - SECOND)
    }

    #[test]
    fn first_heartbeat_is_up_once() {
        let mut t = table();
        let (events, _) = run(&mut t, Instant::now(), 1, 30);
        assert_eq!(events, vec![MemberEvent::Up("n2".into())]);
        assert_eq!(t.status("n2"), Some(MemberStatus::Up));
        assert_eq!(t.node_of_peer("peer-n2"), Some("n2"));
    }

    #[test]
    fn silence_goes_suspect_then_down_then_up_on_return() {
        let mut t = table();
        let (_, last) = run(&mut t, Instant::now(), 1, 30);
        let mut events = Vec::new();
        let mut down_at = None;
        let mut now = last;
        for _ in 0..100 {
            now += 100 * MS;
            for e in t.tick(now) {
                if matches!(e, MemberEvent::Down(_)) {
                    down_at = Some(now - last);
                }
                events.push(e);
            }
        }
        assert_eq!(events, vec![MemberEvent::Suspect("n2".into()), MemberEvent::Down("n2".into())]);
        let down_at = down_at.unwrap_or_default();
        assert!(down_at >= 2900 * MS && down_at <= 3200 * MS, "down after {down_at:?}");
        // Stays down without repeating events.
        assert!(t.tick(now + 60 * SECOND).is_empty());
        // Returns (same incarnation, later seq): Up at once, history reset so phi is low.
        let back = now + 60 * SECOND;
        assert_eq!(t.heartbeat(hb("n2", 1, 100), back), Some(MemberEvent::Up("n2".into())));
        assert!(t.view(back + SECOND).members["n2"].phi < 1.0);
        assert!(t.tick(back + SECOND).is_empty());
    }

    #[test]
    fn restarted_process_with_new_incarnation_is_accepted() {
        let mut t = table();
        let (_, last) = run(&mut t, Instant::now(), 5, 10);
        // Old incarnation with a high seq, then a new incarnation starting at seq 0.
        assert!(t.heartbeat(hb("n2", 4, 1000), last + SECOND).is_none());
        assert_eq!(t.view(last + SECOND).members["n2"].heartbeats, 10, "stale beat counted");
        let mut now = last + 10 * SECOND;
        t.tick(now);
        assert_eq!(t.status("n2"), Some(MemberStatus::Down));
        now += SECOND;
        assert_eq!(t.heartbeat(hb("n2", 6, 0), now), Some(MemberEvent::Up("n2".into())));
    }

    #[test]
    fn peer_reused_under_new_node_id_maps_to_the_live_one() {
        let mut t = table();
        let now = Instant::now();
        let mut old = hb("a-old", 1, 0);
        old.announced.peer_id = "peer-x".into();
        t.heartbeat(old, now);
        t.tick(now + 60 * SECOND);
        let mut new = hb("z-new", 2, 0);
        new.announced.peer_id = "peer-x".into();
        t.heartbeat(new, now + 60 * SECOND);
        assert_eq!(t.node_of_peer("peer-x"), Some("z-new"));
    }

    #[test]
    fn duplicate_heartbeats_are_ignored() {
        let mut t = table();
        let now = Instant::now();
        assert!(t.heartbeat(hb("n2", 1, 5), now).is_some());
        assert!(t.heartbeat(hb("n2", 1, 5), now + 10 * MS).is_none());
        assert!(t.heartbeat(hb("n2", 1, 4), now + 20 * MS).is_none());
        assert_eq!(t.view(now).members["n2"].heartbeats, 1);
    }

    #[test]
    fn failed_request_suspects_at_once_and_heartbeat_clears() {
        let mut t = table();
        let now = Instant::now();
        t.heartbeat(hb("n2", 1, 0), now);
        assert_eq!(t.request_failed("n2", now), Some(MemberEvent::Suspect("n2".into())));
        assert_eq!(t.request_failed("n2", now), None, "no repeated event");
        assert_eq!(t.request_failed("n9", now), None, "unknown node ignored");
        assert_eq!(t.status("n2"), Some(MemberStatus::Suspect));
        assert_eq!(t.heartbeat(hb("n2", 1, 1), now + SECOND), Some(MemberEvent::Up("n2".into())));
    }

    #[test]
    fn extra_heartbeats_do_not_distort_the_rhythm() {
        let mut t = table();
        let (_, last) = run(&mut t, Instant::now(), 1, 30);
        let before = t.view(last + SECOND).members["n2"].phi;
        // An out-of-rhythm beat 10 ms after a regular one changes nothing for an Up member...
        let extra = Heartbeat { extra: true, ..hb("n2", 1, 1000) };
        assert!(t.heartbeat(extra.clone(), last + 10 * MS).is_none());
        assert_eq!(t.view(last + SECOND).members["n2"].phi, before);
        // A member first seen through an extra beat: the offset to its next regular beat is
        // not taken as a rhythm sample.
        let now = last + 10 * SECOND;
        assert!(t.heartbeat(Heartbeat { extra: true, ..hb("n3", 1, 0) }, now).is_some());
        t.heartbeat(hb("n3", 1, 1), now + 30 * MS);
        t.heartbeat(hb("n3", 1, 2), now + 1030 * MS);
        // Detection time is that of a steady rhythm (~3.04 s), not slowed by a bogus 30 ms
        // sample (which would push it past 4 s).
        let phi_n3 = t.view(now + (1030 + 3300) * MS).members["n3"].phi;
        assert!(phi_n3 >= 8.0, "regular rhythm distorted: phi {phi_n3}");
        // ...but brings a suspect member back at once.
        t.request_failed("n2", last + 20 * MS);
        let extra = Heartbeat { seq: 1001, ..extra };
        assert_eq!(t.heartbeat(extra, last + 30 * MS), Some(MemberEvent::Up("n2".into())));
    }

    #[test]
    fn own_heartbeat_is_ignored_and_local_is_up_in_view() {
        let mut t = table();
        let now = Instant::now();
        assert!(t.heartbeat(hb("n1", 1, 0), now).is_none());
        let v = t.view(now);
        assert_eq!(v.members.len(), 1);
        assert_eq!(v.status("n1"), Some(MemberStatus::Up));
    }

    #[test]
    fn each_member_has_its_own_detector() {
        let mut t = table();
        let mut now = Instant::now();
        let mut events = Vec::new();
        for seq in 0..20 {
            events.extend(t.heartbeat(hb("n2", 1, seq), now));
            if seq < 10 {
                events.extend(t.heartbeat(hb("n3", 1, seq), now));
            }
            now += SECOND;
            events.extend(t.tick(now));
        }
        assert_eq!(t.status("n2"), Some(MemberStatus::Up));
        assert_eq!(t.status("n3"), Some(MemberStatus::Down));
        assert!(!events.contains(&MemberEvent::Suspect("n2".into())));
    }
}

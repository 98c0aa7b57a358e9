//! The node as the API's [`Backend`]: turns validated HTTP requests into coordinated operations
//! and node errors into API errors.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cairn_api::{
    ApiError, Backend, BodyStream, BucketInfo as ApiBucket, BucketName, BucketReport,
    ConflictPolicy as ApiPolicy, DeleteObject, FileEntry, FileList, GetObject, Health, ListFiles,
    MemberChange, ObjectName, OpenContent, PutObject, PutStream, ReadResult, WriteResult,
};
use cairn_membership::Transport;
use cairn_replication::layout::Change;
use cairn_replication::quorum::ReadReport;
use cairn_replication::{Body, Context, Meta, NodeId};
use serde_json::{Map, Value, json};

use cairn_replication::node::BucketOutcome;

use crate::node::buckets::{BucketInfo, ConflictPolicy};
use crate::node::chunks::{Download, Upload};
use crate::node::keys::ObjectKey;
use crate::node::messages::{WriteOp, WriteOutcome, WriteRequest};
use crate::node::{Node, NodeError, now_ms};

/// The API backend: a running node.
pub struct NodeBackend<T: Transport> {
    /// The node; shared with the inbound server and the handoff task.
    pub node: Arc<Node<T>>,
}

fn policy_in(p: ApiPolicy) -> ConflictPolicy {
    match p {
        ApiPolicy::Siblings => ConflictPolicy::Siblings,
        ApiPolicy::Lww => ConflictPolicy::Lww,
    }
}

fn policy_out(p: ConflictPolicy) -> ApiPolicy {
    match p {
        ConflictPolicy::Siblings => ApiPolicy::Siblings,
        ConflictPolicy::Lww => ApiPolicy::Lww,
    }
}

fn bucket_report(o: BucketOutcome) -> BucketReport {
    let mut details = Map::new();
    details.insert("coordinator".into(), json!(o.node));
    details.insert("replicas_written".into(), json!(o.replicas_written));
    details.insert("hinted".into(), json!(o.hinted));
    if let Some(b) = o.bucket {
        details.insert("conflict".into(), json!(policy_out(b.policy).as_str()));
    }
    BucketReport { details }
}

/// The node's anti-entropy for `/cluster`: settings, counters, the trees, and each owned
/// partition's last exchange.
fn anti_entropy_json<T: Transport>(node: &Node<T>) -> Value {
    let a = node.anti_entropy();
    let stats = node.stats();
    let t = node.store.tree_stats();
    json!({
        "interval_s": a.interval_ms as f64 / 1000.0,
        "enabled": a.interval_ms > 0,
        "partitions_owned": a.partitions_owned,
        "partitions_exchanged_recently": a.partitions_recent,
        "oldest_exchange_age_s": a.last_exchange_age_ms.values().max().map(|ms| *ms as f64 / 1000.0),
        "exchanges": stats.aae_exchanges,
        "exchanges_in_sync": stats.aae_in_sync,
        "exchanges_failed": stats.aae_failures,
        "keys_repaired": stats.aae_keys_repaired,
        "running": a.running.map(|(p, peer)| json!({"partition": p, "peer": peer})),
        "tree": {
            "partitions": t.partitions,
            "memory_bytes": t.memory_bytes,
            "keys": t.keys,
            "build_keys": t.built_keys,
            "build_ms": t.build_ms,
        },
        "last_exchange_age_s": a
            .last_exchange_age_ms
            .iter()
            .map(|(p, ms)| (p.to_string(), *ms as f64 / 1000.0))
            .collect::<BTreeMap<_, _>>(),
    })
}

/// The node's tombstone collection and reclaiming for `/cluster`.
fn tombstones_json<T: Transport>(node: &Node<T>) -> Value {
    let g = node.tombstones();
    let stats = node.stats();
    json!({
        "enabled": g.grace_ms.is_some(),
        "grace_s": g.grace_ms.map(|ms| ms as f64 / 1000.0),
        "awaiting_stability": g.awaiting,
        "blocked_last_round": g.blocked_last_round,
        "collected": stats.tombstones_collected,
        "rounds": stats.tombstone_rounds,
        "objects_reclaimed": stats.objects_reclaimed,
        "counter_floor": node.store.counter_floor(),
    })
}

/// A coordinated write's outcome as the API reports it.
fn write_result(outcome: WriteOutcome, meta: Meta) -> WriteResult {
    WriteResult {
        node: outcome.node,
        dot: outcome.dot,
        meta,
        context: Context(outcome.context),
        report: outcome.report,
    }
}

/// The node's large-object chunks for `/cluster`.
fn chunks_json<T: Transport>(node: &Node<T>) -> Value {
    let c = &node.chunks().stats;
    let settings = node.chunks().settings();
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    json!({
        "chunk_size": crate::node::chunks::CHUNK_SIZE,
        "held": node.store.engine().stats().keys_in(cairn_engine::Keyspace::Chunk),
        "grace_s": settings.grace.as_secs_f64(),
        "max_inflight_bytes": settings.max_inflight_bytes,
        "stored": load(&c.stored),
        "fetched": load(&c.fetched),
        "served": load(&c.served),
        "collected": load(&c.chunks_collected),
        "blobs_collected": load(&c.blobs_collected),
        "blobs_awaiting_collection": load(&c.awaiting),
        "slow_downs": load(&c.slow_downs),
    })
}

impl<T: Transport> NodeBackend<T> {
    async fn live_bucket(&self, b: &BucketName) -> Result<BucketInfo, ApiError> {
        Ok(self.node.bucket(b.as_str())?)
    }

    fn key(info: &BucketInfo, name: &ObjectName) -> ObjectKey {
        ObjectKey {
            bucket: info.name.clone(),
            incarnation: info.incarnation,
            name: name.as_str().to_owned(),
        }
    }

    /// A node error as the API shows it; a failed read quorum names this node as coordinator.
    fn read_error(&self, e: NodeError) -> ApiError {
        match e {
            NodeError::ReadQuorum { answered, required, report } => {
                ApiError::ReadQuorumNotReached {
                    message: format!("{answered} of {required} required replicas answered"),
                    node: self.node.id().to_string(),
                    report,
                }
            }
            e => e.into(),
        }
    }

    async fn write(&self, req: WriteRequest, meta: Meta) -> Result<WriteResult, ApiError> {
        Ok(write_result(self.node.write(req).await?, meta))
    }
}

impl<T: Transport> Backend for NodeBackend<T> {
    fn node_id(&self) -> &str {
        self.node.id().as_str()
    }

    async fn create_bucket(
        &self,
        bucket: BucketName,
        policy: ApiPolicy,
    ) -> Result<BucketReport, ApiError> {
        let out = self.node.create_bucket(bucket.as_str(), policy_in(policy)).await?;
        Ok(bucket_report(out))
    }

    async fn delete_bucket(&self, bucket: BucketName) -> Result<BucketReport, ApiError> {
        Ok(bucket_report(self.node.delete_bucket(bucket.as_str()).await?))
    }

    async fn list_buckets(&self) -> Result<Vec<ApiBucket>, ApiError> {
        let mut out = Vec::new();
        for b in self.node.list_buckets()? {
            // Names in the registry were validated when created; skip anything that is not.
            if let Ok(name) = BucketName::new(b.name) {
                out.push(ApiBucket { name, conflict: policy_out(b.policy) });
            }
        }
        Ok(out)
    }

    async fn list_files(&self, req: ListFiles) -> Result<FileList, ApiError> {
        let info = self.live_bucket(&req.bucket).await?;
        let listing =
            self.node.list_files(&info, &req.prefix, req.cursor.as_deref(), req.limit).await?;
        let entries = listing.entries;
        let next_cursor = if listing.more { entries.last().map(|e| e.name.clone()) } else { None };
        let files = entries
            .into_iter()
            .filter_map(|e| {
                let name = ObjectName::new(e.name).ok()?;
                Some(FileEntry { name, meta: e.meta, versions: e.versions })
            })
            .collect();
        Ok(FileList { files, next_cursor, missing: listing.missing })
    }

    async fn put_object(&self, req: PutObject) -> Result<WriteResult, ApiError> {
        let info = self.live_bucket(&req.bucket).await?;
        let meta = Meta {
            size: req.body.len() as u64,
            content_type: req.content_type,
            etag: req.etag,
            timestamp_ms: now_ms(),
            file_name: req.file_name,
        };
        let wr = WriteRequest {
            key: Self::key(&info, &req.name),
            op: WriteOp::Put { meta: meta.clone(), body: Body::Bytes(req.body.to_vec()) },
            context: req.context.map(|c| c.0),
            overwrite: req.overwrite,
            w: req.w.unwrap_or(self.node.config().w),
            lww: info.policy == ConflictPolicy::Lww,
            excluded: Vec::new(),
        };
        self.write(wr, meta).await
    }

    async fn put_object_stream<'a>(&'a self, req: PutStream<'a>) -> Result<WriteResult, ApiError> {
        let info = self.live_bucket(&req.bucket).await?;
        let meta = Meta {
            size: 0,
            content_type: req.content_type,
            etag: String::new(),
            timestamp_ms: now_ms(),
            file_name: req.file_name,
        };
        let up = Upload {
            key: Self::key(&info, &req.name),
            meta,
            context: req.context.map(|c| c.0),
            overwrite: req.overwrite,
            w: req.w.unwrap_or(self.node.config().w),
            lww: info.policy == ConflictPolicy::Lww,
        };
        let (outcome, meta) = self.node.upload(up, req.body).await?;
        Ok(write_result(outcome, meta))
    }

    fn open_content(&self, req: OpenContent) -> Result<BodyStream<'static>, ApiError> {
        let key = ObjectKey {
            bucket: req.bucket.as_str().to_owned(),
            incarnation: req.incarnation,
            name: req.name.as_str().to_owned(),
        };
        let holders = req.holders.into_iter().filter_map(|h| NodeId::new(h).ok()).collect();
        self.node.open_content(Download { key, manifest: req.manifest, range: req.range, holders })
    }

    async fn delete_object(&self, req: DeleteObject) -> Result<WriteResult, ApiError> {
        let info = self.live_bucket(&req.bucket).await?;
        let ts = now_ms();
        let meta = Meta { timestamp_ms: ts, ..Meta::default() };
        let node = Arc::clone(&self.node);
        let outcome = node
            .delete(
                Self::key(&info, &req.name),
                req.context.map(|c| c.0),
                req.w.unwrap_or(self.node.config().w),
                info.policy == ConflictPolicy::Lww,
                ts,
            )
            .await
            .map_err(|e| self.read_error(e))?;
        Ok(WriteResult {
            node: outcome.node,
            dot: outcome.dot,
            meta,
            context: Context(outcome.context),
            report: outcome.report,
        })
    }

    async fn get_object(&self, req: GetObject) -> Result<ReadResult, ApiError> {
        let info = self.live_bucket(&req.bucket).await?;
        let key = Self::key(&info, &req.name);
        let r = req.r.unwrap_or(self.node.config().r);
        let lww = info.policy == ConflictPolicy::Lww;
        let node = Arc::clone(&self.node);
        let outcome = node.read(key, r, lww, req.local).await.map_err(|e| self.read_error(e))?;
        let report = match outcome.report {
            Some(r) => r,
            None => {
                let me = self.node.id().clone();
                ReadReport {
                    pref_list: Vec::new(),
                    targets: Vec::new(),
                    replicas_read: vec![me.clone()],
                    not_found: if outcome.set.is_empty() { vec![me.clone()] } else { vec![] },
                    hinted: Vec::new(),
                    vector_clocks: BTreeMap::from([(me, outcome.set.join())]),
                    read_repair: Vec::new(),
                    failed: Vec::new(),
                    timed_out: Vec::new(),
                    required: 1,
                    quorum_reached: true,
                }
            }
        };
        Ok(ReadResult {
            node: outcome.node,
            set: outcome.set,
            report,
            incarnation: info.incarnation,
        })
    }

    async fn cluster(&self) -> Result<Value, ApiError> {
        let node = &self.node;
        let view = node.view();
        let hints = node.hints_pending();
        let placement = node.placement();
        let (me, peers) = node.statuses();
        let (primaries, replicas) = match &placement {
            Some(p) => (p.ring().primary_counts(), p.ring().replica_counts()),
            None => Default::default(),
        };
        // Members of the layout first (before and after a change in progress), then every other
        // node this one hears (gateways, nodes waiting to be added).
        let mut ids: Vec<String> = match &placement {
            Some(p) => {
                let mut v: Vec<String> = p.layout().members.iter().map(|m| m.to_string()).collect();
                if let Some(t) = &p.layout().transition {
                    for m in &t.from {
                        if !v.iter().any(|x| x == m.as_str()) {
                            v.push(m.to_string());
                        }
                    }
                }
                v
            }
            None => Vec::new(),
        };
        let in_layout = ids.clone();
        for id in view.members.keys().chain(std::iter::once(&node.id().to_string())) {
            if !ids.contains(id) {
                ids.push(id.clone());
            }
        }
        let members: Vec<Value> = ids
            .iter()
            .map(|m| {
                let info = view.members.get(m.as_str());
                let nid = cairn_replication::NodeId::new(m.clone()).ok();
                let count = |c: &BTreeMap<cairn_replication::NodeId, usize>| {
                    nid.as_ref().and_then(|n| c.get(n)).copied().unwrap_or(0)
                };
                let role = match &placement {
                    Some(p) if p.layout().members.iter().any(|x| x.as_str() == m) => "member",
                    Some(_) if in_layout.contains(m) => "leaving",
                    _ => "gateway",
                };
                json!({
                    "id": m,
                    "role": role,
                    "status": if m == node.id().as_str() { json!("up") } else {
                        info.map(|i| json!(i.status)).unwrap_or(json!("unknown"))
                    },
                    "phi": info.map(|i| i.phi),
                    "heartbeat_age_ms": info.and_then(|i| i.last_heartbeat_age).map(|d| d.as_millis() as u64),
                    "peer_id": info.map(|i| i.announced.peer_id.clone()),
                    "addresses": info.map(|i| i.announced.addresses.clone()),
                    "http": info.map(|i| i.announced.http_addr.clone()),
                    "version": info.map(|i| i.announced.version.clone()),
                    "partitions_primary": count(&primaries),
                    "partitions_replica": count(&replicas),
                    "hints_pending_here": nid.as_ref().and_then(|n| hints.get(n)).copied().unwrap_or(0),
                })
            })
            .collect();
        let layout = placement.as_ref().map(|p| {
            let l = p.layout();
            json!({
                "version": l.version,
                "members": l.members.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
                "transition": l.transition.as_ref().map(|t| json!({
                    "change": t.change.to_string(),
                    "phase": t.phase,
                    "started": t.started,
                    "from": t.from.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
                    "partitions_to_move": p.moves().partitions_to_move,
                    "minimum_moves": p.moves().minimum,
                })),
            })
        });
        let mut statuses = vec![(node.id().to_string(), me)];
        statuses.extend(peers.into_iter().map(|(n, s)| (n.to_string(), s)));
        let per_node: Vec<Value> = statuses
            .into_iter()
            .map(|(n, s)| {
                json!({
                    "node": n,
                    "layout_version": s.version,
                    "acked": s.acked,
                    "synced": s.synced,
                    "sync": s.sync.map(|p| json!({
                        "started": p.started,
                        "pulling": p.started_pulling,
                        "partitions_pending": p.partitions - p.partitions_done,
                        "partitions_done": p.partitions_done,
                        "keys_moved": p.keys,
                        "bytes_moved": p.bytes,
                    })),
                })
            })
            .collect();
        let totals = per_node.iter().fold((0u64, 0u64, 0u64, 0u64), |acc, v| {
            let s = &v["sync"];
            (
                acc.0 + s["partitions_pending"].as_u64().unwrap_or(0),
                acc.1 + s["partitions_done"].as_u64().unwrap_or(0),
                acc.2 + s["keys_moved"].as_u64().unwrap_or(0),
                acc.3 + s["bytes_moved"].as_u64().unwrap_or(0),
            )
        });
        Ok(json!({
            "members": members,
            "layout": layout,
            "handoff": {
                "partitions_pending": totals.0,
                "partitions_done": totals.1,
                "keys_moved": totals.2,
                "bytes_moved": totals.3,
                "per_node": per_node,
            },
            "ring": placement.as_ref().map(|p| json!({
                "partitions": p.ring().partitions(),
                "n": p.ring().n(),
                "r": node.config().r,
                "w": node.config().w,
            })),
            "hints_pending": hints.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
            "anti_entropy": anti_entropy_json(node),
            "tombstones": tombstones_json(node),
            "chunks": chunks_json(node),
        }))
    }

    async fn change_members(&self, change: MemberChange) -> Result<Value, ApiError> {
        let parse = |id: String| {
            cairn_replication::NodeId::new(id).map_err(|e| ApiError::InvalidArgument(e.to_string()))
        };
        let change = match change {
            MemberChange::Add(id) => Change::Add(parse(id)?),
            MemberChange::Decommission(id) => Change::Decommission(parse(id)?),
            MemberChange::ForceRemove(id) => Change::ForceRemove(parse(id)?),
        };
        let what = change.to_string();
        let outcome = self.node.change_members(change).await?;
        Ok(json!({
            "change": what,
            "layout_version": outcome.layout.version,
            "members": outcome.layout.members.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
            "partitions_to_move": outcome.moves.partitions_to_move,
            "minimum_moves": outcome.moves.minimum,
        }))
    }

    async fn health(&self) -> Health {
        let node = &self.node;
        let healthy = node.store.engine().is_healthy();
        let reachable = node.reachable().len();
        let mut details = Map::new();
        details.insert("storage".into(), json!(if healthy { "ok" } else { "poisoned" }));
        details.insert("members_reachable".into(), json!(reachable));
        let members = node.layout().map_or(0, |l| l.members.len());
        details.insert("members".into(), json!(members));
        Health { healthy, details }
    }

    fn metrics_text(&self) -> String {
        let node = &self.node;
        let mut out = String::new();
        crate::node::metrics::render(&node.stats(), &mut out);
        let s = node.store.engine().stats();
        let aae = node.anti_entropy();
        let trees = node.store.tree_stats();
        let gc = node.tombstones();
        let gauges: [(&str, &str, f64); 11] = [
            (
                "cairn_engine_keys",
                "Live keys in the engine (all keyspaces).",
                s.keys.iter().sum::<u64>() as f64,
            ),
            ("cairn_engine_live_bytes", "Bytes of live records.", s.live_bytes as f64),
            ("cairn_engine_total_bytes", "Bytes of all segment files.", s.total_bytes as f64),
            ("cairn_engine_keydir_bytes", "Estimated keydir memory.", s.keydir_bytes as f64),
            ("cairn_engine_healthy", "1 unless a sync failed.", if s.healthy { 1.0 } else { 0.0 }),
            ("cairn_hints_pending", "Hints held for other nodes.", node.hint_count() as f64),
            (
                "cairn_aae_partitions_owned",
                "Partitions this node owns and exchanges with their other owners.",
                aae.partitions_owned as f64,
            ),
            (
                "cairn_aae_partitions_recent",
                "Owned partitions whose last anti-entropy exchange completed within two intervals.",
                aae.partitions_recent as f64,
            ),
            (
                "cairn_aae_tree_memory_bytes",
                "Memory of the anti-entropy hash trees.",
                trees.memory_bytes as f64,
            ),
            (
                "cairn_tombstones_awaiting_stability",
                "Tombstones old enough to collect, waiting for every node to confirm (primary here).",
                gc.awaiting as f64,
            ),
            (
                "cairn_aae_tree_build_seconds",
                "How long building the anti-entropy trees took at start.",
                trees.build_ms as f64 / 1000.0,
            ),
        ];
        for (name, help, v) in gauges {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n"));
        }
        let c = &node.chunks().stats;
        let counters: [(&str, &str, &AtomicU64); 7] = [
            (
                "cairn_chunks_stored_total",
                "Large-object chunks stored (uploads and peers).",
                &c.stored,
            ),
            (
                "cairn_chunks_fetched_total",
                "Chunks fetched from peers before merging a manifest (hints, repair, handoff).",
                &c.fetched,
            ),
            ("cairn_chunks_served_total", "Chunks read for clients and peers.", &c.served),
            (
                "cairn_chunks_collected_total",
                "Unreferenced chunks deleted after the chunk grace.",
                &c.chunks_collected,
            ),
            ("cairn_blobs_collected_total", "Unreferenced blobs deleted.", &c.blobs_collected),
            (
                "cairn_slow_downs_total",
                "Large requests refused with 503 SlowDown (buffer budget spent).",
                &c.slow_downs,
            ),
            ("cairn_chunk_scans_total", "Chunk collection scans completed.", &c.scans),
        ];
        for (name, help, v) in counters {
            let v = v.load(Ordering::Relaxed);
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n"));
        }
        let chunk_gauges = [
            (
                "cairn_chunks_held",
                "Chunks in the engine's chunk keyspace.",
                s.keys_in(cairn_engine::Keyspace::Chunk),
            ),
            (
                "cairn_blobs_awaiting_collection",
                "Unreferenced blobs waiting for the chunk grace.",
                c.awaiting.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, v) in chunk_gauges {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n"));
        }
        let view = node.view();
        out.push_str("# HELP cairn_member_up 1 if the member is up in this node's view.\n# TYPE cairn_member_up gauge\n");
        let layout_members: Vec<cairn_replication::NodeId> =
            node.layout().map(|l| l.voters().into_iter().collect()).unwrap_or_default();
        for m in &layout_members {
            let up = view.status(m.as_str()) == Some(cairn_membership::MemberStatus::Up)
                || m == node.id();
            out.push_str(&format!("cairn_member_up{{member=\"{m}\"}} {}\n", u8::from(up)));
        }
        out.push_str("# HELP cairn_member_phi Failure-detector phi of the member.\n# TYPE cairn_member_phi gauge\n");
        for (id, info) in &view.members {
            out.push_str(&format!("cairn_member_phi{{member=\"{id}\"}} {}\n", info.phi));
        }
        out
    }
}

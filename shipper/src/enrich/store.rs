//! [`PodStore`]: the pods of this node by uid, fed by the watch, read per chunk by the read path.
//!
//! Reads take a shared lock and clone one `Arc`; writers (the watch task) hold the exclusive lock
//! only to swap entries, never across an await or an API call.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use globset::{Glob, GlobSet, GlobSetBuilder};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::runtime::watcher::Event;
use sluice_common::schema::StrMap;

use super::KubernetesConfig;
use super::metrics::Miss;
use super::pod::{PodInfo, sanitize_map};

/// How long the uid of a collected pod is remembered, so that late lookups answer
/// [`Lookup::Unknown`] at once instead of [`Lookup::Pending`].
const TOMBSTONE_TTL: Duration = Duration::from_secs(3600);

/// Answer of [`PodStore::lookup`].
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// The pod's metadata (also for a deleted pod during `kubernetes.deleted_pod_grace`).
    Found(Arc<PodInfo>),
    /// Not in the store, but the watch may still deliver it: it has not completed its first list
    /// yet, or the pod is newer than the last event received. Wait up to
    /// `kubernetes.wait_for_pod` (asking again), then use path metadata (miss `pending_timeout`).
    Pending,
    /// Not in the store and it will not arrive: the pod was deleted and collected, or the watch is
    /// disabled (`kubernetes.enabled: false`). Use path metadata at once (miss `unknown`).
    Unknown,
    /// Not in the store and the API server is unreachable or refuses the watch: use path
    /// metadata at once, do not wait (miss `api_down`).
    Unavailable,
}

impl Lookup {
    /// The miss reason of a lookup that gives path metadata at once (`Pending` is a miss only once
    /// the wait is over: [`Miss::PendingTimeout`]).
    pub fn miss(&self) -> Option<Miss> {
        match self {
            Lookup::Found(_) | Lookup::Pending => None,
            Lookup::Unknown => Some(Miss::Unknown),
            Lookup::Unavailable => Some(Miss::ApiDown),
        }
    }
}

/// What the read path does with a file's next records ([`PodStore::resolve`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
    /// Enrich them from this pod.
    Enrich(Arc<PodInfo>),
    /// Hold this file (read other files) and resolve again: the pod may still arrive.
    Wait,
    /// Ship them with path metadata (tag `metadata_from_path`), counting this miss.
    PathOnly(Miss),
}

/// State of the watch feeding a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Health {
    /// Not listed yet (starting or relisting after a restart of the shipper).
    Starting = 0,
    /// The watch is current (its first list completed and the last request succeeded).
    Synced = 1,
    /// The last list or watch request failed; retrying with backoff.
    Failing = 2,
    /// `kubernetes.enabled: false`: nothing will ever be watched.
    Disabled = 3,
}

impl Health {
    fn from_u8(v: u8) -> Health {
        match v {
            1 => Health::Synced,
            2 => Health::Failing,
            3 => Health::Disabled,
            _ => Health::Starting,
        }
    }
}

/// The pods of this node, keyed by pod uid. Cheap to clone; clones share the same store.
#[derive(Debug, Clone)]
pub struct PodStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: RwLock<State>,
    health: AtomicU8,
    changes: AtomicU64,
    synced: tokio::sync::watch::Sender<bool>,
    grace: Duration,
    wait_for_pod: Duration,
    annotations: GlobSet,
}

#[derive(Debug, Default)]
struct State {
    /// By `metadata.uid`.
    pods: HashMap<String, Entry>,
    /// Kubelet uid of a static pod → `metadata.uid` of its mirror pod.
    aliases: HashMap<String, String>,
    /// `metadata.uid`s seen since the last `Init` (`None` outside a relist).
    relist: Option<HashSet<String>>,
    /// Uids of collected pods → when collected.
    tombstones: HashMap<String, Instant>,
    /// Namespace labels (sanitised), when namespace labels are watched.
    namespaces: HashMap<String, Arc<StrMap>>,
    /// Namespaces seen since the last namespace `Init`.
    ns_relist: Option<HashSet<String>>,
}

#[derive(Debug)]
struct Entry {
    info: Arc<PodInfo>,
    deleted_at: Option<Instant>,
}

impl PodStore {
    /// An empty store for `config`: annotations kept by `kubernetes.annotations`, deleted pods kept
    /// for `kubernetes.deleted_pod_grace`; [`Health::Disabled`] when `kubernetes.enabled` is false.
    /// Invalid annotation globs are skipped (validation reports them).
    pub fn new(config: &KubernetesConfig) -> PodStore {
        let mut globs = GlobSetBuilder::new();
        for g in &config.annotations {
            if let Ok(glob) = Glob::new(g) {
                globs.add(glob);
            }
        }
        let store = PodStore {
            inner: Arc::new(Inner {
                state: RwLock::default(),
                health: AtomicU8::new(Health::Starting as u8),
                changes: AtomicU64::new(0),
                synced: tokio::sync::watch::Sender::new(false),
                grace: config.deleted_pod_grace,
                wait_for_pod: config.wait_for_pod,
                annotations: globs.build().unwrap_or_else(|_| GlobSet::empty()),
            }),
        };
        if !config.enabled {
            store.set_health(Health::Disabled);
        }
        store
    }

    /// The pod with kubelet uid `uid` (the uid in `/var/log/pods/<ns>_<pod>_<uid>/`). One shared
    /// lock and one `Arc` clone: cheap enough per read chunk.
    pub fn lookup(&self, uid: &str) -> Lookup {
        {
            let state = self.read();
            let entry = state.pods.get(uid).or_else(|| state.aliases.get(uid).and_then(|api| state.pods.get(api)));
            if let Some(entry) = entry {
                return Lookup::Found(entry.info.clone());
            }
            if state.tombstones.contains_key(uid) {
                return Lookup::Unknown;
            }
        }
        match self.health() {
            Health::Starting | Health::Synced => Lookup::Pending,
            Health::Failing => Lookup::Unavailable,
            Health::Disabled => Lookup::Unknown,
        }
    }

    /// The read path's policy in one call: [`Lookup::Found`] → enrich; [`Lookup::Pending`] → wait
    /// until `kubernetes.wait_for_pod` after `waiting_since` (when the file first asked), then path
    /// metadata ([`Miss::PendingTimeout`]); [`Lookup::Unknown`] / [`Lookup::Unavailable`] → path
    /// metadata at once. Cheap enough to call again per chunk, so a file shipped with path metadata
    /// is enriched as soon as its pod arrives.
    pub fn resolve(&self, uid: &str, waiting_since: Instant, now: Instant) -> Resolution {
        let lookup = self.lookup(uid);
        match lookup {
            Lookup::Found(info) => Resolution::Enrich(info),
            Lookup::Pending if now.saturating_duration_since(waiting_since) < self.inner.wait_for_pod => {
                Resolution::Wait
            }
            Lookup::Pending => Resolution::PathOnly(Miss::PendingTimeout),
            other => Resolution::PathOnly(other.miss().unwrap_or(Miss::Unknown)),
        }
    }

    /// Whether the watch has completed its first list (later relists do not reset it).
    pub fn synced(&self) -> bool {
        *self.inner.synced.borrow()
    }

    /// Resolves once the watch has completed its first list (never when disabled).
    pub async fn wait_synced(&self) {
        let mut rx = self.inner.synced.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// The watch's current state.
    pub fn health(&self) -> Health {
        Health::from_u8(self.inner.health.load(Ordering::Relaxed))
    }

    /// A counter increased by every change of the store: a waiting caller can skip lookups while
    /// it has not moved.
    pub fn changes(&self) -> u64 {
        self.inner.changes.load(Ordering::Acquire)
    }

    /// Pods in the store (live and deleted within their grace).
    pub fn len(&self) -> usize {
        self.read().pods.len()
    }

    /// Whether the store holds no pod.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sets the watch state (the watch task does; tests too).
    pub fn set_health(&self, health: Health) {
        self.inner.health.store(health as u8, Ordering::Relaxed);
    }

    /// Applies one pod watch event at time `now`:
    /// - `Init` starts a relist; `InitApply` and `Apply` insert or replace the pod;
    /// - `InitDone` marks every live pod the relist did not return as deleted at `now` (it was
    ///   deleted while the watch was down; its files may still be draining), and marks the store
    ///   synced;
    /// - `Delete` marks the pod deleted at `now`; it stays found until [`PodStore::gc`] collects it
    ///   after `kubernetes.deleted_pod_grace`.
    pub fn apply_pod_event(&self, event: Event<Pod>, now: Instant) {
        let mut state = self.write();
        match event {
            Event::Init => state.relist = Some(HashSet::new()),
            Event::InitApply(pod) => {
                let uid = self.upsert(&mut state, &pod, None);
                if let (Some(seen), Some(uid)) = (state.relist.as_mut(), uid) {
                    seen.insert(uid);
                }
            }
            Event::InitDone => {
                if let Some(seen) = state.relist.take() {
                    for (uid, entry) in state.pods.iter_mut() {
                        if entry.deleted_at.is_none() && !seen.contains(uid) {
                            entry.deleted_at = Some(now);
                        }
                    }
                }
                drop(state);
                self.set_health(Health::Synced);
                self.inner.synced.send_replace(true);
            }
            Event::Apply(pod) => {
                self.upsert(&mut state, &pod, None);
            }
            Event::Delete(pod) => {
                self.upsert(&mut state, &pod, Some(now));
            }
        }
        self.inner.changes.fetch_add(1, Ordering::Release);
    }

    /// Applies one namespace watch event (only when `kubernetes.namespace_labels` is on): records
    /// the namespace's labels and re-renders the pods of that namespace. A relist forgets
    /// namespaces it did not return.
    pub fn apply_namespace_event(&self, event: Event<Namespace>) {
        let mut state = self.write();
        match event {
            Event::Init => state.ns_relist = Some(HashSet::new()),
            Event::InitApply(ns) | Event::Apply(ns) => {
                let Some(name) = ns.metadata.name else { return };
                let labels = Arc::new(sanitize_map(ns.metadata.labels.iter().flatten()));
                if let Some(seen) = state.ns_relist.as_mut() {
                    seen.insert(name.clone());
                }
                if state.namespaces.get(&name).is_some_and(|old| **old == *labels) {
                    return;
                }
                state.namespaces.insert(name.clone(), labels.clone());
                set_namespace_labels(&mut state, &name, labels);
            }
            Event::Delete(ns) => {
                let Some(name) = ns.metadata.name else { return };
                if state.namespaces.remove(&name).is_some() {
                    set_namespace_labels(&mut state, &name, Arc::default());
                }
            }
            Event::InitDone => {
                if let Some(seen) = state.ns_relist.take() {
                    let gone: Vec<String> = state.namespaces.keys().filter(|n| !seen.contains(*n)).cloned().collect();
                    for name in gone {
                        state.namespaces.remove(&name);
                        set_namespace_labels(&mut state, &name, Arc::default());
                    }
                }
            }
        }
        self.inner.changes.fetch_add(1, Ordering::Release);
    }

    /// Removes pods deleted at least `kubernetes.deleted_pod_grace` before `now` and forgets old
    /// tombstones. Returns how many pods were removed.
    pub fn gc(&self, now: Instant) -> usize {
        let grace = self.inner.grace;
        let mut state = self.write();
        let expired: Vec<String> = state
            .pods
            .iter()
            .filter(|(_, e)| e.deleted_at.is_some_and(|at| now.saturating_duration_since(at) >= grace))
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in &expired {
            if let Some(entry) = state.pods.remove(uid) {
                let kubelet_uid = entry.info.uid.clone();
                if kubelet_uid != *uid {
                    state.aliases.remove(&kubelet_uid);
                    state.tombstones.insert(kubelet_uid, now);
                }
                state.tombstones.insert(uid.clone(), now);
            }
        }
        state.tombstones.retain(|_, at| now.saturating_duration_since(*at) < TOMBSTONE_TTL);
        if !expired.is_empty() {
            self.inner.changes.fetch_add(1, Ordering::Release);
        }
        expired.len()
    }

    /// Whether the pod with `metadata.uid` `uid` is marked deleted (for tests and diagnostics).
    pub fn is_deleted(&self, uid: &str) -> Option<bool> {
        self.read().pods.get(uid).map(|e| e.deleted_at.is_some())
    }

    /// Inserts or replaces the pod; `deleted` marks it deleted at that time, `None` marks it live.
    /// Returns its `metadata.uid` (`None` for an object without one, which is ignored).
    fn upsert(&self, state: &mut State, pod: &Pod, deleted: Option<Instant>) -> Option<String> {
        let api_uid = pod.metadata.uid.as_deref().filter(|u| !u.is_empty())?;
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        let ns_labels = state.namespaces.get(ns).cloned().unwrap_or_default();
        let info = PodInfo::from_pod(pod, &self.inner.annotations, ns_labels);
        if info.uid != api_uid {
            state.aliases.insert(info.uid.clone(), api_uid.to_owned());
            state.tombstones.remove(&info.uid);
        }
        state.tombstones.remove(api_uid);
        match state.pods.get_mut(api_uid) {
            Some(entry) => {
                // A pod deleted earlier keeps its first deletion time.
                entry.deleted_at = deleted.map(|now| entry.deleted_at.unwrap_or(now));
                if *entry.info != info {
                    entry.info = Arc::new(info);
                }
            }
            None => {
                state.pods.insert(api_uid.to_owned(), Entry { info: Arc::new(info), deleted_at: deleted });
            }
        }
        Some(api_uid.to_owned())
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.inner.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.inner.state.write().unwrap_or_else(PoisonError::into_inner)
    }
}

fn set_namespace_labels(state: &mut State, namespace: &str, labels: Arc<StrMap>) {
    for entry in state.pods.values_mut() {
        if entry.info.namespace == namespace && !Arc::ptr_eq(&entry.info.namespace_labels, &labels) {
            let mut info = (*entry.info).clone();
            info.namespace_labels = labels.clone();
            entry.info = Arc::new(info);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::pod::MIRROR_ANNOTATION;
    use crate::enrich::pod::tests::pod;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn store() -> PodStore {
        let config = KubernetesConfig {
            deleted_pod_grace: Duration::from_secs(300),
            annotations: vec!["team/*".into()],
            ..Default::default()
        };
        PodStore::new(&config)
    }

    fn found(store: &PodStore, uid: &str) -> Option<Arc<PodInfo>> {
        match store.lookup(uid) {
            Lookup::Found(info) => Some(info),
            _ => None,
        }
    }

    fn namespace(name: &str, labels: &[(&str, &str)]) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn lookups_before_and_after_the_first_list() {
        let s = store();
        let t0 = Instant::now();
        assert_eq!(s.lookup("u1"), Lookup::Pending, "not listed yet: may still arrive");
        assert!(!s.synced());
        s.apply_pod_event(Event::Init, t0);
        s.apply_pod_event(Event::InitApply(pod("shop", "web-0", "u1")), t0);
        assert_eq!(found(&s, "u1").unwrap().name, "web-0", "visible during the list already");
        s.apply_pod_event(Event::InitDone, t0);
        assert!(s.synced());
        assert_eq!(s.health(), Health::Synced);
        assert_eq!(s.lookup("u2"), Lookup::Pending, "a pod newer than the last event may still arrive");
        s.set_health(Health::Failing);
        assert_eq!(s.lookup("u2"), Lookup::Unavailable, "API down: do not wait");
        assert!(found(&s, "u1").is_some(), "known pods stay found while the API is down");
    }

    #[test]
    fn disabled_store_answers_unknown() {
        let s = PodStore::new(&KubernetesConfig { enabled: false, ..Default::default() });
        assert_eq!(s.health(), Health::Disabled);
        assert_eq!(s.lookup("u1"), Lookup::Unknown);
    }

    #[test]
    fn apply_replaces_and_delete_keeps_until_grace() {
        let s = store();
        let t0 = Instant::now();
        s.apply_pod_event(Event::Apply(pod("shop", "web-0", "u1")), t0);
        let before = found(&s, "u1").unwrap();
        let mut changed = pod("shop", "web-0", "u1");
        changed.metadata.labels = Some([("app".to_owned(), "web".to_owned())].into());
        let n = s.changes();
        s.apply_pod_event(Event::Apply(changed.clone()), t0);
        assert!(s.changes() > n);
        let after = found(&s, "u1").unwrap();
        assert!(before.labels.is_empty(), "an Arc taken earlier is unchanged");
        assert_eq!(after.labels["app"], "web");
        // Same content again: the Arc is kept.
        s.apply_pod_event(Event::Apply(changed.clone()), t0);
        assert!(Arc::ptr_eq(&after, &found(&s, "u1").unwrap()));

        s.apply_pod_event(Event::Delete(changed), t0);
        assert_eq!(s.is_deleted("u1"), Some(true));
        assert!(found(&s, "u1").is_some(), "deleted pods stay for the grace period");
        assert_eq!(s.gc(t0 + Duration::from_secs(299)), 0);
        assert!(found(&s, "u1").is_some());
        assert_eq!(s.gc(t0 + Duration::from_secs(300)), 1);
        assert_eq!(s.lookup("u1"), Lookup::Unknown, "collected: do not wait for it");
        assert_eq!(s.len(), 0);
        // Tombstones expire.
        s.gc(t0 + Duration::from_secs(300) + TOMBSTONE_TTL);
        s.apply_pod_event(Event::InitDone, t0);
        assert_eq!(s.lookup("u1"), Lookup::Pending);
    }

    #[test]
    fn relist_marks_missing_pods_deleted_not_removed() {
        let s = store();
        let t0 = Instant::now();
        s.apply_pod_event(Event::Init, t0);
        for (name, uid) in [("a", "ua"), ("b", "ub"), ("c", "uc")] {
            s.apply_pod_event(Event::InitApply(pod("shop", name, uid)), t0);
        }
        s.apply_pod_event(Event::InitDone, t0);
        s.apply_pod_event(Event::Delete(pod("shop", "c", "uc")), t0);

        // The watch restarts (e.g. after 410 Gone); `b` was deleted meanwhile, `d` created.
        let t1 = t0 + Duration::from_secs(100);
        s.apply_pod_event(Event::Init, t1);
        assert!(found(&s, "ub").is_some(), "a relist in progress removes nothing");
        s.apply_pod_event(Event::InitApply(pod("shop", "a", "ua")), t1);
        s.apply_pod_event(Event::InitApply(pod("shop", "d", "ud")), t1);
        s.apply_pod_event(Event::InitDone, t1);
        assert_eq!(s.is_deleted("ua"), Some(false));
        assert_eq!(s.is_deleted("ub"), Some(true), "absent from the relist: deleted");
        assert_eq!(s.is_deleted("uc"), Some(true));
        assert_eq!(s.is_deleted("ud"), Some(false));
        assert!(found(&s, "ub").is_some(), "kept while its files drain");

        // `c` was deleted at t0, `b` at t1: each gets its own grace.
        assert_eq!(s.gc(t0 + Duration::from_secs(300)), 1);
        assert_eq!(s.is_deleted("uc"), None);
        assert!(found(&s, "ub").is_some());
        assert_eq!(s.gc(t1 + Duration::from_secs(300)), 1);
        assert_eq!(s.lookup("ub"), Lookup::Unknown);
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn a_pod_seen_again_is_live_again() {
        let s = store();
        let t0 = Instant::now();
        s.apply_pod_event(Event::Init, t0);
        s.apply_pod_event(Event::InitDone, t0);
        s.apply_pod_event(Event::Apply(pod("shop", "a", "ua")), t0);
        s.apply_pod_event(Event::Init, t0);
        s.apply_pod_event(Event::InitDone, t0);
        assert_eq!(s.is_deleted("ua"), Some(true));
        s.apply_pod_event(Event::Apply(pod("shop", "a", "ua")), t0);
        assert_eq!(s.is_deleted("ua"), Some(false));
        assert_eq!(s.gc(t0 + Duration::from_secs(3600)), 0);
    }

    #[test]
    fn static_pods_are_found_by_their_kubelet_uid() {
        let s = store();
        let t0 = Instant::now();
        let mut p = pod("kube-system", "etcd-node-1", "api-uid");
        p.metadata.annotations = Some([(MIRROR_ANNOTATION.to_owned(), "hash".to_owned())].into());
        s.apply_pod_event(Event::Apply(p.clone()), t0);
        assert_eq!(found(&s, "hash").unwrap().uid, "hash");
        assert!(found(&s, "api-uid").is_some());
        s.apply_pod_event(Event::Delete(p), t0);
        s.gc(t0 + Duration::from_secs(300));
        assert_eq!(s.lookup("hash"), Lookup::Unknown);
    }

    #[test]
    fn namespace_labels_follow_the_namespace_watch() {
        let s = store();
        let t0 = Instant::now();
        s.apply_namespace_event(Event::Init);
        s.apply_namespace_event(Event::InitApply(namespace("shop", &[("team.example.com/name", "shop")])));
        s.apply_namespace_event(Event::InitDone);
        s.apply_pod_event(Event::Apply(pod("shop", "a", "ua")), t0);
        s.apply_pod_event(Event::Apply(pod("other", "b", "ub")), t0);
        assert_eq!(found(&s, "ua").unwrap().namespace_labels["team_example_com/name"], "shop");
        assert!(found(&s, "ub").unwrap().namespace_labels.is_empty());

        s.apply_namespace_event(Event::Apply(namespace("shop", &[("tier", "gold")])));
        let a = found(&s, "ua").unwrap();
        assert_eq!(a.namespace_labels.len(), 1);
        assert_eq!(a.namespace_labels["tier"], "gold");

        s.apply_namespace_event(Event::Init);
        s.apply_namespace_event(Event::InitDone);
        assert!(found(&s, "ua").unwrap().namespace_labels.is_empty(), "gone from the relist");
    }

    #[test]
    fn resolve_waits_at_most_wait_for_pod() {
        let s = PodStore::new(&KubernetesConfig { wait_for_pod: Duration::from_secs(2), ..Default::default() });
        let t0 = Instant::now();
        assert_eq!(s.resolve("u1", t0, t0), Resolution::Wait);
        assert_eq!(s.resolve("u1", t0, t0 + Duration::from_millis(1999)), Resolution::Wait);
        assert_eq!(s.resolve("u1", t0, t0 + Duration::from_secs(2)), Resolution::PathOnly(Miss::PendingTimeout));
        s.apply_pod_event(Event::Apply(pod("shop", "web-0", "u1")), t0);
        assert!(matches!(s.resolve("u1", t0, t0 + Duration::from_secs(9)), Resolution::Enrich(_)), "upgraded later");
        s.set_health(Health::Failing);
        assert_eq!(s.resolve("u2", t0, t0), Resolution::PathOnly(Miss::ApiDown), "API down: no waiting");
        s.set_health(Health::Disabled);
        assert_eq!(s.resolve("u2", t0, t0), Resolution::PathOnly(Miss::Unknown));
        assert_eq!(Lookup::Pending.miss(), None);
    }

    #[tokio::test]
    async fn wait_synced_resolves_after_the_first_list() {
        let s = store();
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.wait_synced().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        s.apply_pod_event(Event::Init, Instant::now());
        s.apply_pod_event(Event::InitDone, Instant::now());
        tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
    }
}

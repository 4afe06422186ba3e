//! Kubernetes metadata for records: a node-scoped pod watch and a store keyed by pod uid.
//!
//! - [`run`] watches the pods of this node (and, with `kubernetes.namespace_labels`, namespaces)
//!   into a [`PodStore`]; it never fails and never blocks the read path (invariant 4).
//! - The read path asks [`PodStore::lookup`] per read chunk: [`Lookup::Found`] gives an
//!   `Arc<PodInfo>` the caller may keep while it drains the pod's files; [`Lookup::Pending`] means
//!   wait up to `kubernetes.wait_for_pod`; [`Lookup::Unknown`] and [`Lookup::Unavailable`] mean use
//!   path metadata now (tag `metadata_from_path`, counted in [`EnrichMetrics::misses`]).
//!   [`PodStore::resolve`] applies that policy in one call.
//! - [`render()`] fills the schema's `kubernetes.*` and `container.*` of one record, borrowing from
//!   the `PodInfo`.
//! - [`Filter`] decides which pods and containers are shipped (`filter.*`, pod annotations).

use std::time::Duration;

use globset::Glob;
use serde::{Deserialize, Serialize};
use sluice_common::config::{Problems, Validate};

pub mod filter;
pub mod metrics;
pub mod pod;
pub mod render;
pub mod store;
pub mod watch;

pub use filter::{Excluded, Filter, FilterConfig};
pub use metrics::{EnrichMetrics, Miss};
pub use pod::{ContainerInfo, OwnerInfo, PodInfo};
pub use render::render;
pub use store::{Health, Lookup, PodStore, Resolution};
pub use watch::run;

/// `kubernetes.*`: the pod watch used for enrichment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// Watch pods on this node for metadata; `false` takes metadata from paths only.
    pub enabled: bool,
    /// Path of a kubeconfig file; empty: `KUBECONFIG`, `~/.kube/config`, then the in-cluster
    /// service account (`kube::Config::infer()`).
    pub kubeconfig: String,
    /// How long a file of a pod the store does not know yet ([`Lookup::Pending`]) waits for the
    /// pod before its records go out with path metadata.
    #[serde(with = "humantime_serde")]
    pub wait_for_pod: Duration,
    /// How long a deleted pod's metadata is kept (its files may still be draining). The read path
    /// keeps its own `Arc<PodInfo>` for files it has open, so this only matters for files opened
    /// after the deletion.
    #[serde(with = "humantime_serde")]
    pub deleted_pod_grace: Duration,
    /// Globs of annotation keys copied into `kubernetes.annotations` (opt-in; default none), e.g.
    /// `prometheus.io/*`, `*.example.com/team`.
    pub annotations: Vec<String>,
    /// Also watch namespaces and add their labels as `kubernetes.namespace_labels.*` (needs
    /// get/list/watch on namespaces).
    pub namespace_labels: bool,
    /// Fetch the initial state with a streaming list (a watch with `sendInitialEvents=true`, one
    /// object at a time) instead of a list: less memory on the API server for every (re)list.
    /// Only where the API server offers it (feature `WatchList`; verified on 1.36): a server that
    /// ignores the parameter never marks the end of the initial events, so the store never
    /// becomes synced. Off by default.
    pub streaming_list: bool,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            enabled: true,
            kubeconfig: String::new(),
            wait_for_pod: Duration::from_secs(2),
            deleted_pod_grace: Duration::from_secs(300),
            annotations: Vec::new(),
            namespace_labels: false,
            streaming_list: false,
        }
    }
}

impl Validate for KubernetesConfig {
    fn validate(&self, p: &mut Problems) {
        p.check(
            self.wait_for_pod <= Duration::from_secs(60),
            "wait_for_pod",
            "must be at most 1m (files wait this long for their pod's metadata)",
        );
        p.check(
            self.deleted_pod_grace >= Duration::from_secs(1),
            "deleted_pod_grace",
            "must be at least 1s (deleted pods' files are still read after the deletion)",
        );
        for (i, g) in self.annotations.iter().enumerate() {
            if let Err(err) = Glob::new(g) {
                p.push(&format!("annotations[{i}]"), format!("invalid glob `{g}`: {}", err.kind()));
            }
        }
        if !self.kubeconfig.is_empty() && self.enabled {
            p.check(
                std::path::Path::new(&self.kubeconfig).is_file(),
                "kubeconfig",
                "no such file (empty: in-cluster service account or KUBECONFIG)",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_common::config::load;

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Conf {
        kubernetes: KubernetesConfig,
        filter: FilterConfig,
    }

    impl Validate for Conf {
        fn validate(&self, p: &mut Problems) {
            p.section("kubernetes", &self.kubernetes);
            p.section("filter", &self.filter);
        }
    }

    fn problems(conf: &Conf) -> Vec<String> {
        let mut p = Problems::default();
        conf.validate(&mut p);
        p.into_vec().into_iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let c = KubernetesConfig::default();
        assert!(c.enabled && !c.namespace_labels && c.annotations.is_empty() && c.kubeconfig.is_empty());
        assert_eq!((c.wait_for_pod, c.deleted_pod_grace), (Duration::from_secs(2), Duration::from_secs(300)));
        assert!(problems(&Conf::default()).is_empty());
    }

    #[test]
    fn keys_load_from_yaml_env_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(
            &file,
            "kubernetes:\n  wait_for_pod: 500ms\n  annotations: [\"prometheus.io/*\"]\nfilter:\n  exclude_namespaces: [kube-system]\n",
        )
        .unwrap();
        let env = [("SLUICE_KUBERNETES__DELETED_POD_GRACE".to_owned(), "10m".to_owned())];
        let sets = ["kubernetes.namespace_labels=true".to_owned(), "filter.own_pod_uid=abc".to_owned()];
        let c: Conf = load(Some(&file), env, &sets).unwrap().config;
        assert_eq!(c.kubernetes.wait_for_pod, Duration::from_millis(500));
        assert_eq!(c.kubernetes.deleted_pod_grace, Duration::from_secs(600));
        assert_eq!(c.kubernetes.annotations, ["prometheus.io/*"]);
        assert!(c.kubernetes.namespace_labels);
        assert_eq!(c.filter.exclude_namespaces, ["kube-system"]);
        assert_eq!(c.filter.own_pod_uid, "abc");
    }

    #[test]
    fn problems_name_their_keys() {
        let conf = Conf {
            kubernetes: KubernetesConfig {
                wait_for_pod: Duration::from_secs(120),
                deleted_pod_grace: Duration::ZERO,
                annotations: vec!["ok/*".into(), "[".into()],
                kubeconfig: "/nonexistent/kubeconfig".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        let keys: Vec<String> = problems(&conf).iter().map(|p| p.split(':').next().unwrap().to_owned()).collect();
        assert_eq!(
            keys,
            [
                "kubernetes.wait_for_pod",
                "kubernetes.deleted_pod_grace",
                "kubernetes.annotations[1]",
                "kubernetes.kubeconfig"
            ]
        );
    }
}

//! [`PodInfo`]: what the shipper keeps of one pod, prepared once per watch event so rendering a
//! record only borrows.

use std::sync::Arc;

use globset::GlobSet;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use sluice_common::schema::{StrMap, sanitize_label_key};

/// Pod annotation: `"true"` excludes every container of the pod from shipping.
pub const EXCLUDE_ANNOTATION: &str = "sluice.io/exclude";
/// Pod annotation: comma-separated container names excluded from shipping.
pub const EXCLUDE_CONTAINERS_ANNOTATION: &str = "sluice.io/exclude-containers";
/// Annotation of a mirror pod naming the static pod's kubelet uid (the uid in log paths).
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Metadata of one pod, immutable; the store hands out `Arc<PodInfo>`.
///
/// Label-like maps hold sanitised keys ([`sanitize_label_key`]) so that a record borrows the whole
/// map (`Cow::Borrowed(&info.labels)`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PodInfo {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// The pod uid as the kubelet uses it in log paths: `metadata.uid`, except for the mirror pod
    /// of a static pod, where it is the static pod's uid (annotation `kubernetes.io/config.mirror`).
    pub uid: String,
    /// `metadata.uid` as the API server knows it (differs from [`PodInfo::uid`] for mirror pods).
    pub api_uid: String,
    /// `spec.nodeName`.
    pub node: String,
    /// Labels, keys sanitised.
    pub labels: StrMap,
    /// Annotations matching `kubernetes.annotations`, keys sanitised.
    pub annotations: StrMap,
    /// Labels of the namespace (empty unless `kubernetes.namespace_labels`), keys sanitised.
    pub namespace_labels: Arc<StrMap>,
    /// The owning workload, resolved ([`resolve_owner`]).
    pub owner: Option<OwnerInfo>,
    /// Containers, init containers and ephemeral containers, in spec order.
    pub containers: Vec<ContainerInfo>,
    /// `sluice.io/exclude: "true"`.
    pub exclude_all: bool,
    /// `sluice.io/exclude-containers`, split at commas and trimmed.
    pub exclude_containers: Vec<String>,
}

/// The workload owning a pod (`kubernetes.owner`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OwnerInfo {
    /// `Deployment`, `StatefulSet`, `DaemonSet`, `CronJob`, `Job`, `ReplicaSet`, `Node`, …
    pub kind: String,
    /// Name of the workload.
    pub name: String,
}

/// One container of a pod, from its spec and its status.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerInfo {
    /// Container name (the directory name in the log path).
    pub name: String,
    /// Image as the spec names it (status image when the spec has none).
    pub image: Option<String>,
    /// `imageID` from the status (empty values dropped).
    pub image_id: Option<String>,
    /// `containerID` from the status, with its `<runtime>://` prefix.
    pub container_id: Option<String>,
    /// `containerID` of the previous instance (`lastState.terminated.containerID`), with prefix.
    pub last_container_id: Option<String>,
    /// `restartCount` from the status; `None` before the container has a status.
    pub restart_count: Option<u32>,
}

impl ContainerInfo {
    /// `(runtime, id)` of the container instance that writes `<restart>.log`: the current one when
    /// `restart` is `None` or the current restart count, the previous one for the count before it,
    /// otherwise unknown.
    pub fn runtime_id(&self, restart: Option<u32>) -> Option<(&str, &str)> {
        let raw = match (restart, self.restart_count) {
            (None, _) => self.container_id.as_deref(),
            (Some(r), Some(current)) if r == current => self.container_id.as_deref(),
            (Some(r), Some(current)) if r.checked_add(1) == Some(current) => self.last_container_id.as_deref(),
            _ => None,
        }?;
        split_container_id(raw)
    }
}

/// Splits `containerd://abc` into `("containerd", "abc")` (also `docker://`, `cri-o://`); an id
/// without a prefix has an empty runtime. Empty ids are `None`.
pub fn split_container_id(raw: &str) -> Option<(&str, &str)> {
    let (runtime, id) = raw.split_once("://").unwrap_or(("", raw));
    (!id.is_empty()).then_some((runtime, id))
}

impl PodInfo {
    /// Builds the metadata of `pod`, keeping annotations whose key matches `annotations` and the
    /// given namespace labels.
    pub fn from_pod(pod: &Pod, annotations: &GlobSet, namespace_labels: Arc<StrMap>) -> PodInfo {
        let meta = &pod.metadata;
        let empty = Default::default();
        let raw_labels = meta.labels.as_ref().unwrap_or(&empty);
        let raw_annotations = meta.annotations.as_ref().unwrap_or(&empty);
        let api_uid = meta.uid.clone().unwrap_or_default();
        let uid = raw_annotations
            .get(MIRROR_ANNOTATION)
            .filter(|v| !v.is_empty())
            .cloned()
            .unwrap_or_else(|| api_uid.clone());
        let owner = resolve_owner(
            meta.owner_references.as_deref().unwrap_or_default(),
            raw_labels.get("pod-template-hash").map(String::as_str),
        );
        let exclude_all =
            raw_annotations.get(EXCLUDE_ANNOTATION).is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        let exclude_containers = raw_annotations
            .get(EXCLUDE_CONTAINERS_ANNOTATION)
            .map(|v| v.split(',').map(str::trim).filter(|c| !c.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default();
        PodInfo {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            uid,
            api_uid,
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default(),
            labels: sanitize_map(raw_labels.iter()),
            annotations: sanitize_map(raw_annotations.iter().filter(|(k, _)| annotations.is_match(k.as_str()))),
            namespace_labels,
            owner,
            containers: containers(pod),
            exclude_all,
            exclude_containers,
        }
    }

    /// The container named `name`.
    pub fn container(&self, name: &str) -> Option<&ContainerInfo> {
        self.containers.iter().find(|c| c.name == name)
    }

    /// Whether the pod's annotations exclude `container` from shipping
    /// ([`EXCLUDE_ANNOTATION`], [`EXCLUDE_CONTAINERS_ANNOTATION`]).
    pub fn excluded(&self, container: &str) -> bool {
        self.exclude_all || self.exclude_containers.iter().any(|c| c == container)
    }
}

/// Sanitises keys ([`sanitize_label_key`]) into an owned map.
pub fn sanitize_map<'k>(items: impl Iterator<Item = (&'k String, &'k String)>) -> StrMap {
    items.map(|(k, v)| (sanitize_label_key(k).into_owned(), v.clone())).collect()
}

/// Resolves the workload owning a pod from its owner references and its `pod-template-hash` label:
/// - a `ReplicaSet` named `<deployment>-<hash>` whose `<hash>` equals the pod's `pod-template-hash`
///   label is owned by `Deployment <deployment>`; any other `ReplicaSet` stays a `ReplicaSet`;
/// - a `Job` named `<cronjob>-<8 or more digits>` is owned by `CronJob <cronjob>` (the CronJob
///   controller names its Jobs after the scheduled time in minutes since the epoch, 8 digits since
///   1989; a shorter number, as in a hand-made `migrate-2`, stays a `Job`);
/// - `StatefulSet`, `DaemonSet` and any other kind: the controller reference itself.
///
/// Only the controller reference counts (`controller: true`); without one there is no owner.
pub fn resolve_owner(refs: &[OwnerReference], pod_template_hash: Option<&str>) -> Option<OwnerInfo> {
    let controller = refs.iter().find(|r| r.controller == Some(true))?;
    let (kind, name) = (controller.kind.as_str(), controller.name.as_str());
    let resolved = match kind {
        "ReplicaSet" => pod_template_hash
            .filter(|h| !h.is_empty())
            .and_then(|h| name.strip_suffix(h)?.strip_suffix('-'))
            .filter(|d| !d.is_empty())
            .map(|d| ("Deployment", d)),
        "Job" => name
            .rsplit_once('-')
            .filter(|(c, digits)| !c.is_empty() && digits.len() >= 8 && digits.bytes().all(|b| b.is_ascii_digit()))
            .map(|(c, _)| ("CronJob", c)),
        _ => None,
    };
    let (kind, name) = resolved.unwrap_or((kind, name));
    Some(OwnerInfo { kind: kind.to_owned(), name: name.to_owned() })
}

fn containers(pod: &Pod) -> Vec<ContainerInfo> {
    let mut out = Vec::new();
    if let Some(spec) = &pod.spec {
        let init = spec.init_containers.iter().flatten();
        for c in init.chain(&spec.containers) {
            out.push(ContainerInfo { name: c.name.clone(), image: c.image.clone(), ..Default::default() });
        }
        for c in spec.ephemeral_containers.iter().flatten() {
            out.push(ContainerInfo { name: c.name.clone(), image: c.image.clone(), ..Default::default() });
        }
    }
    if let Some(status) = &pod.status {
        let all = [&status.init_container_statuses, &status.container_statuses, &status.ephemeral_container_statuses];
        for s in all.into_iter().flatten().flatten() {
            let i = match out.iter().position(|c| c.name == s.name) {
                Some(i) => i,
                None => {
                    out.push(ContainerInfo { name: s.name.clone(), ..Default::default() });
                    out.len() - 1
                }
            };
            apply_status(&mut out[i], s);
        }
    }
    out
}

fn apply_status(c: &mut ContainerInfo, s: &ContainerStatus) {
    let non_empty = |v: &str| (!v.is_empty()).then(|| v.to_owned());
    if c.image.as_deref().is_none_or(str::is_empty) {
        c.image = non_empty(&s.image);
    }
    c.image_id = non_empty(&s.image_id);
    c.container_id = s.container_id.as_deref().and_then(non_empty);
    c.last_container_id = s
        .last_state
        .as_ref()
        .and_then(|l| l.terminated.as_ref())
        .and_then(|t| t.container_id.as_deref())
        .and_then(non_empty);
    c.restart_count = u32::try_from(s.restart_count).ok();
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use globset::{Glob, GlobSetBuilder};
    use k8s_openapi::api::core::v1::{
        Container, ContainerState, ContainerStateTerminated, ContainerStatus, PodSpec, PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    pub(crate) fn owner_ref(kind: &str, name: &str, controller: bool) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: kind.into(),
            name: name.into(),
            uid: "owner-uid".into(),
            controller: Some(controller),
            block_owner_deletion: None,
        }
    }

    /// A pod on `node-1` with one container `app` (and an init container `init`).
    pub(crate) fn pod(ns: &str, name: &str, uid: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                uid: Some(uid.into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("node-1".into()),
                init_containers: Some(vec![Container {
                    name: "init".into(),
                    image: Some("busybox:1".into()),
                    ..Default::default()
                }]),
                containers: vec![Container {
                    name: "app".into(),
                    image: Some("nginx:1.27".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: None,
        }
    }

    pub(crate) fn globs(patterns: &[&str]) -> GlobSet {
        let mut b = GlobSetBuilder::new();
        for p in patterns {
            b.add(Glob::new(p).unwrap());
        }
        b.build().unwrap()
    }

    fn info(pod: &Pod) -> PodInfo {
        PodInfo::from_pod(pod, &GlobSet::empty(), Arc::default())
    }

    fn owner(refs: &[OwnerReference], hash: Option<&str>) -> Option<(String, String)> {
        resolve_owner(refs, hash).map(|o| (o.kind, o.name))
    }

    fn pair(kind: &str, name: &str) -> Option<(String, String)> {
        Some((kind.into(), name.into()))
    }

    #[test]
    fn replicaset_with_matching_hash_is_its_deployment() {
        let refs = [owner_ref("ReplicaSet", "web-api-5d9c7b8f6", true)];
        assert_eq!(owner(&refs, Some("5d9c7b8f6")), pair("Deployment", "web-api"));
    }

    #[test]
    fn replicaset_without_matching_hash_stays_a_replicaset() {
        let refs = [owner_ref("ReplicaSet", "web-api-5d9c7b8f6", true)];
        assert_eq!(owner(&refs, Some("0000000")), pair("ReplicaSet", "web-api-5d9c7b8f6"));
        assert_eq!(owner(&refs, None), pair("ReplicaSet", "web-api-5d9c7b8f6"));
        assert_eq!(owner(&refs, Some("")), pair("ReplicaSet", "web-api-5d9c7b8f6"));
        // The hash must be a whole `-<hash>` suffix.
        let refs = [owner_ref("ReplicaSet", "web9c7b8f6", true)];
        assert_eq!(owner(&refs, Some("9c7b8f6")), pair("ReplicaSet", "web9c7b8f6"));
        let refs = [owner_ref("ReplicaSet", "-abc", true)];
        assert_eq!(owner(&refs, Some("abc")), pair("ReplicaSet", "-abc"));
    }

    #[test]
    fn job_of_a_cronjob_is_the_cronjob() {
        let refs = [owner_ref("Job", "nightly-backup-29412345", true)];
        assert_eq!(owner(&refs, None), pair("CronJob", "nightly-backup"));
        let refs = [owner_ref("Job", "db-migrate-2", true)];
        assert_eq!(owner(&refs, None), pair("Job", "db-migrate-2"));
        let refs = [owner_ref("Job", "backup-2941234a", true)];
        assert_eq!(owner(&refs, None), pair("Job", "backup-2941234a"));
        let refs = [owner_ref("Job", "29412345", true)];
        assert_eq!(owner(&refs, None), pair("Job", "29412345"));
    }

    #[test]
    fn statefulset_daemonset_and_other_controllers_are_themselves() {
        assert_eq!(owner(&[owner_ref("StatefulSet", "db", true)], None), pair("StatefulSet", "db"));
        assert_eq!(owner(&[owner_ref("DaemonSet", "sluice", true)], Some("x")), pair("DaemonSet", "sluice"));
        assert_eq!(owner(&[owner_ref("Node", "node-1", true)], None), pair("Node", "node-1"));
        assert_eq!(owner(&[owner_ref("Rollout", "canary", true)], None), pair("Rollout", "canary"));
    }

    #[test]
    fn only_the_controller_reference_is_the_owner() {
        assert_eq!(owner(&[], None), None);
        assert_eq!(owner(&[owner_ref("ConfigMap", "x", false)], None), None);
        let refs = [owner_ref("ConfigMap", "x", false), owner_ref("StatefulSet", "db", true)];
        assert_eq!(owner(&refs, None), pair("StatefulSet", "db"));
    }

    #[test]
    fn labels_are_sanitised_and_annotations_allow_listed() {
        let mut p = pod("shop", "web-0", "u1");
        p.metadata.labels = Some(
            [("app.kubernetes.io/name", "web"), ("app", "web"), ("pod-template-hash", "abc")]
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        );
        p.metadata.annotations = Some(
            [("prometheus.io/scrape", "true"), ("team.example.com/owner", "ops"), ("secret/x", "no")]
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        );
        let i = PodInfo::from_pod(&p, &globs(&["prometheus.io/*", "*.example.com/owner"]), Arc::default());
        let labels: Vec<(&str, &str)> = i.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(labels, [("app", "web"), ("app_kubernetes_io/name", "web"), ("pod-template-hash", "abc")]);
        let ann: Vec<(&str, &str)> = i.annotations.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(ann, [("prometheus_io/scrape", "true"), ("team_example_com/owner", "ops")]);
        // No allow-list: no annotations at all.
        assert!(info(&p).annotations.is_empty());
    }

    #[test]
    fn containers_merge_spec_and_status() {
        let mut p = pod("shop", "web-0", "u1");
        p.status = Some(PodStatus {
            container_statuses: Some(vec![ContainerStatus {
                name: "app".into(),
                image: "docker.io/library/nginx:1.27".into(),
                image_id: "docker.io/library/nginx@sha256:ab".into(),
                container_id: Some("containerd://c2".into()),
                restart_count: 2,
                last_state: Some(ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        container_id: Some("containerd://c1".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            init_container_statuses: Some(vec![ContainerStatus {
                name: "init".into(),
                image: "busybox:1".into(),
                image_id: String::new(),
                container_id: Some("cri-o://i1".into()),
                ..Default::default()
            }]),
            ..Default::default()
        });
        let i = info(&p);
        assert_eq!(i.containers.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["init", "app"]);
        let app = i.container("app").unwrap();
        assert_eq!(app.image.as_deref(), Some("nginx:1.27"), "spec image wins");
        assert_eq!(app.image_id.as_deref(), Some("docker.io/library/nginx@sha256:ab"));
        assert_eq!(app.restart_count, Some(2));
        assert_eq!(app.runtime_id(None), Some(("containerd", "c2")));
        assert_eq!(app.runtime_id(Some(2)), Some(("containerd", "c2")));
        assert_eq!(app.runtime_id(Some(1)), Some(("containerd", "c1")));
        assert_eq!(app.runtime_id(Some(0)), None);
        assert_eq!(app.runtime_id(Some(3)), None);
        let init = i.container("init").unwrap();
        assert_eq!(init.image_id, None);
        assert_eq!(init.runtime_id(Some(0)), Some(("cri-o", "i1")));
        assert_eq!(i.node, "node-1");
    }

    #[test]
    fn container_ids_split_runtime_prefixes() {
        assert_eq!(split_container_id("containerd://abc"), Some(("containerd", "abc")));
        assert_eq!(split_container_id("docker://abc"), Some(("docker", "abc")));
        assert_eq!(split_container_id("cri-o://abc"), Some(("cri-o", "abc")));
        assert_eq!(split_container_id("abc"), Some(("", "abc")));
        assert_eq!(split_container_id("containerd://"), None);
        assert_eq!(split_container_id(""), None);
    }

    #[test]
    fn exclusion_annotations() {
        let mut p = pod("shop", "web-0", "u1");
        assert!(!info(&p).excluded("app"));
        p.metadata.annotations = Some([(EXCLUDE_ANNOTATION.to_owned(), "True".to_owned())].into());
        assert!(info(&p).excluded("app") && info(&p).excluded("init"));
        p.metadata.annotations = Some([(EXCLUDE_ANNOTATION.to_owned(), "false".to_owned())].into());
        assert!(!info(&p).excluded("app"));
        p.metadata.annotations =
            Some([(EXCLUDE_CONTAINERS_ANNOTATION.to_owned(), " istio-proxy, init ,".to_owned())].into());
        let i = info(&p);
        assert!(i.excluded("istio-proxy") && i.excluded("init"));
        assert!(!i.excluded("app") && !i.excluded(""));
    }

    #[test]
    fn mirror_pods_use_the_static_pod_uid() {
        let mut p = pod("kube-system", "etcd-node-1", "api-uid");
        p.metadata.annotations = Some([(MIRROR_ANNOTATION.to_owned(), "hash-uid".to_owned())].into());
        p.metadata.owner_references = Some(vec![owner_ref("Node", "node-1", true)]);
        let i = info(&p);
        assert_eq!((i.uid.as_str(), i.api_uid.as_str()), ("hash-uid", "api-uid"));
        assert_eq!(i.owner, Some(OwnerInfo { kind: "Node".into(), name: "node-1".into() }));
    }
}

//! Which pods and containers are shipped: namespace globs, the shipper's own pod, and the pod
//! annotations `sluice.io/exclude` / `sluice.io/exclude-containers`.
//!
//! Decisions need only path metadata (namespace, pod name, uid, container) when the pod is not
//! known; the annotations are applied once the pod watch knows the pod.

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};
use sluice_common::config::{Problems, Validate};

use super::pod::PodInfo;
use crate::discover::PodPath;

/// Why a pod or container is not shipped (the `reason` label of the filter metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Excluded {
    /// Pod annotation `sluice.io/exclude: "true"`.
    Annotation,
    /// The container is listed in the pod annotation `sluice.io/exclude-containers`.
    Container,
    /// The namespace matches `filter.exclude_namespaces` or no `filter.include_namespaces`.
    Namespace,
    /// The shipper's own pod (`filter.exclude_own_pod`).
    OwnPod,
}

impl Excluded {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Excluded::Annotation => "annotation",
            Excluded::Container => "container",
            Excluded::Namespace => "namespace",
            Excluded::OwnPod => "own_pod",
        }
    }
}

/// `filter.*`: which pods and containers are shipped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilterConfig {
    /// Globs on the namespace: a pod is shipped only when its namespace matches one.
    pub include_namespaces: Vec<String>,
    /// Globs on the namespace: pods of a matching namespace are never shipped (wins over include).
    pub exclude_namespaces: Vec<String>,
    /// Honour the pod annotations `sluice.io/exclude: "true"` and
    /// `sluice.io/exclude-containers: "a,b"`.
    pub annotations: bool,
    /// Do not ship the shipper's own logs (they would describe, and under a failing output
    /// multiply, the shipping itself).
    pub exclude_own_pod: bool,
    /// The shipper's pod uid; default the `POD_UID` environment variable (downward API
    /// `metadata.uid`). Matched against the uid in log paths.
    pub own_pod_uid: String,
    /// The shipper's pod as `<namespace>/<name>`; default `POD_NAMESPACE/POD_NAME` (downward API)
    /// when both are set. Used when the uid is not given.
    pub own_pod: String,
}

impl Default for FilterConfig {
    fn default() -> Self {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let own_pod = match (env("POD_NAMESPACE"), env("POD_NAME")) {
            (Some(ns), Some(name)) => format!("{ns}/{name}"),
            _ => String::new(),
        };
        FilterConfig {
            include_namespaces: vec!["*".into()],
            exclude_namespaces: Vec::new(),
            annotations: true,
            exclude_own_pod: true,
            own_pod_uid: env("POD_UID").unwrap_or_default(),
            own_pod,
        }
    }
}

impl Validate for FilterConfig {
    fn validate(&self, p: &mut Problems) {
        p.check(
            !self.include_namespaces.is_empty(),
            "include_namespaces",
            "must not be empty (use [\"*\"] for every namespace)",
        );
        for (key, globs) in
            [("include_namespaces", &self.include_namespaces), ("exclude_namespaces", &self.exclude_namespaces)]
        {
            for (i, g) in globs.iter().enumerate() {
                if let Err(err) = Glob::new(g) {
                    p.push(&format!("{key}[{i}]"), format!("invalid glob `{g}`: {}", err.kind()));
                }
            }
        }
        if !self.own_pod.is_empty() {
            let ok = self
                .own_pod
                .split_once('/')
                .is_some_and(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains('/'));
            p.check(ok, "own_pod", "must be <namespace>/<name>");
        }
    }
}

/// The compiled [`FilterConfig`].
#[derive(Debug, Clone)]
pub struct Filter {
    include: GlobSet,
    exclude: GlobSet,
    annotations: bool,
    own_uid: Option<String>,
    own_pod: Option<(String, String)>,
}

impl Filter {
    /// Compiles `config` (validated: invalid globs are an error here).
    pub fn new(config: &FilterConfig) -> Result<Filter, globset::Error> {
        let build = |globs: &[String]| -> Result<GlobSet, globset::Error> {
            let mut b = GlobSetBuilder::new();
            for g in globs {
                b.add(Glob::new(g)?);
            }
            b.build()
        };
        let own = config.exclude_own_pod;
        Ok(Filter {
            include: build(&config.include_namespaces)?,
            exclude: build(&config.exclude_namespaces)?,
            annotations: config.annotations,
            own_uid: (own && !config.own_pod_uid.is_empty()).then(|| config.own_pod_uid.clone()),
            own_pod: config.own_pod.split_once('/').filter(|_| own).map(|(ns, name)| (ns.to_owned(), name.to_owned())),
        })
    }

    /// The decision from path metadata alone (namespace globs, own pod): usable before, or
    /// without, the pod watch.
    pub fn check_path(&self, namespace: &str, pod_name: &str, pod_uid: &str) -> Option<Excluded> {
        let own_uid = self.own_uid.as_deref().is_some_and(|u| u == pod_uid);
        let own_name = self.own_pod.as_ref().is_some_and(|(ns, name)| ns == namespace && name == pod_name);
        if own_uid || own_name {
            return Some(Excluded::OwnPod);
        }
        if self.exclude.is_match(namespace) || !self.include.is_match(namespace) {
            return Some(Excluded::Namespace);
        }
        None
    }

    /// The decision for the file of `path`'s container: [`Filter::check_path`], then the pod's
    /// annotations when the pod is known (`pod`). `None`: ship it.
    pub fn check(&self, path: &PodPath, pod: Option<&PodInfo>) -> Option<Excluded> {
        self.check_path(&path.namespace, &path.pod, &path.uid).or_else(|| self.check_pod(pod?, &path.container))
    }

    /// The annotation decision for `container` of a known pod.
    pub fn check_pod(&self, pod: &PodInfo, container: &str) -> Option<Excluded> {
        if !self.annotations {
            None
        } else if pod.exclude_all {
            Some(Excluded::Annotation)
        } else if pod.excluded(container) {
            Some(Excluded::Container)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::pod::tests::pod;
    use crate::enrich::pod::{EXCLUDE_ANNOTATION, EXCLUDE_CONTAINERS_ANNOTATION};
    use globset::GlobSet;
    use std::sync::Arc;

    fn config() -> FilterConfig {
        FilterConfig {
            include_namespaces: vec!["*".into()],
            exclude_namespaces: Vec::new(),
            annotations: true,
            exclude_own_pod: true,
            own_pod_uid: String::new(),
            own_pod: String::new(),
        }
    }

    fn path(ns: &str, pod: &str, uid: &str, container: &str) -> PodPath {
        PodPath { namespace: ns.into(), pod: pod.into(), uid: uid.into(), container: container.into(), restart: 0 }
    }

    fn annotated(annotations: &[(&str, &str)]) -> PodInfo {
        let mut p = pod("shop", "web-0", "u1");
        p.metadata.annotations = Some(annotations.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect());
        PodInfo::from_pod(&p, &GlobSet::empty(), Arc::default())
    }

    #[test]
    fn annotation_excludes_every_container() {
        let f = Filter::new(&config()).unwrap();
        let info = annotated(&[(EXCLUDE_ANNOTATION, "true")]);
        assert_eq!(f.check(&path("shop", "web-0", "u1", "app"), Some(&info)), Some(Excluded::Annotation));
        assert_eq!(f.check(&path("shop", "web-0", "u1", "init"), Some(&info)), Some(Excluded::Annotation));
        // Unknown pod: the annotation cannot be known yet.
        assert_eq!(f.check(&path("shop", "web-0", "u1", "app"), None), None);
        let off = Filter::new(&FilterConfig { annotations: false, ..config() }).unwrap();
        assert_eq!(off.check(&path("shop", "web-0", "u1", "app"), Some(&info)), None);
    }

    #[test]
    fn container_list_excludes_only_those() {
        let f = Filter::new(&config()).unwrap();
        let info = annotated(&[(EXCLUDE_CONTAINERS_ANNOTATION, "istio-proxy,init")]);
        assert_eq!(f.check(&path("shop", "web-0", "u1", "istio-proxy"), Some(&info)), Some(Excluded::Container));
        assert_eq!(f.check(&path("shop", "web-0", "u1", "init"), Some(&info)), Some(Excluded::Container));
        assert_eq!(f.check(&path("shop", "web-0", "u1", "app"), Some(&info)), None);
    }

    #[test]
    fn namespace_globs_from_the_path_alone() {
        let f = Filter::new(&FilterConfig {
            include_namespaces: vec!["shop*".into(), "kube-system".into()],
            exclude_namespaces: vec!["shop-test-*".into()],
            ..config()
        })
        .unwrap();
        assert_eq!(f.check(&path("shop", "a", "u", "c"), None), None);
        assert_eq!(f.check(&path("shop-prod", "a", "u", "c"), None), None);
        assert_eq!(f.check(&path("kube-system", "a", "u", "c"), None), None);
        assert_eq!(f.check(&path("shop-test-1", "a", "u", "c"), None), Some(Excluded::Namespace));
        assert_eq!(f.check(&path("default", "a", "u", "c"), None), Some(Excluded::Namespace));
        assert_eq!(f.check_path("default", "a", "u"), Some(Excluded::Namespace));
    }

    #[test]
    fn own_pod_by_uid_or_name() {
        let by_uid = Filter::new(&FilterConfig { own_pod_uid: "me".into(), ..config() }).unwrap();
        assert_eq!(by_uid.check(&path("sluice", "shipper-x", "me", "shipper"), None), Some(Excluded::OwnPod));
        assert_eq!(by_uid.check(&path("sluice", "shipper-y", "other", "shipper"), None), None);
        let by_name = Filter::new(&FilterConfig { own_pod: "sluice/shipper-x".into(), ..config() }).unwrap();
        assert_eq!(by_name.check(&path("sluice", "shipper-x", "u", "shipper"), None), Some(Excluded::OwnPod));
        assert_eq!(by_name.check(&path("other", "shipper-x", "u", "shipper"), None), None);
        let off = Filter::new(&FilterConfig {
            exclude_own_pod: false,
            own_pod_uid: "me".into(),
            own_pod: "sluice/shipper-x".into(),
            ..config()
        })
        .unwrap();
        assert_eq!(off.check(&path("sluice", "shipper-x", "me", "shipper"), None), None);
        // Own pod wins over namespace reasons.
        let both =
            Filter::new(&FilterConfig { own_pod_uid: "me".into(), exclude_namespaces: vec!["*".into()], ..config() })
                .unwrap();
        assert_eq!(both.check_path("sluice", "x", "me"), Some(Excluded::OwnPod));
    }

    #[test]
    fn validation_names_keys() {
        let mut p = Problems::default();
        FilterConfig {
            include_namespaces: vec![],
            exclude_namespaces: vec!["[".into()],
            own_pod: "nope".into(),
            ..config()
        }
        .validate(&mut p);
        let keys: Vec<String> = p.into_vec().into_iter().map(|p| p.path).collect();
        assert_eq!(keys, ["include_namespaces", "exclude_namespaces[0]", "own_pod"]);
        let mut p = Problems::default();
        FilterConfig::default().validate(&mut p);
        assert!(p.into_vec().is_empty());
    }
}

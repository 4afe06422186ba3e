//! Fills the schema's `kubernetes.*` and `container.*` for one record from a [`PodInfo`], borrowing
//! every string and map from it (no allocation; serde serialises the borrowed values).

use std::borrow::Cow;

use sluice_common::schema::{Container, Image, Kubernetes, KubernetesContainer, Name, Owner, Pod};

use super::pod::PodInfo;

/// `kubernetes.*` and `container.*` of a record of `container` in `pod`, where `restart` is the `N`
/// of the file's `N.log` when known (the path is exact per file; the pod status only knows the
/// current instance):
/// - `kubernetes.container.restart_count` = `restart`, else the status' restart count;
/// - `container.id`/`container.runtime` are the instance that wrote `N.log` (the current one, or
///   the previous one for `N` = current − 1), omitted when unknown;
/// - `container.image.name`/`.id` from the spec and status; `container` is `None` when nothing is
///   known of the container (not in the pod's spec or status).
///
/// `kubernetes.node.name` is the pod's `spec.nodeName`; `host.name` stays the caller's.
pub fn render<'a>(
    pod: &'a PodInfo,
    container: &'a str,
    restart: Option<u32>,
) -> (Kubernetes<'a>, Option<Container<'a>>) {
    let info = pod.container(container);
    let kubernetes = Kubernetes {
        namespace: Cow::Borrowed(&pod.namespace),
        pod: Pod { name: Cow::Borrowed(&pod.name), uid: Cow::Borrowed(&pod.uid) },
        container: KubernetesContainer {
            name: Cow::Borrowed(container),
            restart_count: restart.or_else(|| info.and_then(|c| c.restart_count)),
        },
        node: Name { name: Cow::Borrowed(&pod.node) },
        owner: pod.owner.as_ref().map(|o| Owner { kind: Cow::Borrowed(&o.kind), name: Cow::Borrowed(&o.name) }),
        labels: Cow::Borrowed(&pod.labels),
        annotations: Cow::Borrowed(&pod.annotations),
        namespace_labels: Cow::Borrowed(&*pod.namespace_labels),
    };
    let runtime = info.and_then(|c| {
        let image = c
            .image
            .as_deref()
            .map(|name| Image { name: Cow::Borrowed(name), id: c.image_id.as_deref().map(Cow::Borrowed) });
        let (runtime, id) = c.runtime_id(restart).unzip();
        let container = Container {
            id: id.map(Cow::Borrowed),
            image,
            runtime: runtime.filter(|r| !r.is_empty()).map(Cow::Borrowed),
        };
        (container != Container::default()).then_some(container)
    });
    (kubernetes, runtime)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::pod::tests::{owner_ref, pod};
    use crate::enrich::pod::{ContainerInfo, OwnerInfo};
    use globset::GlobSet;
    use serde_json::json;
    use std::sync::Arc;

    fn info() -> PodInfo {
        let mut p = pod("shop", "web-7d9f-abcde", "u1");
        p.metadata.labels = Some(
            [("app.kubernetes.io/name", "web"), ("pod-template-hash", "7d9f")]
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        );
        p.metadata.owner_references = Some(vec![owner_ref("ReplicaSet", "web-7d9f", true)]);
        let mut info = PodInfo::from_pod(&p, &GlobSet::empty(), Arc::new([("team".into(), "a".into())].into()));
        info.containers[1] = ContainerInfo {
            name: "app".into(),
            image: Some("nginx:1.27".into()),
            image_id: Some("nginx@sha256:ab".into()),
            container_id: Some("containerd://c3".into()),
            last_container_id: Some("containerd://c2".into()),
            restart_count: Some(3),
        };
        info
    }

    #[test]
    fn renders_every_field_borrowed() {
        let info = info();
        let (k, c) = render(&info, "app", Some(3));
        assert!(matches!(k.labels, Cow::Borrowed(_)) && matches!(k.namespace, Cow::Borrowed(_)));
        let value = json!({"kubernetes": k, "container": c});
        assert_eq!(
            value,
            json!({
                "kubernetes": {
                    "namespace": "shop",
                    "pod": {"name": "web-7d9f-abcde", "uid": "u1"},
                    "container": {"name": "app", "restart_count": 3},
                    "node": {"name": "node-1"},
                    "owner": {"kind": "Deployment", "name": "web"},
                    "labels": {"app_kubernetes_io/name": "web", "pod-template-hash": "7d9f"},
                    "namespace_labels": {"team": "a"},
                },
                "container": {
                    "id": "c3",
                    "image": {"name": "nginx:1.27", "id": "nginx@sha256:ab"},
                    "runtime": "containerd",
                },
            })
        );
        assert_eq!(info.owner, Some(OwnerInfo { kind: "Deployment".into(), name: "web".into() }));
    }

    #[test]
    fn container_id_follows_the_file_restart() {
        let info = info();
        let id = |restart| render(&info, "app", restart).1.and_then(|c| c.id).map(Cow::into_owned);
        assert_eq!(id(Some(3)).as_deref(), Some("c3"));
        assert_eq!(id(Some(2)).as_deref(), Some("c2"));
        assert_eq!(id(Some(1)), None);
        assert_eq!(id(None).as_deref(), Some("c3"));
        let (k, c) = render(&info, "app", Some(1));
        assert_eq!(k.container.restart_count, Some(1), "the path's restart wins");
        assert_eq!(c.unwrap().image.unwrap().name, "nginx:1.27");
        assert_eq!(render(&info, "app", None).0.container.restart_count, Some(3));
    }

    #[test]
    fn unknown_containers_have_no_runtime_part() {
        let info = info();
        let (k, c) = render(&info, "sidecar", Some(0));
        assert_eq!(k.container.name, "sidecar");
        assert_eq!(k.container.restart_count, Some(0));
        assert_eq!(c, None);
        // A container with a spec image but no status yet: image only.
        let (_, c) = render(&info, "init", None);
        let c = c.unwrap();
        assert_eq!((c.id, c.runtime), (None, None));
        assert_eq!(c.image.unwrap().name, "busybox:1");
    }

    #[test]
    fn optional_parts_are_omitted() {
        let p = pod("shop", "solo", "u9");
        let info = PodInfo::from_pod(&p, &GlobSet::empty(), Arc::default());
        let (k, _) = render(&info, "app", None);
        let value = serde_json::to_value(&k).unwrap();
        for absent in ["owner", "labels", "annotations", "namespace_labels"] {
            assert!(value.get(absent).is_none(), "{absent}");
        }
        assert!(value["container"].get("restart_count").is_none());
    }
}

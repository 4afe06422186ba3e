//! Proof that the Kubernetes harness runs a real control plane (etcd + kube-apiserver from
//! `./dev k8s build`): pods bound to nodes, field selectors, the shipper's RBAC, API server
//! stop/start with the same clients, and 410 Gone after an etcd compaction making a kube-runtime
//! watcher relist.

use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube::runtime::watcher;
use sluice_integration_tests::kube::{ControlPlane, KubeUser, TestContainerStatus, TestPod};
use tokio::sync::mpsc;

fn status_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

#[tokio::test]
async fn pods_on_nodes_field_selector_status_and_rbac() {
    let cp = ControlPlane::start().await;
    cp.create_namespace("shop").await;

    let web = TestPod::new("shop", "web-7d4b9c8f6d-x2x9q", "node-a")
        .label("app", "web")
        .label("app.kubernetes.io/part-of", "shop")
        .annotation("sluice.io/exclude", "false")
        .owner("ReplicaSet", "web-7d4b9c8f6d")
        .container("nginx", "nginx:1.27")
        .container("sidecar", "busybox:1.36");
    let created = cp.create_pod(&web).await;
    assert!(created.metadata.uid.is_some());
    let owner = &created.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("ReplicaSet", "web-7d4b9c8f6d", Some(true))
    );
    cp.create_pod(&TestPod::new("shop", "db-0", "node-b").owner("StatefulSet", "db")).await;

    // Status through the status subresource.
    let updated = cp
        .set_container_statuses(
            "shop",
            "web-7d4b9c8f6d-x2x9q",
            &[
                TestContainerStatus::running("nginx", "nginx:1.27", "containerd://0123abcd").restart_count(2),
                TestContainerStatus::running("sidecar", "busybox:1.36", "containerd://4567ef01"),
            ],
        )
        .await;
    let statuses = updated.status.as_ref().unwrap().container_statuses.as_ref().unwrap();
    assert_eq!(statuses.len(), 2);
    assert_eq!(statuses[0].container_id.as_deref(), Some("containerd://0123abcd"));
    assert_eq!(statuses[0].restart_count, 2);
    assert_eq!(updated.status.as_ref().unwrap().phase.as_deref(), Some("Running"));

    // The shipper lists and watches the pods of its node only.
    let shipper: Api<Pod> = Api::all(cp.client(KubeUser::Shipper).await);
    let on_a = shipper.list(&ListParams::default().fields("spec.nodeName=node-a")).await.unwrap();
    let names: Vec<_> = on_a.items.iter().map(|p| p.metadata.name.clone().unwrap()).collect();
    assert_eq!(names, ["web-7d4b9c8f6d-x2x9q"]);
    let mut stream = shipper
        .watch(
            &WatchParams::default().fields("spec.nodeName=node-a").timeout(5),
            &on_a.metadata.resource_version.unwrap(),
        )
        .await
        .unwrap()
        .boxed();
    cp.delete_pod("shop", "web-7d4b9c8f6d-x2x9q").await;
    cp.create_pod(&TestPod::new("shop", "other-on-b", "node-b")).await;
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.unwrap().unwrap().unwrap();
        match event {
            WatchEvent::Deleted(pod) => {
                assert_eq!(pod.metadata.name.as_deref(), Some("web-7d4b9c8f6d-x2x9q"));
                break;
            }
            // Deletion first sets metadata.deletionTimestamp (an update), then removes the object.
            WatchEvent::Modified(pod) => assert!(pod.metadata.deletion_timestamp.is_some(), "{pod:?}"),
            other => panic!("expected the deletion, got {other:?}"),
        }
    }

    // Least privilege: no secrets for the shipper; nothing for nobody.
    let secrets: Api<Secret> = Api::namespaced(cp.client(KubeUser::Shipper).await, "shop");
    assert_eq!(secrets.list(&ListParams::default()).await.map(|_| ()).as_ref().map_err(status_code), Err(Some(403)));
    let nobody: Api<Pod> = Api::all(cp.client(KubeUser::Nobody).await);
    assert_eq!(nobody.list(&ListParams::default()).await.map(|_| ()).as_ref().map_err(status_code), Err(Some(403)));
    // Namespaces (for namespace labels) through the second ClusterRole.
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(cp.client(KubeUser::Shipper).await);
    assert!(namespaces.get("shop").await.is_ok());
}

#[tokio::test]
async fn apiserver_stop_and_start_keep_clients_and_kubeconfigs_working() {
    let cp = ControlPlane::start().await;
    let kubeconfig = cp.kubeconfig(KubeUser::Shipper);
    let shipper: Api<Pod> = Api::all(cp.client(KubeUser::Shipper).await);
    cp.create_namespace("shop").await;
    cp.create_pod(&TestPod::new("shop", "before", "node-a")).await;

    cp.stop_apiserver();
    assert!(!cp.apiserver_running());
    let down = tokio::time::timeout(Duration::from_secs(30), shipper.list(&ListParams::default())).await.unwrap();
    assert!(down.is_err(), "listing must fail while the apiserver is down");

    cp.start_apiserver().await;
    assert!(cp.apiserver_running());
    // The same client (and the kubeconfig written before) reach the restarted server; data survived.
    let pods = shipper.list(&ListParams::default()).await.unwrap();
    assert_eq!(pods.items.len(), 1);
    assert_eq!(cp.kubeconfig(KubeUser::Shipper), kubeconfig);
    let from_file = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&kubeconfig).unwrap(),
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        Api::<Pod>::namespaced(from_file, "shop").get("before").await.unwrap().metadata.name.as_deref(),
        Some("before")
    );
}

/// Counts the watcher's `Init` events (one per list) on a channel.
fn spawn_watcher(api: Api<Pod>, config: watcher::Config) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = watcher(api, config).boxed();
        while let Some(item) = stream.next().await {
            let text = match item {
                Ok(watcher::Event::Init) => "init".to_owned(),
                Ok(watcher::Event::InitDone) => "init-done".to_owned(),
                Ok(watcher::Event::InitApply(p)) => format!("init-apply {}", p.metadata.name.unwrap_or_default()),
                Ok(watcher::Event::Apply(p)) => format!("apply {}", p.metadata.name.unwrap_or_default()),
                Ok(watcher::Event::Delete(p)) => format!("delete {}", p.metadata.name.unwrap_or_default()),
                Err(e) => format!("error {e}"),
            };
            if tx.send(text).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits for an event starting with `prefix`; returns every event seen up to it.
async fn wait_for(rx: &mut mpsc::UnboundedReceiver<String>, prefix: &str, within: Duration) -> Vec<String> {
    wait_for_any(rx, &[prefix], within).await
}

/// Waits for an event starting with one of `prefixes`; returns every event seen up to it.
async fn wait_for_any(rx: &mut mpsc::UnboundedReceiver<String>, prefixes: &[&str], within: Duration) -> Vec<String> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(event)) => {
                let done = prefixes.iter().any(|p| event.starts_with(p));
                seen.push(event);
                if done {
                    return seen;
                }
            }
            Ok(None) => panic!("watcher ended; saw {seen:?}"),
            Err(_) => panic!("none of {prefixes:?} within {within:?}; saw {seen:?}"),
        }
    }
}

#[tokio::test]
async fn etcd_compaction_makes_watchers_relist() {
    let cp = ControlPlane::start().await;
    cp.create_namespace("shop").await;
    cp.create_pod(&TestPod::new("shop", "a", "node-a")).await;
    let shipper: Api<Pod> = Api::all(cp.client(KubeUser::Shipper).await);
    let selector = watcher::Config::default().fields("spec.nodeName=node-a");

    // 1. A watch that ends by its own timeout (2 s) re-watches from its last resourceVersion:
    //    after a compaction that is 410 Gone, and the watcher relists.
    let mut short = spawn_watcher(shipper.clone(), selector.clone().timeout(2));
    // 2. A watch with kube-runtime's default timeout (290 s): only expire_watches (compact +
    //    etcd restart) ends it with 410.
    let mut long = spawn_watcher(shipper.clone(), selector.clone());
    for rx in [&mut short, &mut long] {
        let seen = wait_for(rx, "init-done", Duration::from_secs(20)).await;
        assert_eq!(seen, ["init", "init-apply a", "init-done"]);
    }
    // Let a few short watches come and go without a relist.
    tokio::time::sleep(Duration::from_secs(3)).await;
    cp.create_pod(&TestPod::new("shop", "b", "node-a")).await;
    wait_for(&mut short, "apply b", Duration::from_secs(10)).await;
    wait_for(&mut long, "apply b", Duration::from_secs(10)).await;

    let revision = cp.compact_etcd().await;
    assert!(revision > 0);
    let seen = wait_for(&mut short, "init-done", Duration::from_secs(20)).await;
    assert!(seen.iter().any(|e| e.starts_with("error")), "no error (410) before the relist: {seen:?}");
    assert!(seen.contains(&"init".to_owned()), "{seen:?}");
    assert!(seen.contains(&"init-apply b".to_owned()), "{seen:?}");
    eprintln!("short-timeout watcher after compaction: {seen:?}");

    // The long watch is still running and unaffected so far.
    assert!(long.try_recv().is_err(), "the long watch saw something already");
    cp.expire_watches().await;
    let seen = wait_for(&mut long, "init-done", Duration::from_secs(30)).await;
    assert!(seen.contains(&"init".to_owned()), "{seen:?}");
    eprintln!("default-timeout watcher after expire_watches: {seen:?}");

    // And both keep delivering afterwards. The short watcher's re-watch may also meet the expired
    // revision and relist while `c` is created, so `c` may come as part of that relist.
    cp.create_pod(&TestPod::new("shop", "c", "node-a")).await;
    for rx in [&mut short, &mut long] {
        let seen = wait_for_any(rx, &["apply c", "init-apply c"], Duration::from_secs(15)).await;
        if seen.last().is_some_and(|e| e == "init-apply c") {
            wait_for(rx, "init-done", Duration::from_secs(15)).await;
        }
    }
}

//! `enrich` against a real kube-apiserver (the harness of `sluice-integration-tests::kube`; needs the
//! binaries of `./dev k8s build`): RBAC refusal, the node-scoped watch, rendering from real objects,
//! namespace labels, API server down/up, deletion and 410 relists.

use std::time::{Duration, Instant};

use sluice_integration_tests::kube::{ControlPlane, KubeUser, TestContainerStatus, TestPod};
use sluice_shipper::enrich::metrics::WatchLabel;
use sluice_shipper::enrich::{self, EnrichMetrics, Health, KubernetesConfig, Lookup, PodInfo, PodStore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

async fn until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Watch {
    store: PodStore,
    metrics: EnrichMetrics,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Watch {
    fn start(cp: &ControlPlane, user: KubeUser, node: &str, namespace_labels: bool) -> Watch {
        let config = KubernetesConfig {
            kubeconfig: cp.kubeconfig(user).display().to_string(),
            namespace_labels,
            ..Default::default()
        };
        Watch::with(config, node)
    }

    fn with(config: KubernetesConfig, node: &str) -> Watch {
        let store = PodStore::new(&config);
        let metrics = EnrichMetrics::default();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(enrich::run(config, node.into(), store.clone(), metrics.clone(), shutdown.clone()));
        Watch { store, metrics, shutdown, task }
    }

    fn found(&self, uid: &str) -> Option<std::sync::Arc<PodInfo>> {
        match self.store.lookup(uid) {
            Lookup::Found(info) => Some(info),
            _ => None,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task).await.expect("run returns on shutdown").unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_watch_gives_path_metadata_without_waiting() {
    let cp = ControlPlane::start().await;
    cp.create_namespace("shop").await;
    let uid = cp.create_pod(&TestPod::new("shop", "web-0", "node-a").container("app", "nginx:1.27")).await.metadata.uid;
    let w = Watch::start(&cp, KubeUser::Nobody, "node-a", false);
    until("the refusal", || w.store.health() == Health::Failing).await;
    assert_eq!(w.store.lookup(&uid.unwrap()), Lookup::Unavailable);
    assert!(!w.store.synced());
    let forbidden = w.metrics.watch_errors.get_or_create(&WatchLabel { resource: "pods", kind: "forbidden" }).get();
    assert!(forbidden >= 1);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_scoped_watch_renders_real_pods_and_survives_outages() {
    let cp = ControlPlane::start().await;
    cp.create_namespace_with_labels("shop", &[("team.example.com/name", "checkout")]).await;
    let web = TestPod::new("shop", "web-7d4b9c8f6d-x2x9q", "node-a")
        .label("app.kubernetes.io/name", "web")
        .label("pod-template-hash", "7d4b9c8f6d")
        .owner("ReplicaSet", "web-7d4b9c8f6d")
        .container("nginx", "nginx:1.27")
        .container("istio-proxy", "istio/proxyv2:1.24")
        .annotation("sluice.io/exclude-containers", "istio-proxy");
    let web_uid = cp.create_pod(&web).await.metadata.uid.unwrap();
    let job = TestPod::new("shop", "backup-29412345-abcde", "node-a")
        .owner("Job", "backup-29412345")
        .container("backup", "busybox:1.36");
    let job_uid = cp.create_pod(&job).await.metadata.uid.unwrap();
    let elsewhere = TestPod::new("shop", "db-0", "node-b").owner("StatefulSet", "db").container("db", "postgres:17");
    let elsewhere_uid = cp.create_pod(&elsewhere).await.metadata.uid.unwrap();
    cp.set_container_statuses(
        "shop",
        "web-7d4b9c8f6d-x2x9q",
        &[TestContainerStatus::running("nginx", "nginx:1.27", "containerd://0123abcd").restart_count(1)],
    )
    .await;

    let w = Watch::start(&cp, KubeUser::Shipper, "node-a", true);
    until("the first list", || w.store.synced()).await;
    until("the container status", || {
        w.found(&web_uid).is_some_and(|p| p.container("nginx").is_some_and(|c| c.container_id.is_some()))
    })
    .await;
    until("namespace labels", || w.found(&web_uid).is_some_and(|p| !p.namespace_labels.is_empty())).await;
    assert_eq!(w.store.lookup(&elsewhere_uid), Lookup::Pending, "pods of other nodes are not watched");
    assert_eq!(w.store.len(), 2);

    let info = w.found(&web_uid).unwrap();
    let (k, c) = enrich::render(&info, "nginx", Some(1));
    let value = serde_json::json!({"kubernetes": k, "container": c});
    assert_eq!(value["kubernetes"]["owner"], serde_json::json!({"kind": "Deployment", "name": "web"}));
    assert_eq!(value["kubernetes"]["labels"]["app_kubernetes_io/name"], "web");
    assert_eq!(value["kubernetes"]["namespace_labels"]["team_example_com/name"], "checkout");
    assert_eq!(value["kubernetes"]["node"]["name"], "node-a");
    assert_eq!(value["kubernetes"]["container"]["restart_count"], 1);
    assert_eq!(value["container"]["id"], "0123abcd");
    assert_eq!(value["container"]["runtime"], "containerd");
    assert_eq!(value["container"]["image"]["name"], "nginx:1.27");
    assert!(info.excluded("istio-proxy") && !info.excluded("nginx"));
    let job_owner = w.found(&job_uid).unwrap().owner.clone().unwrap();
    assert_eq!((job_owner.kind.as_str(), job_owner.name.as_str()), ("CronJob", "backup"));

    // Changes arrive through the watch.
    cp.patch_pod_labels("shop", "web-7d4b9c8f6d-x2x9q", &[("tier", Some("frontend"))]).await;
    until("the label change", || w.found(&web_uid).is_some_and(|p| p.labels.contains_key("tier"))).await;

    // API server down: known pods stay found, unknown ones do not wait; then it recovers.
    cp.stop_apiserver();
    until("the outage", || w.store.health() == Health::Failing).await;
    assert!(w.found(&web_uid).is_some());
    assert_eq!(w.store.lookup("not-yet-known"), Lookup::Unavailable);
    cp.start_apiserver().await;
    cp.delete_pod("shop", "backup-29412345-abcde").await;
    until("the deletion", || w.store.is_deleted(&job_uid) == Some(true)).await;
    assert!(w.found(&job_uid).is_some(), "deleted pods stay for kubernetes.deleted_pod_grace");
    until("recovery", || w.store.health() == Health::Synced).await;

    // 410 Gone: a relist, which keeps the live pods live.
    let relists = |m: &EnrichMetrics| m.relists.get_or_create(&WatchLabel { resource: "pods", kind: "relist" }).get();
    let before = relists(&w.metrics);
    cp.expire_watches().await;
    until("a relist", || relists(&w.metrics) > before).await;
    until("the relist to complete", || w.store.health() == Health::Synced).await;
    assert_eq!(w.store.is_deleted(&web_uid), Some(false));
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_list_where_the_api_server_offers_it() {
    let cp = ControlPlane::options().watch_cache(true).start().await;
    cp.create_namespace("shop").await;
    let uid = cp.create_pod(&TestPod::new("shop", "web-0", "node-a").container("app", "nginx:1.27")).await.metadata.uid;
    cp.create_pod(&TestPod::new("shop", "web-1", "node-b").container("app", "nginx:1.27")).await;
    let config = KubernetesConfig {
        kubeconfig: cp.kubeconfig(KubeUser::Shipper).display().to_string(),
        streaming_list: true,
        ..Default::default()
    };
    let w = Watch::with(config, "node-a");
    until("the streamed initial state", || w.store.synced()).await;
    assert!(w.found(&uid.unwrap()).is_some());
    assert_eq!(w.store.len(), 1);
    w.stop().await;
}

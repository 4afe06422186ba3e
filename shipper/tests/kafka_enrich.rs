//! Enrichment end to end: the real `sluice-shipper` binary (`kubernetes.enabled: true`, a kubeconfig
//! for the ServiceAccount of `deploy/k8s/rbac-shipper.yaml`, `node_name: node-a`) reads kubelet-layout
//! files and publishes to the real Kafka, against a real kube-apiserver (the harness of
//! `sluice_integration_tests::kube`; binaries from `./dev k8s build`). Assertions are on the documents
//! consumed from Kafka and on the shipper's `/metrics`.
//!
//! - pods of this node enrich their files (labels, owner, container runtime fields), also a pod that
//!   reaches the node after its files appeared (the file waits, others flow), also after the pod was
//!   deleted and collected (the read path keeps what it has); a file whose pod never comes, or whose
//!   pod runs on another node, goes out after `kubernetes.wait_for_pod` with path metadata;
//! - the API server down at start and back, and a watch expiring (410, relist);
//! - a watch RBAC forbids: path metadata, no crash, one error line naming the permission;
//! - filters (`sluice.io/exclude`, `sluice.io/exclude-containers`, `filter.exclude_namespaces`): never
//!   in Kafka, counted, and the checkpoint moves over them (nothing read again after a restart).

mod common;

use std::ops::Range;
use std::path::Path;
use std::time::{Duration, Instant};

use common::kafka_support::{Collector, KillOnDrop, Msg, Setup, sigterm};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use sluice_common::schema::Stream;
use sluice_integration_tests::kube::{ControlPlane, KubeUser, TestContainerStatus, TestPod};
use sluice_integration_tests::{kafka, unique_name};
use sluice_shipper::testkit::{KubeletWriter, WriterOptions};
use tokio::runtime::Handle;

/// Longest wait for anything asynchronous.
const WAIT: Duration = Duration::from_secs(30);
/// `kubernetes.wait_for_pod` of these tests.
const WAIT_FOR_POD: Duration = Duration::from_secs(4);
const WEB: &str = "web-5d9c7b8f6-x2x9q";

const HITS: &str = "sluice_shipper_enrich_hits_total";
const SYNCED: &str = "sluice_shipper_enrich_synced";
const RELISTS: &str = "sluice_shipper_enrich_relists_total{resource=\"pods\",kind=\"relist\"}";

fn misses(reason: &str) -> String {
    format!("sluice_shipper_enrich_misses_total{{reason=\"{reason}\"}}")
}

fn filtered_records(reason: &str) -> String {
    format!("sluice_shipper_enrich_filtered_records_total{{reason=\"{reason}\"}}")
}

fn filtered_files(reason: &str) -> String {
    format!("sluice_shipper_enrich_filtered_files_total{{reason=\"{reason}\"}}")
}

fn watch_errors(kind: &str) -> String {
    format!("sluice_shipper_enrich_watch_errors_total{{resource=\"pods\",kind=\"{kind}\"}}")
}

/// The `kubernetes` section: the pod watch as `user`, `wait_for_pod` [`WAIT_FOR_POD`], then `more`
/// (indented keys of the section).
fn kubernetes(cp: &ControlPlane, user: KubeUser, more: &str) -> String {
    format!(
        "kubernetes:\n  enabled: true\n  kubeconfig: {}\n  wait_for_pod: {}s\n{more}",
        cp.kubeconfig(user).display(),
        WAIT_FOR_POD.as_secs()
    )
}

fn uid(pod: Pod) -> String {
    pod.metadata.uid.expect("a created pod has a uid")
}

fn writer(root: &Path, (ns, pod, uid, container): (&str, &str, &str, &str), restart: u32) -> KubeletWriter {
    KubeletWriter::new(root, (ns, pod, uid, container), restart, WriterOptions::default()).unwrap()
}

/// Writes lines `<tag> <seq> …` for `seqs`.
fn write(w: &mut KubeletWriter, tag: &str, seqs: Range<u64>) {
    for seq in seqs {
        w.write_line(Stream::Stdout, &KubeletWriter::content(tag, seq, 48)).unwrap();
    }
}

/// The `<tag>` of a record's message.
fn tag_of(m: &Msg) -> String {
    m.doc()["message"].as_str().unwrap_or_default().split(' ').next().unwrap_or_default().to_owned()
}

fn tagged(tag: &str) -> impl Fn(&Msg) -> bool + '_ {
    move |m| tag_of(m) == tag
}

fn from_path(doc: &Value) -> bool {
    doc["tags"].as_array().is_some_and(|t| t.iter().any(|t| t == "metadata_from_path"))
}

/// Waits for `n` records of `tag` and checks there are exactly `n` (one each, none twice).
fn records_of(collector: &Collector, tag: &str, n: usize) -> Vec<Value> {
    let msgs = collector.wait_matching(n, WAIT, tagged(tag));
    assert_eq!(msgs.len(), n, "records of {tag}");
    msgs.iter().map(Msg::doc).collect()
}

/// A path-metadata record: the fields of the path, no pod metadata, tag `metadata_from_path`.
fn assert_path_only(doc: &Value, (ns, pod, uid, container): (&str, &str, &str, &str)) {
    assert!(from_path(doc), "not tagged metadata_from_path: {doc}");
    let k = &doc["kubernetes"];
    assert_eq!(
        (&k["namespace"], &k["pod"]["name"], &k["pod"]["uid"], &k["container"]["name"], &k["node"]["name"]),
        (&json!(ns), &json!(pod), &json!(uid), &json!(container), &json!("node-a")),
        "{doc}"
    );
    for absent in ["labels", "owner", "annotations"] {
        assert!(k.get(absent).is_none(), "{absent} in a path-metadata record: {doc}");
    }
    assert!(doc.get("container").is_none(), "container.* in a path-metadata record: {doc}");
}

/// Binds an unscheduled pod to `node` through the `binding` subresource, as the scheduler does.
async fn bind(cp: &ControlPlane, namespace: &str, pod: &str, node: &str) {
    let body = json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": pod, "namespace": namespace},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    });
    let api = cp.pods(namespace).await;
    let _: Value = api
        .create_subresource("binding", pod, &Default::default(), &body)
        .await
        .unwrap_or_else(|e| panic!("bind {namespace}/{pod} to {node}: {e}"));
}

/// Scenarios 1, 2, 3 and 7 on one control plane and one shipper.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_of_the_node_enrich_their_records_also_late_or_deleted_and_others_never() {
    let kafka = kafka().await;
    let topic = unique_name("enrich-pods");
    kafka.create_topic(&topic, 2).await;
    let cp = ControlPlane::start().await;
    cp.create_namespace("shop").await;
    let web = TestPod::new("shop", WEB, "node-a")
        .label("app.kubernetes.io/name", "web")
        .label("pod-template-hash", "5d9c7b8f6")
        .owner("ReplicaSet", "web-5d9c7b8f6")
        .container("nginx", "nginx:1.27");
    let web_uid = uid(cp.create_pod(&web).await);
    let image_id = format!("docker.io/library/nginx@sha256:{}", "ab".repeat(32));
    cp.set_container_statuses(
        "shop",
        WEB,
        &[TestContainerStatus::running("nginx", "nginx:1.27", "containerd://0123abcd")
            .image_id(&image_id)
            .restart_count(1)],
    )
    .await;
    // On another node: its uid in a local path must not find it (the watch is node-scoped).
    let db_uid = uid(cp.create_pod(&TestPod::new("shop", "db-0", "node-b").container("db", "postgres:17")).await);
    // Not scheduled yet: bound to node-a only after its file appeared.
    let late_uid = uid(cp
        .create_pod(&TestPod::new("shop", "late-0", "").label("app", "late").container("app", "busybox:1.36"))
        .await);
    let ghost_uid = "4f1d2c3b-0000-4000-8000-00000000dead";
    let rt = Handle::current();
    tokio::task::block_in_place(|| {
        let extra = kubernetes(&cp, KubeUser::Shipper, "  deleted_pod_grace: 1s\n");
        let setup = Setup::with_node(&kafka.bootstrap, &topic, "node-a", &extra);
        let collector = Collector::start(&kafka.bootstrap, &topic);
        let mut web_w = writer(&setup.root, ("shop", WEB, &web_uid, "nginx"), 1);
        write(&mut web_w, "web", 0..20);
        write(&mut writer(&setup.root, ("shop", "db-0", &db_uid, "db"), 0), "foreign", 0..10);
        write(&mut writer(&setup.root, ("shop", "ghost-0", ghost_uid, "app"), 0), "ghost", 0..10);
        write(&mut writer(&setup.root, ("shop", "late-0", &late_uid, "app"), 0), "late", 0..10);
        let mut shipper = KillOnDrop(setup.spawn());

        // 1. A known pod enriches at once; the files of pods not on the node (yet) wait, the known
        // one does not wait for them.
        setup.wait_metric(HITS, WAIT, |v| v >= 20.0);
        assert_eq!(setup.metric("sluice_shipper_records_total"), 20.0, "only the known pod's file was shipped so far");
        // 2. The late pod reaches the node within its file's wait_for_pod.
        rt.block_on(bind(&cp, "shop", "late-0", "node-a"));
        for doc in records_of(&collector, "late", 10) {
            assert!(!from_path(&doc), "the late pod's file waited for it: {doc}");
            assert_eq!(doc["kubernetes"]["labels"], json!({"app": "late"}));
            assert_eq!(doc["kubernetes"]["pod"], json!({"name": "late-0", "uid": late_uid}));
            assert_eq!(doc["kubernetes"]["node"]["name"], "node-a");
        }
        for m in &collector.wait_matching(20, WAIT, tagged("web")) {
            assert_eq!(m.key, format!("{web_uid}/nginx"));
            assert_eq!(m.headers["sluice.ns"], "shop");
            let doc = m.doc();
            assert!(!from_path(&doc), "{doc}");
            assert!(doc.get("tags").is_none(), "no tags: {doc}");
            let k = &doc["kubernetes"];
            assert_eq!(k["labels"], json!({"app_kubernetes_io/name": "web", "pod-template-hash": "5d9c7b8f6"}));
            assert_eq!(k["owner"], json!({"kind": "Deployment", "name": "web"}));
            assert_eq!(k["pod"], json!({"name": WEB, "uid": web_uid}));
            assert_eq!(k["container"], json!({"name": "nginx", "restart_count": 1}));
            assert_eq!(k["node"]["name"], "node-a");
            assert_eq!(k["namespace"], "shop");
            assert_eq!(
                doc["container"],
                json!({"id": "0123abcd", "runtime": "containerd", "image": {"name": "nginx:1.27", "id": image_id}})
            );
        }

        // 2 and 7. Never-appearing pod, and a pod of node-b: path metadata after wait_for_pod.
        for doc in records_of(&collector, "ghost", 10) {
            assert_path_only(&doc, ("shop", "ghost-0", ghost_uid, "app"));
        }
        for doc in records_of(&collector, "foreign", 10) {
            assert_path_only(&doc, ("shop", "db-0", &db_uid, "db"));
        }
        assert_eq!(setup.counter(&misses("pending_timeout")), 20.0);
        assert_eq!(setup.metric(HITS), 30.0);
        assert_eq!(setup.metric("sluice_shipper_enrich_pods"), 2.0, "web-… and late-0, not db-0 of node-b");

        // 3. The pod is deleted and collected (deleted_pod_grace 1s) while its file is still written:
        // the file keeps the metadata it resolved.
        rt.block_on(cp.delete_pod("shop", WEB));
        setup.wait_metric("sluice_shipper_enrich_pods_collected_total", WAIT, |v| v >= 1.0);
        write(&mut web_w, "web", 20..30);
        // A file of that pod first seen after the collection: path metadata at once (miss unknown).
        write(&mut writer(&setup.root, ("shop", WEB, &web_uid, "nginx"), 2), "reborn", 0..5);
        for doc in records_of(&collector, "reborn", 5) {
            assert_path_only(&doc, ("shop", WEB, &web_uid, "nginx"));
        }
        let webs = records_of(&collector, "web", 30);
        for doc in &webs {
            assert!(!from_path(doc), "written after the pod was collected, still enriched: {doc}");
            assert_eq!(doc["kubernetes"]["owner"], json!({"kind": "Deployment", "name": "web"}));
            assert_eq!(doc["container"]["id"], "0123abcd");
        }
        assert_eq!(setup.metric(HITS), 40.0);
        // `unknown`, not `pending_timeout`: the collected pod's new file did not wait.
        assert_eq!(setup.counter(&misses("unknown")), 5.0);
        assert_eq!(setup.counter(&misses("pending_timeout")), 20.0);
        assert_eq!(setup.counter(&misses("api_down")), 0.0);
        assert_eq!(setup.metric(SYNCED), 1.0);
        assert_eq!(collector.count(), 20 + 10 + 10 + 10 + 10 + 5, "each record once");
        assert!(sigterm(&mut shipper).success());
    });
}

/// Scenarios 4 and 5: the API server down when the shipper starts, then back; a watch expiring.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_down_at_start_never_blocks_and_expired_watches_relist() {
    let kafka = kafka().await;
    let topic = unique_name("enrich-outage");
    kafka.create_topic(&topic, 2).await;
    let cp = ControlPlane::start().await;
    cp.create_namespace("shop").await;
    let api_uid = uid(cp.create_pod(&TestPod::new("shop", "api-0", "node-a").label("app", "api")).await);
    cp.set_container_statuses(
        "shop",
        "api-0",
        &[TestContainerStatus::running("app", "busybox:1.36", "containerd://feed")],
    )
    .await;
    cp.stop_apiserver();
    let rt = Handle::current();
    tokio::task::block_in_place(|| {
        let setup = Setup::with_node(&kafka.bootstrap, &topic, "node-a", &kubernetes(&cp, KubeUser::Shipper, ""));
        let collector = Collector::start(&kafka.bootstrap, &topic);
        let mut api_w = writer(&setup.root, ("shop", "api-0", &api_uid, "app"), 0);
        write(&mut api_w, "down", 0..20);
        let mut shipper = KillOnDrop(setup.spawn());

        // 4. Down: records flow with path metadata, without waiting for wait_for_pod.
        for doc in records_of(&collector, "down", 20) {
            assert_path_only(&doc, ("shop", "api-0", &api_uid, "app"));
        }
        // `api_down`, not `pending_timeout`: they did not wait for wait_for_pod.
        assert_eq!(setup.counter(&misses("api_down")), 20.0);
        assert!(setup.counter(&watch_errors("connect")) >= 1.0);
        assert_eq!(setup.metric(SYNCED), 0.0);
        assert_eq!(setup.metric(HITS), 0.0);

        // Back: once the watch has listed, new records of the same file are enriched.
        rt.block_on(cp.start_apiserver());
        setup.wait_metric(SYNCED, Duration::from_secs(45), |v| v == 1.0);
        write(&mut api_w, "up", 0..20);
        for doc in records_of(&collector, "up", 20) {
            assert!(!from_path(&doc), "{doc}");
            assert_eq!(doc["kubernetes"]["labels"], json!({"app": "api"}));
            assert_eq!(doc["container"]["id"], "feed");
        }
        assert_eq!(setup.metric(HITS), 20.0);

        // 5. Watches expire (410): relist; pods created afterwards enrich, known ones still do.
        let relists = setup.metric(RELISTS);
        rt.block_on(cp.expire_watches());
        setup.wait_metric(RELISTS, WAIT, |v| v > relists);
        setup.wait_metric(SYNCED, WAIT, |v| v == 1.0);
        let fresh_uid =
            uid(rt.block_on(cp.create_pod(&TestPod::new("shop", "fresh-0", "node-a").label("app", "fresh"))));
        write(&mut writer(&setup.root, ("shop", "fresh-0", &fresh_uid, "app"), 0), "fresh", 0..10);
        write(&mut api_w, "after", 0..5);
        for doc in records_of(&collector, "fresh", 10) {
            assert!(!from_path(&doc), "{doc}");
            assert_eq!(doc["kubernetes"]["labels"], json!({"app": "fresh"}));
        }
        for doc in records_of(&collector, "after", 5) {
            assert_eq!(doc["kubernetes"]["labels"], json!({"app": "api"}), "{doc}");
        }
        assert!(setup.counter(&watch_errors("gone")) >= 1.0, "the expiry is seen as 410 Gone");
        assert_eq!(setup.metric(HITS), 35.0);
        assert_eq!(setup.counter(&misses("api_down")), 20.0);
        assert_eq!(setup.counter(&misses("pending_timeout")), 0.0);
        assert_eq!(collector.count(), 55, "each record once");
        assert!(sigterm(&mut shipper).success());
    });
}

/// Scenarios 6 and 8: a shipper RBAC refuses, and a shipper with filters (graceful restart), side
/// by side on one control plane.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_ack_without_shipping_and_a_forbidden_watch_degrades_to_path_metadata() {
    let kafka = kafka().await;
    let topic = unique_name("enrich-filter");
    let nobody_topic = unique_name("enrich-forbidden");
    kafka.create_topic(&topic, 2).await;
    kafka.create_topic(&nobody_topic, 1).await;
    let cp = ControlPlane::start().await;
    cp.create_namespace("shop").await;
    let quiet_uid =
        uid(cp.create_pod(&TestPod::new("shop", "quiet-0", "node-a").annotation("sluice.io/exclude", "true")).await);
    let mixed = TestPod::new("shop", "mixed-0", "node-a")
        .label("app", "mixed")
        .annotation("sluice.io/exclude-containers", "sidecar")
        .container("app", "busybox:1.36")
        .container("sidecar", "envoy:1.32");
    let mixed_uid = uid(cp.create_pod(&mixed).await);
    let system_uid = "0b5e7a1c-0000-4000-8000-00000000c0de";
    tokio::task::block_in_place(|| {
        // 6. RBAC forbids the watch.
        let nobody =
            Setup::with_node(&kafka.bootstrap, &nobody_topic, "node-a", &kubernetes(&cp, KubeUser::Nobody, ""));
        let nobody_collector = Collector::start(&kafka.bootstrap, &nobody_topic);
        write(&mut writer(&nobody.root, ("shop", "mixed-0", &mixed_uid, "app"), 0), "nobody", 0..10);
        let log = nobody.tmp.path().join("shipper.log");
        let mut nobody_shipper = KillOnDrop(nobody.spawn_logging_to(&log));

        // 8. Filters.
        let extra = format!("{}filter:\n  exclude_namespaces: [kube-system]\n", kubernetes(&cp, KubeUser::Shipper, ""));
        let setup = Setup::with_node(&kafka.bootstrap, &topic, "node-a", &extra);
        let collector = Collector::start(&kafka.bootstrap, &topic);
        let files = [
            ("quiet", ("shop", "quiet-0", quiet_uid.as_str(), "app"), "annotation"),
            ("sidecar", ("shop", "mixed-0", mixed_uid.as_str(), "sidecar"), "container"),
            ("system", ("kube-system", "coredns-0", system_uid, "coredns"), "namespace"),
        ];
        let mut writers: Vec<KubeletWriter> = files.iter().map(|(_, p, _)| writer(&setup.root, *p, 0)).collect();
        for ((tag, _, _), w) in files.iter().zip(&mut writers) {
            write(w, tag, 0..10);
        }
        let mut app_w = writer(&setup.root, ("shop", "mixed-0", &mixed_uid, "app"), 0);
        write(&mut app_w, "mixed", 0..10);
        let mut shipper = KillOnDrop(setup.spawn());
        for doc in records_of(&collector, "mixed", 10) {
            assert_eq!(doc["kubernetes"]["labels"], json!({"app": "mixed"}), "{doc}");
        }
        for (_, _, reason) in &files {
            setup.wait_metric(&filtered_records(reason), WAIT, |v| v == 10.0);
            assert_eq!(setup.counter(&filtered_files(reason)), 1.0, "files excluded for {reason}");
        }
        // The checkpoint moves over what was not shipped.
        let deadline = Instant::now() + WAIT;
        for w in &writers {
            let (path, size) = (w.live_path().display().to_string(), std::fs::metadata(w.live_path()).unwrap().len());
            while !setup.checkpoint().iter().any(|e| e["path"] == path.as_str() && e["offset"] == size) {
                assert!(Instant::now() < deadline, "checkpoint of {path} not at {size}: {:?}", setup.checkpoint());
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(collector.count(), 10, "only the shipped container's records are in Kafka");
        assert_eq!(setup.metric("sluice_shipper_records_total"), 10.0);
        assert!(sigterm(&mut shipper).success());

        // After a graceful restart nothing is read again; new lines are filtered the same way.
        let mut shipper = KillOnDrop(setup.spawn());
        setup.wait_ready(WAIT);
        setup.wait_metric(SYNCED, WAIT, |v| v == 1.0);
        for (_, _, reason) in &files {
            setup.wait_metric(&filtered_files(reason), WAIT, |v| v == 1.0);
        }
        std::thread::sleep(Duration::from_millis(500));
        for (_, _, reason) in &files {
            assert_eq!(setup.counter(&filtered_records(reason)), 0.0, "{reason}: read again after a restart");
        }
        assert_eq!(setup.metric("sluice_shipper_records_total"), 0.0);
        assert_eq!(setup.metric("sluice_shipper_lines_read_total"), 0.0);
        for ((tag, _, _), w) in files.iter().zip(&mut writers) {
            write(w, tag, 10..15);
        }
        write(&mut app_w, "mixed", 10..15);
        records_of(&collector, "mixed", 15);
        for (_, _, reason) in &files {
            setup.wait_metric(&filtered_records(reason), WAIT, |v| v == 5.0);
        }
        assert_eq!(collector.count(), 15);
        assert!(sigterm(&mut shipper).success());

        // 6, continued: path metadata meanwhile, refusals counted, logged once, still running.
        for doc in records_of(&nobody_collector, "nobody", 10) {
            assert_path_only(&doc, ("shop", "mixed-0", &mixed_uid, "app"));
        }
        assert_eq!(nobody.counter(&misses("api_down")), 10.0);
        nobody.wait_metric(&watch_errors("forbidden"), WAIT, |v| v >= 3.0);
        assert!(nobody_shipper.try_wait().unwrap().is_none(), "the shipper exited on a forbidden watch");
        assert_eq!(nobody.metric(SYNCED), 0.0);
        assert!(sigterm(&mut nobody_shipper).success());
        let text = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| l.contains("get/list/watch on pods")).collect();
        assert_eq!(lines.len(), 1, "one error line naming the permission, got:\n{text}");
        assert!(lines[0].contains("ERROR"), "{}", lines[0]);
        assert!(lines[0].contains("User \"nobody\" cannot list resource \"pods\""), "{}", lines[0]);
        assert!(lines[0].contains("ClusterRole sluice-shipper"), "{}", lines[0]);
    });
}

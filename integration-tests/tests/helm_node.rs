//! The Helm chart **running for real** on a real single-node Kubernetes (issue 13): the project's
//! script (`deploy/k8s/kube cluster-up`) starts etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler and a kubelet on a private containerd, with `sluice/sluice:dev` imported from the
//! local Docker engine. `helm install` runs the setup hook Job for real, the shipper DaemonSet and
//! the indexer Deployment; a demo Deployment writes numbered lines through the real kubelet.
//!
//! Asserted: every line reaches Elasticsearch **once**, with the metadata the shipper's pod watch
//! took through its in-cluster ServiceAccount (namespace, pod, uid, labels, owner, node, image,
//! container id); then, mid-stream, the shipper pod is deleted (the DaemonSet restarts it), the
//! demo pod is deleted (its successor writes on), and `helm upgrade` takes the indexer from 1 to 3
//! replicas (the consumer group rebalances) — and still 0 lost, 0 duplicated.
//!
//! Kafka and Elasticsearch are private containers listening on the node's host address
//! (`SLUICE_K8S_HOST_IP`, an address the script adds to `lo`): pods on the pod network reach it,
//! 127.0.0.1 would be their own. The shipper runs with `hostNetwork` (it reaches the apiserver
//! through the `kubernetes` Service IP, DNATed by the script); the indexers on the pod network,
//! so three replicas fit on one node.
//!
//! Needs root, Docker, `./dev k8s build` and the workspace binaries (`./dev test` builds them).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_integration_tests::helm::{Chart, run};
use sluice_integration_tests::{KAFKA_STARTED, SEARCH_STARTED, free_port, unique_name};
use testcontainers::core::WaitFor;
use testcontainers::runners::AsyncRunner;
use testcontainers::{GenericImage, ImageExt};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/k8s/kube");
const DEV: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../dev");
const IMAGE: &str = "sluice/sluice:dev";

/// A running single-node cluster; `cluster-down` when dropped (also on panic).
struct Node {
    env: Vec<(String, String)>,
    /// Runs cluster-down if this test process dies without unwinding (SIGKILL, abort).
    watchdog: Option<std::process::Child>,
    kubeconfig: PathBuf,
    name: String,
    host_ip: String,
    _state: tempfile::TempDir,
}

impl Node {
    fn up() -> Node {
        let state = tempfile::Builder::new().prefix("sluice-node-").tempdir().expect("temp dir");
        let env: Vec<(String, String)> = vec![
            ("SLUICE_K8S_CLUSTER_STATE".into(), state.path().display().to_string()),
            ("SLUICE_K8S_CLUSTER_ETCD_PORT".into(), free_port().to_string()),
            ("SLUICE_K8S_CLUSTER_ETCD_PEER_PORT".into(), free_port().to_string()),
            ("SLUICE_K8S_CLUSTER_APISERVER_PORT".into(), free_port().to_string()),
            ("SLUICE_K8S_KUBELET_PORT".into(), free_port().to_string()),
            ("SLUICE_K8S_KUBELET_HEALTHZ_PORT".into(), free_port().to_string()),
            ("SLUICE_K8S_IMAGES".into(), IMAGE.into()),
        ];
        let started = Instant::now();
        let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let node_env = env.clone();
        // Built now so Drop can take it down even when cluster-up fails half-way.
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(r#"while kill -0 "$0" 2>/dev/null; do sleep 1; done; exec "$1" cluster-down"#)
            .arg(std::process::id().to_string())
            .arg(SCRIPT)
            .envs(env.iter().cloned())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn watchdog");
        let mut node = Node {
            env: node_env,
            watchdog: Some(watchdog),
            kubeconfig: PathBuf::new(),
            name: String::new(),
            host_ip: String::new(),
            _state: state,
        };
        let up = run(Path::new(SCRIPT), &["cluster-up"], &envs, None, Duration::from_secs(900));
        if !up.success {
            panic!("cluster-up failed:\n{}\n{}", up.stdout, up.stderr);
        }
        let value = |key: &str| {
            up.stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
                .unwrap_or_else(|| panic!("no {key}= in cluster-up output:\n{}", up.stdout))
                .to_owned()
        };
        eprintln!("[node] cluster up in {:.1} s", started.elapsed().as_secs_f64());
        node.kubeconfig = PathBuf::from(value("KUBECONFIG"));
        node.name = value("SLUICE_K8S_NODE");
        node.host_ip = value("SLUICE_K8S_HOST_IP");
        node
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        let started = Instant::now();
        let status = Command::new(SCRIPT).arg("cluster-down").envs(self.env.iter().cloned()).status();
        eprintln!("[node] cluster-down {:?} in {:.1} s", status.map(|s| s.code()), started.elapsed().as_secs_f64());
    }
}

/// The sluice/sluice:dev image from the binaries this test run built (`target/<profile>/`).
fn build_image() {
    let exe = std::env::current_exe().expect("test executable");
    let bin_dir = exe.parent().and_then(|deps| deps.parent()).expect("target dir");
    for b in ["sluice", "sluice-shipper", "sluice-indexer"] {
        // Present and newer than its sources: the image must hold what the tree says.
        let bin = sluice_integration_tests::binaries::workspace_binary(b);
        assert_eq!(bin.parent(), Some(bin_dir), "{b}: the image is built from {}", bin_dir.display());
    }
    let started = Instant::now();
    let bins = bin_dir.display().to_string();
    run(Path::new(DEV), &["image"], &[("SLUICE_UP_BINARIES", bins.as_str())], None, Duration::from_secs(900)).ok();
    eprintln!("[node] {IMAGE} ready in {:.1} s", started.elapsed().as_secs_f64());
}

/// Polls `probe` until it returns `Some`, or panics with `what` and the last state.
async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    loop {
        match probe().await {
            Ok(value) => {
                eprintln!("[node] {what}: after {:.1} s", started.elapsed().as_secs_f64());
                return value;
            }
            Err(state) if started.elapsed() > timeout => {
                panic!("{what}: not reached after {timeout:?}; last state: {state}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

struct Es {
    url: String,
    http: reqwest::Client,
    indices: String,
}

impl Es {
    /// Every document of namespace `demo`: (pod name, line number or None for the stop line, source).
    async fn demo_docs(&self) -> Result<Vec<Value>, String> {
        let _ = self.http.post(format!("{}/{}/_refresh", self.url, self.indices)).send().await;
        let resp = self
            .http
            .post(format!("{}/{}/_search", self.url, self.indices))
            .json(&json!({"size": 10000, "query": {"term": {"kubernetes.namespace": "demo"}}}))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let body: Value = resp.json().await.map_err(|e| e.to_string())?;
        let hits = body["hits"]["hits"].as_array().ok_or_else(|| format!("no hits: {body}"))?;
        assert!(hits.len() < 10000, "more documents than one search returns; lower the demo rate");
        Ok(hits.iter().map(|h| h["_source"].clone()).collect())
    }
}

/// Per pod: line numbers seen (with repeats) and the stop line's count.
fn tally(docs: &[Value]) -> std::collections::BTreeMap<String, (Vec<u64>, Vec<u64>)> {
    let mut out: std::collections::BTreeMap<String, (Vec<u64>, Vec<u64>)> = Default::default();
    for doc in docs {
        let message = doc["message"].as_str().unwrap_or_default();
        let mut parts = message.split(' ');
        let (kind, pod, n) = (parts.next(), parts.next(), parts.next().and_then(|n| n.parse::<u64>().ok()));
        let (Some(kind), Some(pod), Some(n)) = (kind, pod, n) else { continue };
        let entry = out.entry(pod.to_owned()).or_default();
        match kind {
            "demo-line" => entry.0.push(n),
            "demo-stop" => entry.1.push(n),
            _ => {}
        }
    }
    out
}

/// Ok when every pod of `pods` has its stop line once and lines 1..=M each once.
fn complete(docs: &[Value], pods: &[String]) -> Result<(), String> {
    let tally = tally(docs);
    let mut problems = Vec::new();
    for pod in pods {
        let Some((lines, stops)) = tally.get(pod) else {
            problems.push(format!("{pod}: nothing yet"));
            continue;
        };
        if stops.len() != 1 {
            problems.push(format!("{pod}: {} stop lines", stops.len()));
            continue;
        }
        let last = stops[0];
        let mut sorted = lines.clone();
        sorted.sort_unstable();
        let dups = sorted.windows(2).filter(|w| w[0] == w[1]).count();
        sorted.dedup();
        let missing = (1..=last).filter(|n| sorted.binary_search(n).is_err()).count();
        let extra = sorted.iter().filter(|n| **n > last || **n == 0).count();
        if dups + missing + extra > 0 {
            problems.push(format!("{pod}: last {last}, {missing} missing, {dups} duplicated, {extra} beyond"));
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_runs_on_a_real_node_every_line_once_with_metadata_through_restarts_and_scaling() {
    let test_started = Instant::now();
    build_image();
    let node = Node::up();
    let chart = Chart::prepare().with_kubeconfig(node.kubeconfig.clone());
    let kubectl = |args: &[&str]| chart.kubectl(args, None).ok();

    // Kafka and Elasticsearch of this test, on the host address the pods reach.
    let services_started = Instant::now();
    let ip = node.host_ip.clone();
    let (kafka_port, controller_port, es_port, es_transport) = (free_port(), free_port(), free_port(), free_port());
    let (kafka_image, kafka_tag) = sluice_integration_tests::kafka_image();
    let kafka = GenericImage::new(kafka_image, kafka_tag)
        .with_wait_for(WaitFor::message_on_stdout(KAFKA_STARTED))
        .with_network("host")
        .with_label("sluice.test", "1")
        .with_env_var("KAFKA_NODE_ID", "1")
        .with_env_var("KAFKA_PROCESS_ROLES", "broker,controller")
        .with_env_var(
            "KAFKA_LISTENERS",
            format!("PLAINTEXT://{ip}:{kafka_port},CONTROLLER://127.0.0.1:{controller_port}"),
        )
        .with_env_var("KAFKA_ADVERTISED_LISTENERS", format!("PLAINTEXT://{ip}:{kafka_port}"))
        .with_env_var("KAFKA_CONTROLLER_QUORUM_VOTERS", format!("1@127.0.0.1:{controller_port}"))
        .with_env_var("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
        .with_env_var("KAFKA_HEAP_OPTS", "-Xmx512m -Xms256m")
        // A loaded 2-core machine (other tests, builds) can take minutes to start a JVM.
        .with_startup_timeout(Duration::from_secs(600))
        .start();
    let (es_image, es_tag) = sluice_integration_tests::search_image(sluice_integration_tests::Flavor::Elasticsearch);
    let es_container = GenericImage::new(es_image, es_tag)
        .with_wait_for(WaitFor::message_on_stdout(SEARCH_STARTED))
        .with_network("host")
        .with_label("sluice.test", "1")
        .with_env_var("http.host", ip.clone())
        .with_env_var("http.port", es_port.to_string())
        .with_env_var("transport.port", es_transport.to_string())
        .with_env_var("ES_JAVA_OPTS", "-Xms512m -Xmx512m")
        .with_startup_timeout(Duration::from_secs(600))
        .start();
    let (kafka, es_container) = tokio::join!(kafka, es_container);
    let (_kafka, _es_container) = (kafka.expect("start Kafka"), es_container.expect("start Elasticsearch"));
    eprintln!("[node] Kafka + Elasticsearch up in {:.1} s", services_started.elapsed().as_secs_f64());

    let prefix = unique_name("node");
    let es = Es { url: format!("http://{ip}:{es_port}"), http: reqwest::Client::new(), indices: format!("{prefix}-*") };
    let checkpoints = tempfile::tempdir().expect("checkpoint dir");
    let shipper_metrics = free_port();
    let values = chart.values_file(
        "node.yaml",
        &format!(
            r#"
image: {{repository: sluice/sluice, tag: dev, pullPolicy: Never}}
kafka: {{enabled: false}}
externalKafka: {{brokers: ["{ip}:{kafka_port}"]}}
topics: {{records: {prefix}.logs, deadLetter: {prefix}.dlq, partitions: 3, deadLetterPartitions: 1, replicationFactor: 1}}
elasticsearch:
  urls: ["http://{ip}:{es_port}"]
  index: "{prefix}-%Y.%m.%d"
  template: {{shards: 1, replicas: 0}}
shipper:
  hostNetwork: true
  metricsPort: {shipper_metrics}
  hostPaths: {{checkpoints: {checkpoints}}}
  resources: {{requests: {{cpu: 10m, memory: 32Mi}}, limits: {{memory: 256Mi}}}}
  config:
    filter: {{include_namespaces: [demo]}}
indexer:
  replicas: 1
  groupId: {prefix}-group
  resources: {{requests: {{cpu: 10m, memory: 32Mi}}, limits: {{memory: 512Mi}}}}
  config:
    kafka: {{session_timeout: 10s, commit_interval: 1s}}
    elasticsearch: {{template: {{name: {prefix}}}}}
    batch: {{linger: 200ms}}
setup:
  resources: {{requests: {{cpu: 10m, memory: 32Mi}}}}
"#,
            checkpoints = checkpoints.path().display()
        ),
    );
    let values_arg = values.display().to_string();
    let chart_arg = chart.path().display().to_string();
    kubectl(&["create", "namespace", "logging"]);

    // helm install --wait: the setup Job runs for real (topics, template), then the DaemonSet and
    // the Deployment become ready (the shipper's /readyz needs the topic).
    let install_started = Instant::now();
    chart
        .helm(&["install", "sluice", &chart_arg, "-n", "logging", "-f", &values_arg, "--wait", "--timeout", "400s"])
        .ok();
    eprintln!("[node] helm install --wait in {:.1} s", install_started.elapsed().as_secs_f64());
    let template = es.http.get(format!("{}/_index_template/{prefix}", es.url)).send().await.expect("ES");
    assert!(template.status().is_success(), "the setup hook installed no index template");

    // The demo workload: numbered lines; SIGTERM writes a stop line with the last number.
    let demo = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: demo, namespace: demo}
spec:
  replicas: 1
  selector: {matchLabels: {app: demo}}
  template:
    metadata: {labels: {app: demo, tier: test}}
    spec:
      terminationGracePeriodSeconds: 10
      containers:
        - name: writer
          image: sluice/sluice:dev
          imagePullPolicy: Never
          command: ["bash", "-c", "i=0; trap 'echo \"demo-stop $HOSTNAME $i\"; exit 0' TERM; while true; do i=$((i+1)); echo \"demo-line $HOSTNAME $i\"; sleep 0.05; done"]
"#;
    chart.kubectl(&["apply", "-f", "-"], Some(demo)).ok();
    let pod_json = |name: &str| -> Value {
        serde_json::from_str(&kubectl(&["-n", "demo", "get", "pod", name, "-o", "json"])).expect("pod JSON")
    };
    let running_demo_pod = || {
        let out = kubectl(&["-n", "demo", "get", "pods", "-o", "json"]);
        let list: Value = serde_json::from_str(&out).expect("JSON");
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null())
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned())
    };
    let first = wait_for("demo pod 1 running", Duration::from_secs(120), || async {
        running_demo_pod().ok_or_else(|| "no running demo pod".to_owned())
    })
    .await;
    let first_pod = pod_json(&first);

    // Lines arrive with the pod watch's metadata.
    let docs = wait_for("first 100 lines of pod 1 indexed", Duration::from_secs(180), || async {
        let docs = es.demo_docs().await?;
        let n = tally(&docs).get(&first).map_or(0, |t| t.0.len());
        if n >= 100 { Ok(docs) } else { Err(format!("{n} lines")) }
    })
    .await;
    let doc = docs.iter().find(|d| d["kubernetes"]["pod"]["name"] == first.as_str()).expect("a doc of pod 1");
    let k = &doc["kubernetes"];
    assert_eq!(k["namespace"], "demo", "{doc}");
    assert_eq!(k["pod"]["uid"], first_pod["metadata"]["uid"], "{doc}");
    assert_eq!(k["labels"]["app"], "demo", "labels from the pod watch: {doc}");
    assert_eq!(k["labels"]["tier"], "test", "{doc}");
    assert_eq!(k["owner"]["kind"], "Deployment", "{doc}");
    assert_eq!(k["owner"]["name"], "demo", "{doc}");
    assert_eq!(k["node"]["name"], node.name.as_str(), "{doc}");
    assert_eq!(k["container"]["name"], "writer", "{doc}");
    assert_eq!(doc["container"]["image"]["name"], IMAGE, "{doc}");
    assert_eq!(doc["container"]["runtime"], "containerd", "{doc}");
    let container_id = first_pod["status"]["containerStatuses"][0]["containerID"].as_str().unwrap();
    assert_eq!(format!("containerd://{}", doc["container"]["id"].as_str().unwrap_or_default()), container_id, "{doc}");
    let from_path = docs
        .iter()
        .filter(|d| d["tags"].as_array().is_some_and(|t| t.iter().any(|t| t == "metadata_from_path")))
        .count();
    assert_eq!(from_path, 0, "every record enriched by the pod watch");

    // Mid-stream: restart the shipper pod (the DaemonSet makes a new one; checkpoint on the hostPath).
    let shipper_pods =
        kubectl(&["-n", "logging", "get", "pods", "-l", "app.kubernetes.io/component=shipper", "-o", "name"]);
    let shipper_pod = shipper_pods.lines().next().expect("a shipper pod").to_owned();
    kubectl(&["-n", "logging", "delete", &shipper_pod, "--wait=true", "--timeout=60s"]);
    chart.kubectl(&["-n", "logging", "rollout", "status", "daemonset/sluice-shipper", "--timeout=180s"], None).ok();
    eprintln!("[node] shipper pod restarted");

    // Mid-stream: delete the demo pod; its successor writes on.
    kubectl(&["-n", "demo", "delete", "pod", &first, "--wait=false"]);
    let second = wait_for("demo pod 2 running", Duration::from_secs(120), || async {
        running_demo_pod().filter(|p| *p != first).ok_or_else(|| "no second pod".to_owned())
    })
    .await;

    // Scale the indexer 1 → 3 by helm upgrade while pod 2 writes: the group rebalances.
    let upgrade_started = Instant::now();
    chart
        .helm(&[
            "upgrade",
            "sluice",
            &chart_arg,
            "-n",
            "logging",
            "--reuse-values",
            "--set",
            "indexer.replicas=3",
            "--wait",
            "--timeout",
            "300s",
        ])
        .ok();
    eprintln!("[node] helm upgrade to 3 indexers in {:.1} s", upgrade_started.elapsed().as_secs_f64());
    let indexer_ips: Vec<String> = kubectl(&[
        "-n",
        "logging",
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/component=indexer",
        "-o",
        "jsonpath={range .items[*]}{.status.podIP}{\"\\n\"}{end}",
    ])
    .lines()
    .map(str::to_owned)
    .collect();
    assert_eq!(indexer_ips.len(), 3, "{indexer_ips:?}");
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    wait_for("3 partitions spread over 3 indexers", Duration::from_secs(120), || async {
        let mut owned = Vec::new();
        for ip in &indexer_ips {
            let text = http
                .get(format!("http://{ip}:9465/metrics"))
                .send()
                .await
                .map_err(|e| e.to_string())?
                .text()
                .await
                .map_err(|e| e.to_string())?;
            let n = text
                .lines()
                .find(|l| l.starts_with("sluice_indexer_assigned_partitions"))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .unwrap_or(-1.0);
            owned.push(n);
        }
        if owned.iter().all(|n| *n == 1.0) {
            Ok(())
        } else {
            Err(format!("assigned partitions per replica: {owned:?}"))
        }
    })
    .await;

    // Let pod 2 write a few more seconds, then stop it (its stop line ends the stream).
    wait_for("pod 2 lines indexed after the rebalance", Duration::from_secs(120), || async {
        let docs = es.demo_docs().await?;
        let n = tally(&docs).get(&second).map_or(0, |t| t.0.len());
        if n >= 100 { Ok(()) } else { Err(format!("{n} lines of pod 2")) }
    })
    .await;
    kubectl(&["-n", "demo", "scale", "deployment", "demo", "--replicas=0"]);

    // Every line of both pods once: 0 lost, 0 duplicated.
    let pods = vec![first.clone(), second.clone()];
    wait_for("every line of both demo pods exactly once", Duration::from_secs(240), || async {
        let docs = es.demo_docs().await?;
        complete(&docs, &pods).map(|()| docs.len())
    })
    .await;
    let docs = es.demo_docs().await.expect("docs");
    let t = tally(&docs);
    eprintln!(
        "[node] pod 1: {} lines, pod 2: {} lines, all once; total test time {:.1} s",
        t[&first].0.len(),
        t[&second].0.len(),
        test_started.elapsed().as_secs_f64()
    );
    let second_doc = docs.iter().find(|d| d["kubernetes"]["pod"]["name"] == second.as_str()).unwrap();
    assert_ne!(second_doc["kubernetes"]["pod"]["uid"], first_pod["metadata"]["uid"]);
    assert_eq!(second_doc["kubernetes"]["labels"]["app"], "demo");

    chart.helm(&["uninstall", "sluice", "-n", "logging", "--wait", "--timeout", "120s"]).ok();
}

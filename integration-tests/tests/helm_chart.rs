//! The Helm chart `deploy/helm/sluice` against a **real** kube-apiserver (issue 13):
//!
//! 1. `helm lint --strict`, then `helm template` of every values file of `deploy/helm/sluice/ci/`
//!    (default, external Kafka, KEDA, TLS + SASL, monitoring) applied with
//!    `kubectl apply --dry-run=server` to a real apiserver that has the KEDA and
//!    Prometheus-operator CRDs (from their Go modules' manifests), so the optional objects are
//!    validated too; the rendered configuration files pass the binaries' own `--check-config`;
//!    the chart refuses unsafe values with a reason.
//! 2. A real `helm install` (the setup hook runs as a Job object), `kubectl auth can-i` for the
//!    shipper's ServiceAccount, `helm upgrade` with a changed value rolls the config checksum of the
//!    changed component only, `helm uninstall` removes everything.
//!
//! Needs `./dev k8s build` (helm, kubectl, etcd, kube-apiserver, CRDs in the machine-wide cache)
//! and the workspace binaries (`cargo build --workspace --bins`, as `./dev test` does).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_integration_tests::helm::{Chart, crd_dir, documents, find, kinds, run};
use sluice_integration_tests::kube::{ControlPlane, KubeUser};

/// The values files every combination is validated with (name, file, extra helm args).
fn combinations() -> Vec<(&'static str, Option<PathBuf>, Vec<&'static str>)> {
    let monitoring_apis = vec![
        "--api-versions",
        "monitoring.coreos.com/v1/ServiceMonitor",
        "--api-versions",
        "monitoring.coreos.com/v1/PodMonitor",
        "--api-versions",
        "monitoring.coreos.com/v1/PrometheusRule",
    ];
    vec![
        ("default", None, vec![]),
        ("external-kafka", Some(Chart::ci_values("external-kafka.yaml")), vec![]),
        ("keda", Some(Chart::ci_values("keda.yaml")), vec![]),
        ("tls-sasl", Some(Chart::ci_values("tls-sasl.yaml")), vec![]),
        ("monitoring", Some(Chart::ci_values("monitoring.yaml")), monitoring_apis),
    ]
}

/// A binary of the workspace next to the test executable (`target/<profile>/`), refused when older
/// than its sources.
fn workspace_binary(name: &str) -> PathBuf {
    sluice_integration_tests::binaries::workspace_binary(name)
}

/// Installs the CRDs of the optional objects and waits until they are served.
fn install_crds(chart: &Chart) {
    let dir = crd_dir();
    assert!(dir.join("complete").is_file(), "{} is missing: run ./dev k8s build", dir.display());
    // Server-side: the Prometheus-operator CRDs are larger than the last-applied annotation allows.
    chart.kubectl(&["apply", "--server-side", "-f", dir.to_str().unwrap()], None).ok();
    chart.kubectl(&["wait", "--for=condition=Established", "--timeout=120s", "crd", "--all"], None).ok();
}

/// The rendered config file of ConfigMap `name`, key `key`, checked with `<binary> --check-config`.
fn check_config(docs: &[Value], name: &str, key: &str, binary: &str, env: &[(&str, &str)]) {
    let rendered = find(docs, "ConfigMap", name)["data"][key].as_str().expect("config text").to_owned();
    let dir = tempfile::tempdir().expect("temp dir");
    // The files the pod mounts from Secrets (`/etc/sluice/…`: CA, client certificate) exist in the
    // pod only; `--check-config` reads them, so they are stood in for under the temp dir.
    let mounts = dir.path().join("mounts");
    let text = rendered.replace("/etc/sluice/", &format!("{}/", mounts.display()));
    for word in text.split_whitespace().filter(|w| w.starts_with(mounts.to_str().unwrap())) {
        let path = Path::new(word.trim_matches(|c| c == '"' || c == ','));
        std::fs::create_dir_all(path.parent().unwrap()).expect("mount dir");
        std::fs::write(path, "mounted from a Secret in the pod\n").expect("mount file");
    }
    let file = dir.path().join(key);
    std::fs::write(&file, &text).expect("write config");
    let result = run(
        &workspace_binary(binary),
        &["--config", file.to_str().unwrap(), "--check-config"],
        env,
        None,
        Duration::from_secs(30),
    );
    assert!(
        result.success,
        "{binary} --check-config refused the chart's {key}:\n{rendered}\n{}{}",
        result.stdout, result.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_lints_renders_and_every_values_combination_validates_server_side() {
    let started = Instant::now();
    let cp = ControlPlane::start().await;
    let chart = Chart::prepare().with_kubeconfig(cp.kubeconfig(KubeUser::Admin));
    let chart_path = chart.path();
    let chart_arg = chart_path.to_str().unwrap();

    // Lint, strict, with every values file.
    chart.helm(&["lint", "--strict", chart_arg]).ok();
    for (name, values, _) in combinations() {
        if let Some(values) = values {
            let out = chart.helm(&["lint", "--strict", chart_arg, "-f", values.to_str().unwrap()]);
            assert!(out.success, "helm lint --strict with {name}: {}{}", out.stdout, out.stderr);
        }
    }

    install_crds(&chart);
    chart.kubectl(&["create", "namespace", "logging"], None).ok();

    for (name, values, extra) in combinations() {
        let values: Vec<&Path> = values.iter().map(PathBuf::as_path).collect();
        let rendered = chart.template("sluice", "logging", &values, &extra).ok();
        let docs = documents(&rendered);
        eprintln!("[helm] {name}: {} objects: {:?}", docs.len(), kinds(&docs));
        // The real apiserver validates every object (types, unknown fields, selectors, CRD schemas).
        let applied = chart.kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&rendered));
        assert!(
            applied.success,
            "kubectl apply --dry-run=server refused the {name} rendering:\n{}{}",
            applied.stdout, applied.stderr
        );
        assert!(
            applied.stdout.lines().filter(|l| l.contains("(server dry run)")).count() == docs.len(),
            "not every object was validated:\n{}",
            applied.stdout
        );

        // What each combination must contain.
        let has = |kind: &str| docs.iter().any(|d| d["kind"] == kind);
        assert!(has("DaemonSet") && has("Deployment") && has("Job") && has("PodDisruptionBudget"), "{name}");
        assert_eq!(has("StatefulSet"), !matches!(name, "external-kafka" | "tls-sasl"), "{name}: Kafka dependency");
        assert_eq!(has("ScaledObject"), matches!(name, "keda" | "tls-sasl"), "{name}: ScaledObject");
        assert_eq!(has("TriggerAuthentication"), name == "tls-sasl", "{name}: TriggerAuthentication");
        assert_eq!(has("HorizontalPodAutoscaler"), name == "monitoring", "{name}: HPA");
        assert_eq!(has("ServiceMonitor"), name == "monitoring", "{name}: ServiceMonitor");
        assert_eq!(has("PodMonitor"), name == "monitoring", "{name}: PodMonitor");
        assert_eq!(has("PrometheusRule"), name == "monitoring", "{name}: PrometheusRule");

        // The rendered files are what the binaries accept (secrets arrive as environment).
        let sasl_env: &[(&str, &str)] = if name == "tls-sasl" {
            &[("SLUICE_KAFKA__SECURITY__SASL__USERNAME", "sluice"), ("SLUICE_KAFKA__SECURITY__SASL__PASSWORD", "pw")]
        } else {
            &[]
        };
        check_config(&docs, "sluice-shipper", "shipper.yaml", "sluice-shipper", sasl_env);
        check_config(&docs, "sluice-indexer", "indexer.yaml", "sluice-indexer", sasl_env);
        check_config(&docs, "sluice-setup", "indexer.yaml", "sluice-indexer", sasl_env);

        // Shipper pod: read-only logs, writable per-node checkpoint, downward-API node name,
        // read-only root filesystem with every capability dropped, probes.
        let ds = find(&docs, "DaemonSet", "sluice-shipper");
        let pod = &ds["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let mounts = container["volumeMounts"].as_array().unwrap();
        let mount = |path: &str| mounts.iter().find(|m| m["mountPath"] == path).unwrap_or_else(|| panic!("{path}"));
        assert_eq!(mount("/var/log")["readOnly"], true);
        assert_ne!(mount("/var/lib/sluice")["readOnly"], true);
        assert!(
            container["env"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["name"] == "NODE_NAME" && e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName")
        );
        assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(container["securityContext"]["capabilities"]["drop"][0], "ALL");
        assert!(container["securityContext"]["capabilities"].get("add").is_none());
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(pod["tolerations"][0]["operator"], "Exists");
        assert!(ds["spec"]["template"]["metadata"]["annotations"]["checksum/config"].is_string());

        // Indexer: graceful termination longer than the revoke timeout, anti-affinity.
        let deployment = find(&docs, "Deployment", "sluice-indexer");
        let grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"].as_i64().unwrap();
        assert!(grace > 20 + 5, "{name}: terminationGracePeriodSeconds {grace}");
        assert!(deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"].is_object());

        if name == "tls-sasl" {
            // Secrets by reference only: no credential in any rendered object.
            assert!(!rendered.contains("kind: Secret\n"), "the chart must not create Secrets");
            let env = container["env"].as_array().unwrap();
            let password =
                env.iter().find(|e| e["name"] == "SLUICE_KAFKA__SECURITY__SASL__PASSWORD").expect("SASL env");
            assert_eq!(password["valueFrom"]["secretKeyRef"]["name"], "sluice-kafka-user");
            let shipper_yaml = find(&docs, "ConfigMap", "sluice-shipper")["data"]["shipper.yaml"].as_str().unwrap();
            let shipper_cfg: serde_json::Value = serde_yaml_ng::from_str(shipper_yaml).expect("shipper.yaml");
            let security = &shipper_cfg["kafka"]["security"];
            assert_eq!(security["protocol"], "sasl_ssl", "{shipper_yaml}");
            assert_eq!(security["tls"]["ca_file"], "/etc/sluice/kafka-ca/ca.crt", "{shipper_yaml}");
            assert_eq!(security["sasl"]["mechanism"], "scram-sha-512", "{shipper_yaml}");
            // Security is configured in one place: nothing of it in the librdkafka properties.
            assert!(!shipper_yaml.contains("security.protocol") && !shipper_yaml.contains("ssl."), "{shipper_yaml}");
            let so = find(&docs, "ScaledObject", "sluice-indexer");
            assert_eq!(so["spec"]["triggers"][0]["metadata"]["sasl"], "scram_sha512");
            // Namespace labels on: the extra ClusterRole on namespaces.
            find(&docs, "ClusterRole", "sluice-shipper-namespaces");
        }
        if name == "external-kafka" {
            // Topic durability reaches the setup hook's configuration.
            let setup_yaml = find(&docs, "ConfigMap", "sluice-setup")["data"]["indexer.yaml"].as_str().unwrap();
            let setup_cfg: serde_json::Value = serde_yaml_ng::from_str(setup_yaml).expect("indexer.yaml");
            assert_eq!(setup_cfg["kafka"]["replication_factor"], 3, "{setup_yaml}");
            assert_eq!(setup_cfg["kafka"]["min_insync_replicas"], 2, "{setup_yaml}");
        }
        if name == "keda" {
            let so = find(&docs, "ScaledObject", "sluice-indexer");
            assert!(so["spec"]["maxReplicaCount"].as_i64().unwrap() <= 12, "maxReplicas ≤ partitions");
            assert_eq!(so["spec"]["triggers"][0]["metadata"]["consumerGroup"], "sluice-indexer");
            assert!(deployment["spec"].get("replicas").is_none(), "KEDA owns the replica count");
        }
    }

    // Unsafe values are refused with a reason (the tests above would pass with a chart that
    // accepted anything; these would not).
    let refused = |set: &[&str], expect: &str| {
        let mut args = vec![];
        for s in set {
            args.push("--set");
            args.push(*s);
        }
        let out = chart.template("sluice", "logging", &[], &args).fails();
        assert!(out.contains(expect), "--set {set:?}: expected `{expect}` in:\n{out}");
    };
    refused(
        &["indexer.autoscaling.enabled=true", "indexer.autoscaling.maxReplicas=13"],
        "must not exceed topics.partitions",
    );
    refused(&["indexer.replicas=20"], "must not exceed topics.partitions");
    refused(&["topics.replicationFactor=2", "topics.minInsyncReplicas=3"], "must not exceed topics.replicationFactor");
    refused(&["indexer.terminationGracePeriodSeconds=20"], "must exceed indexer.revokeTimeoutSeconds");
    refused(&["indexer.replica=3"], "additional properties 'replica' not allowed");
    refused(&["kafka.enabled=false"], "needs externalKafka.brokers");
    refused(&["kafkaClient.sasl.enabled=true"], "needs kafkaClient.sasl.secret.name");
    refused(&["externalKafka.brokers={not-a-host-port}"], "/externalKafka/brokers/0");
    // The server refuses what the schema cannot see: a broken selector would be caught here.
    let broken = chart.template("sluice", "logging", &[], &["--set", "shipper.updateStrategy.type=Sideways"]).ok();
    let applied = chart.kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&broken));
    assert!(!applied.success && applied.stderr.contains("updateStrategy"), "{}{}", applied.stdout, applied.stderr);

    eprintln!(
        "[helm] lint + {} combinations validated server-side in {:.1} s",
        combinations().len(),
        started.elapsed().as_secs_f64()
    );
}

/// Completes the setup hook's Job (status subresource) whenever one is waiting: this control
/// plane has no kubelet to run it, and `helm install` waits for its hooks. The Job object itself,
/// as the chart made it, is what the test checks; the real run is in the node test.
fn complete_hook_jobs(chart: &Chart, namespace: &str, name: &str, seen: &Arc<AtomicBool>, stop: &Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let got = chart.kubectl(&["-n", namespace, "get", "job", name, "-o", "json"], None);
        if got.success {
            let job: Value = serde_json::from_str(&got.stdout).expect("job JSON");
            let complete = job["status"]["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == "Complete" && c["status"] == "True"));
            if !complete {
                let args = job["spec"]["template"]["spec"]["containers"][0]["args"].clone();
                assert_eq!(
                    args,
                    serde_json::json!(["sluice-indexer", "--config", "/etc/sluice/indexer.yaml", "setup"])
                );
                let hook = &job["metadata"]["annotations"]["helm.sh/hook"];
                assert_eq!(hook, "pre-install,pre-upgrade");
                seen.store(true, Ordering::Relaxed);
                let now = "2026-01-01T00:00:00Z";
                let status = serde_json::json!({"status": {
                "startTime": now, "completionTime": now, "succeeded": 1, "active": 0,
                "conditions": [
                    {"type": "SuccessCriteriaMet", "status": "True", "lastProbeTime": now, "lastTransitionTime": now},
                    {"type": "Complete", "status": "True", "lastProbeTime": now, "lastTransitionTime": now}
                ]}});
                let patched = chart.kubectl(
                    &[
                        "-n",
                        namespace,
                        "patch",
                        "job",
                        name,
                        "--subresource=status",
                        "--type=merge",
                        "-p",
                        &status.to_string(),
                    ],
                    None,
                );
                if !patched.success {
                    eprintln!("[helm] patching the hook Job's status failed (retrying): {}", patched.stderr);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `checksum/config` of the pod templates of the shipper DaemonSet and the indexer Deployment.
fn checksums(chart: &Chart, namespace: &str, fullname: &str) -> (String, String) {
    let get = |kind: &str, name: &str| {
        let out = chart.kubectl(&["-n", namespace, "get", kind, name, "-o", "json"], None).ok();
        let obj: Value = serde_json::from_str(&out).expect("JSON");
        obj["spec"]["template"]["metadata"]["annotations"]["checksum/config"].as_str().expect("checksum").to_owned()
    };
    (get("daemonset", &format!("{fullname}-shipper")), get("deployment", &format!("{fullname}-indexer")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_upgrade_and_uninstall_on_a_real_apiserver() {
    let started = Instant::now();
    let cp = ControlPlane::start().await;
    let chart = Arc::new(Chart::prepare().with_kubeconfig(cp.kubeconfig(KubeUser::Admin)));
    let (ns, release) = ("logging", "pipeline");
    let fullname = "pipeline-sluice";
    let sa = format!("system:serviceaccount:{ns}:{fullname}-shipper");
    chart.kubectl(&["create", "namespace", ns], None).ok();
    let chart_path = chart.path();
    let chart_arg = chart_path.to_str().unwrap().to_owned();

    let hook_seen = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let completer = {
        let (chart, seen, stop) = (chart.clone(), hook_seen.clone(), stop.clone());
        let job = format!("{fullname}-setup");
        std::thread::spawn(move || complete_hook_jobs(&chart, ns, &job, &seen, &stop))
    };

    // Install: every object of the manifest exists afterwards.
    let install_started = Instant::now();
    chart.helm(&["install", release, &chart_arg, "-n", ns, "--set", "image.tag=dev", "--timeout", "150s"]).ok();
    eprintln!("[helm] install took {:.1} s", install_started.elapsed().as_secs_f64());
    assert!(hook_seen.load(Ordering::Relaxed), "the setup hook never ran as a Job");
    let manifest = chart.helm(&["get", "manifest", release, "-n", ns]).ok();
    let docs = documents(&manifest);
    assert!(docs.len() >= 15, "{:?}", kinds(&docs));
    let listed = chart.kubectl(&["get", "-f", "-", "-o", "name"], Some(&manifest)).ok();
    assert_eq!(listed.lines().count(), docs.len(), "every object of the release exists:\n{listed}");
    for expected in [
        "daemonset.apps/pipeline-sluice-shipper",
        "deployment.apps/pipeline-sluice-indexer",
        "statefulset.apps/pipeline-kafka",
        "poddisruptionbudget.policy/pipeline-sluice-indexer",
        "clusterrole.rbac.authorization.k8s.io/pipeline-sluice-shipper",
    ] {
        assert!(listed.lines().any(|l| l == expected), "{expected} missing:\n{listed}");
    }
    // The hook's objects are gone once it succeeded (delete policy hook-succeeded).
    assert!(!chart.kubectl(&["-n", ns, "get", "job", &format!("{fullname}-setup")], None).success);
    assert!(!chart.kubectl(&["-n", ns, "get", "configmap", &format!("{fullname}-setup")], None).success);

    // The shipper's ServiceAccount may get/list/watch pods, and nothing more.
    let can_i = |verb: &str, resource: &str, extra: &[&str]| -> bool {
        let mut args = vec!["auth", "can-i", verb];
        args.extend(resource.split(' '));
        args.extend(["--as", sa.as_str()]);
        args.extend_from_slice(extra);
        let out = chart.kubectl(&args, None);
        match out.stdout.trim() {
            "yes" => true,
            "no" => false,
            other => panic!("kubectl auth can-i {verb} {resource}: {other} {}", out.stderr),
        }
    };
    for verb in ["get", "list", "watch"] {
        assert!(can_i(verb, "pods", &["-A"]), "{verb} pods");
    }
    for (verb, resource) in [
        ("create", "pods"),
        ("delete", "pods"),
        ("get", "pods --subresource=log"),
        ("create", "pods --subresource=exec"),
        ("get", "secrets"),
        ("list", "configmaps"),
        ("watch", "namespaces"),
        ("get", "nodes"),
        ("list", "replicasets.apps"),
        ("list", "events"),
    ] {
        assert!(!can_i(verb, resource, &["-A"]), "the shipper must not {verb} {resource}");
    }
    let listing = chart.kubectl(&["auth", "can-i", "--list", "--as", &sa, "-n", ns], None).ok();
    let granted: Vec<&str> =
        listing.lines().skip(1).filter(|l| !l.contains("selfsubject") && !l.trim_start().starts_with('[')).collect();
    assert_eq!(granted.len(), 1, "only pods:\n{listing}");
    assert!(granted[0].starts_with("pods ") && granted[0].contains("[get list watch]"), "{listing}");

    // Upgrade with a changed shipper value: the shipper's pod template checksum changes (a
    // rollout), the indexer's does not.
    let (shipper_before, indexer_before) = checksums(&chart, ns, fullname);
    hook_seen.store(false, Ordering::Relaxed);
    chart
        .helm(&[
            "upgrade",
            release,
            &chart_arg,
            "-n",
            ns,
            "--reuse-values",
            "--set",
            "shipper.config.limits.inflight_bytes=8MiB",
            "--timeout",
            "150s",
        ])
        .ok();
    assert!(hook_seen.load(Ordering::Relaxed), "the setup hook did not run again before the upgrade");
    let (shipper_after, indexer_after) = checksums(&chart, ns, fullname);
    assert_ne!(shipper_before, shipper_after, "a changed shipper config must roll the shipper pods");
    assert_eq!(indexer_before, indexer_after, "the indexer config did not change");
    let cm = chart.kubectl(&["-n", ns, "get", "configmap", &format!("{fullname}-shipper"), "-o", "json"], None).ok();
    assert!(cm.contains("inflight_bytes: 8MiB"), "{cm}");
    // And an indexer value rolls the indexer.
    chart
        .helm(&[
            "upgrade",
            release,
            &chart_arg,
            "-n",
            ns,
            "--reuse-values",
            "--set",
            "indexer.config.batch.max_docs=5000",
        ])
        .ok();
    let (shipper_third, indexer_third) = checksums(&chart, ns, fullname);
    assert_eq!(shipper_after, shipper_third);
    assert_ne!(indexer_after, indexer_third);

    // Uninstall removes every object (namespaced and cluster-scoped; hook objects are gone already).
    chart.helm(&["uninstall", release, "-n", ns, "--wait", "--timeout", "120s"]).ok();
    stop.store(true, Ordering::Relaxed);
    completer.join().expect("hook completer");
    let left = chart.kubectl(&["get", "-f", "-", "-o", "name", "--ignore-not-found"], Some(&manifest)).ok();
    assert!(left.trim().is_empty(), "left behind after uninstall:\n{left}");
    let labelled = chart
        .kubectl(
            &[
                "get",
                "all,configmaps,serviceaccounts,pdb,clusterroles,clusterrolebindings,jobs",
                "-A",
                "-l",
                &format!("app.kubernetes.io/instance={release}"),
                "-o",
                "name",
            ],
            None,
        )
        .ok();
    assert!(labelled.trim().is_empty(), "objects of the release left:\n{labelled}");
    let releases = chart.helm(&["list", "-n", ns, "-a", "-q"]).ok();
    assert!(releases.trim().is_empty(), "{releases}");

    eprintln!("[helm] install/upgrade×2/uninstall + can-i in {:.1} s", started.elapsed().as_secs_f64());
}

//! Issue 14, Security: the whole pipeline against a Kafka broker with SASL_SSL (SCRAM-SHA-512) +
//! mutual TLS + ACLs and an Elasticsearch with TLS + file-realm users, every component holding
//! only the privileges `docs/security.md` lists; a wrong password, an unknown CA and a missing ACL
//! each give one clear error naming the cause, and no record is lost once it is fixed; an
//! Elasticsearch role lacking a right makes the indexer refuse to run; no secret appears in any
//! output of any binary.
//!
//! One test function on purpose: the secured broker and node take ~30 s to start on a loaded
//! machine, so the scenarios share them (each step says which one failed).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use sluice_integration_tests::secure::{SecureKafka, add_search_users};
use sluice_integration_tests::{Search, free_port, search_secured, unique_name};

// Every secret of the test is a distinctive string, grepped for in every output at the end.
const SHIPPER_PW: &str = "shipperPW-7f3a9c";
const INDEXER_PW: &str = "indexerPW-52be10";
const SETUP_PW: &str = "setupPW-c0ffee42";
const ES_INDEXER_PW: &str = "esIndexerPW-91d2";
const ES_SETUP_PW: &str = "esSetupPW-4e77a1";
const ES_WEAK_PW: &str = "esWeakPW-0b5e8d";
const WRONG_PW: &str = "wrongPW-6a6a6a";
const VIEWER_PW: &str = "viewerPW-3d9e61";
const ES_VIEWER_PW: &str = "esViewerPW-77c1f0";
const SECRETS: &[&str] =
    &[SHIPPER_PW, INDEXER_PW, SETUP_PW, ES_INDEXER_PW, ES_SETUP_PW, ES_WEAK_PW, WRONG_PW, VIEWER_PW, ES_VIEWER_PW];

const ES_ROLES: &str = "\
sluice_setup:
  cluster: [monitor, manage_index_templates]
sluice_indexer:
  cluster: [monitor]
  indices:
    - names: ['sec-logs-*']
      privileges: [create_doc, create_index]
sluice_indexer_weak:
  cluster: [monitor]
  indices:
    - names: ['sec-logs-*']
      privileges: [create_doc]
sluice_viewer:
  cluster: [monitor]
  indices:
    - names: ['sec-logs-*']
      privileges: [read, view_index_metadata]
";

/// A binary next to the test executable (`target/<profile>/`; `./dev test` builds them first).
fn bin(name: &str) -> PathBuf {
    sluice_integration_tests::binaries::workspace_binary(name)
}

type Env = Vec<(String, String)>;

fn set(env: &mut Env, key: &str, value: impl Into<String>) {
    env.retain(|(k, _)| k != key);
    env.push((key.to_owned(), value.into()));
}

/// Everything every output of the test, to grep for secrets at the end.
#[derive(Default)]
struct Outputs(Vec<(String, String)>);

impl Outputs {
    fn add(&mut self, what: &str, text: impl Into<String>) {
        self.0.push((what.to_owned(), text.into()));
    }

    fn assert_no_secret(&self) {
        for (what, text) in &self.0 {
            for secret in SECRETS {
                assert!(!text.contains(secret), "the secret {secret} appears in the output of {what}:\n{text}");
            }
        }
    }
}

fn run(binary: &str, args: &[&str], env: &Env) -> Output {
    Command::new(bin(binary))
        .args(args)
        .env_clear()
        .envs(env.iter().cloned())
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .unwrap_or_else(|e| panic!("run {binary}: {e}"))
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A running binary; killed when dropped. Its stdout and stderr go to one log file.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    metrics: String,
}

impl Proc {
    fn spawn(binary: &str, args: &[&str], env: &Env, dir: &Path) -> Proc {
        let name = unique_name(binary);
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let metrics = format!("127.0.0.1:{}", free_port());
        let child = Command::new(bin(binary))
            .args(args)
            .env_clear()
            .envs(env.iter().cloned())
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("SLUICE_METRICS__LISTEN", &metrics)
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {binary}: {e}"));
        Proc { name, child, log, metrics }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `(status, body)` of `/readyz`, `None` while the server is not up.
    async fn readyz(&self) -> Option<(u16, String)> {
        let reply = reqwest::get(format!("http://{}/readyz", self.metrics)).await.ok()?;
        let status = reply.status().as_u16();
        Some((status, reply.text().await.unwrap_or_default()))
    }

    /// Waits until `/readyz` answers 503 with a body containing `needle`.
    async fn wait_not_ready_with(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((503, body)) = self.readyz().await
                && body.contains(needle)
            {
                return body;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited ({status}) before /readyz said `{needle}`:\n{}", self.name, self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "{}: /readyz never said `{needle}` (last: {:?}):\n{}",
                self.name,
                self.readyz().await,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// The value of a counter/gauge sample line starting with `prefix` (summed), from `/metrics`.
    async fn metric(&self, prefix: &str) -> f64 {
        let Ok(reply) = reqwest::get(format!("http://{}/metrics", self.metrics)).await else { return 0.0 };
        let body = reply.text().await.unwrap_or_default();
        body.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
    }

    /// SIGTERM, then waits for the exit (killed after 30 s).
    fn stop(mut self) -> String {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return self.log_text();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.log_text()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes CRI lines `first..first+n` to the container log (appending).
fn write_lines(file: &Path, first: usize, n: usize) {
    use std::io::Write;
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(file).unwrap();
    let mut text = String::new();
    for i in first..first + n {
        text.push_str(&format!("2026-12-02T10:00:00.{i:09}Z stdout F secure line {i}\n"));
    }
    f.write_all(text.as_bytes()).unwrap();
}

/// Waits until the log indices hold `n` documents.
async fn wait_for_docs(search: &Search, n: u64, what: &str, procs: &[&Proc]) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, count) = search.request(elasticsearch::http::Method::Get, "/sec-logs-*/_count", None).await;
        let count = count["count"].as_u64().unwrap_or(0);
        if count == n {
            return;
        }
        assert!(count < n, "{what}: {count} documents, more than {n}: duplicates");
        if Instant::now() > deadline {
            let logs: Vec<String> = procs.iter().map(|p| format!("--- {}\n{}", p.name, p.log_text())).collect();
            panic!("{what}: {count} of {n} documents indexed after 120 s\n{}", logs.join("\n"));
        }
        let _ = search.request(elasticsearch::http::Method::Post, "/sec-logs-*/_refresh", None).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

fn grants(args: &[&[&str]]) -> Vec<Vec<String>> {
    args.iter().map(|a| a.iter().map(|s| s.to_string()).collect()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_with_least_privileges_and_clear_security_errors() {
    let started = Instant::now();
    let (kafka, search) = tokio::join!(
        SecureKafka::start(&[
            ("shipper", SHIPPER_PW),
            ("indexer", INDEXER_PW),
            ("setup", SETUP_PW),
            ("viewer", VIEWER_PW)
        ]),
        search_secured("elastic-admin", "adminPW-123456"),
    );
    let (topic, dlq, group) = ("sec.logs", "sec.logs.dlq", "sec-indexer");
    kafka
        .acl(&grants(&[
            &[
                "--allow-principal",
                "User:setup",
                "--operation",
                "Create",
                "--operation",
                "Describe",
                "--operation",
                "DescribeConfigs",
                "--topic",
                topic,
                "--topic",
                dlq,
            ],
            &["--allow-principal", "User:shipper", "--operation", "Write", "--operation", "Describe", "--topic", topic],
            &["--allow-principal", "User:indexer", "--consumer", "--topic", topic, "--group", group],
            &["--allow-principal", "User:indexer", "--operation", "Write", "--operation", "Describe", "--topic", dlq],
        ]))
        .await;
    add_search_users(
        &search,
        ES_ROLES,
        &[
            ("setup", ES_SETUP_PW, "sluice_setup"),
            ("indexer", ES_INDEXER_PW, "sluice_indexer"),
            ("weak", ES_WEAK_PW, "sluice_indexer_weak"),
            ("viewer", ES_VIEWER_PW, "sluice_viewer"),
        ],
    )
    .await;
    eprintln!("services up and privileges granted in {:?}", started.elapsed());

    let tmp = tempfile::tempdir().unwrap();
    let secrets_dir = tmp.path().join("secrets");
    std::fs::create_dir_all(&secrets_dir).unwrap();
    let secret_file = |name: &str, value: &str| {
        let path = secrets_dir.join(name);
        std::fs::write(&path, format!("{value}\n")).unwrap();
        path.display().to_string()
    };
    let es_ca = tmp.path().join("es-ca.crt");
    std::fs::write(&es_ca, search.ca_pem.as_ref().unwrap()).unwrap();
    let pki = &kafka.pki;
    let mut outputs = Outputs::default();

    // The Kafka part every binary shares (`kafka.security.*`, the same keys everywhere).
    let kafka_env = |user: &str| -> Env {
        [
            ("SLUICE_KAFKA__BROKERS", kafka.bootstrap.clone()),
            ("SLUICE_KAFKA__TOPIC", topic.to_owned()),
            ("SLUICE_KAFKA__SECURITY__PROTOCOL", "sasl_ssl".to_owned()),
            ("SLUICE_KAFKA__SECURITY__TLS__CA_FILE", pki.path("ca.crt").display().to_string()),
            ("SLUICE_KAFKA__SECURITY__TLS__CERT_FILE", pki.path("client.crt").display().to_string()),
            ("SLUICE_KAFKA__SECURITY__TLS__KEY_FILE", pki.path("client.key").display().to_string()),
            ("SLUICE_KAFKA__SECURITY__SASL__USERNAME", user.to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    };
    let indexer_env = |kafka_user: &str, kafka_pw_file: String, es_user: &str| -> Env {
        let mut env = kafka_env(kafka_user);
        env.extend(
            [
                ("SLUICE_KAFKA__SECURITY__SASL__PASSWORD_FILE", kafka_pw_file),
                ("SLUICE_KAFKA__GROUP_ID", group.to_owned()),
                ("SLUICE_KAFKA__PARTITIONS", "2".to_owned()),
                ("SLUICE_KAFKA__REPLICATION_FACTOR", "1".to_owned()),
                ("SLUICE_KAFKA__SESSION_TIMEOUT", "10s".to_owned()),
                ("SLUICE_KAFKA__REVOKE_TIMEOUT", "5s".to_owned()),
                ("SLUICE_DEAD_LETTER__TOPIC", dlq.to_owned()),
                ("SLUICE_DEAD_LETTER__PARTITIONS", "1".to_owned()),
                ("SLUICE_ELASTICSEARCH__URLS", search.url.clone()),
                ("SLUICE_ELASTICSEARCH__TLS__CA_FILE", es_ca.display().to_string()),
                ("SLUICE_ELASTICSEARCH__AUTH__USERNAME", es_user.to_owned()),
                ("SLUICE_ELASTICSEARCH__INDEX", "sec-logs-%Y.%m.%d".to_owned()),
                ("SLUICE_ELASTICSEARCH__TEMPLATE__NAME", "sec-logs".to_owned()),
                ("SLUICE_ELASTICSEARCH__TEMPLATE__REPLICAS", "0".to_owned()),
                ("SLUICE_ELASTICSEARCH__TEMPLATE__REFRESH_INTERVAL", "1s".to_owned()),
                ("SLUICE_BATCH__LINGER", "100ms".to_owned()),
                ("RUST_LOG", "info,librdkafka=debug".to_owned()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v)),
        );
        env
    };

    // --- setup: topics (Kafka user `setup`: Create/Describe/DescribeConfigs on the two topics)
    // and the index template (Elasticsearch role sluice_setup: templates only).
    let mut setup_env = indexer_env("setup", secret_file("kafka-setup", SETUP_PW), "setup");
    set(&mut setup_env, "SLUICE_ELASTICSEARCH__AUTH__PASSWORD", ES_SETUP_PW);
    let out = run("sluice-indexer", &["setup"], &setup_env);
    outputs.add("sluice-indexer setup", text(&out));
    assert!(out.status.success(), "setup with least privileges failed:\n{}", text(&out));

    // --- setup with a wrong password: exit 1 with the cause, at once (no 30 s admin timeout).
    let mut wrong = setup_env.clone();
    set(&mut wrong, "SLUICE_KAFKA__SECURITY__SASL__PASSWORD_FILE", secret_file("wrong", WRONG_PW));
    let t = Instant::now();
    let out = run("sluice-indexer", &["setup"], &wrong);
    outputs.add("sluice-indexer setup (wrong password)", text(&out));
    assert!(!out.status.success());
    assert!(text(&out).contains("Kafka authentication failed for user `setup`"), "{}", text(&out));
    assert!(t.elapsed() < Duration::from_secs(25), "setup took {:?} to fail", t.elapsed());

    // --- setup with an unknown CA.
    let mut unknown_ca = setup_env.clone();
    set(&mut unknown_ca, "SLUICE_KAFKA__SECURITY__TLS__CA_FILE", pki.path("other-ca.crt").display().to_string());
    let out = run("sluice-indexer", &["setup"], &unknown_ca);
    outputs.add("sluice-indexer setup (unknown CA)", text(&out));
    assert!(!out.status.success());
    assert!(text(&out).contains("Kafka TLS handshake failed"), "{}", text(&out));

    // --- the indexer (Kafka: Read on topic + group, Write on the DLQ; Elasticsearch: create_doc +
    // create_index on sec-logs-*; templates are setup's job).
    let mut run_env = indexer_env("indexer", secret_file("kafka-indexer", INDEXER_PW), "indexer");
    set(&mut run_env, "SLUICE_ELASTICSEARCH__AUTH__PASSWORD_FILE", secret_file("es-indexer", ES_INDEXER_PW));
    set(&mut run_env, "SLUICE_ELASTICSEARCH__TEMPLATE__INSTALL", "false");
    let indexer = Proc::spawn("sluice-indexer", &["run"], &run_env, tmp.path());

    // --- an Elasticsearch role without create_index: the indexer refuses to run, naming it.
    let mut weak_env = run_env.clone();
    set(&mut weak_env, "SLUICE_ELASTICSEARCH__AUTH__USERNAME", "weak");
    set(&mut weak_env, "SLUICE_ELASTICSEARCH__AUTH__PASSWORD_FILE", secret_file("es-weak", ES_WEAK_PW));
    let out = run("sluice-indexer", &["run", "--set", "metrics.listen=127.0.0.1:0"], &weak_env);
    outputs.add("sluice-indexer run (weak Elasticsearch role)", text(&out));
    assert!(!out.status.success(), "the indexer ran without create_index:\n{}", text(&out));
    assert!(
        text(&out).contains("lacks privileges the indexer needs: index privilege create_index on sec-logs-*"),
        "{}",
        text(&out)
    );

    // --- the shipper (Kafka: Write + Describe on its topic), password from the environment.
    let pods = tmp.path().join("pods");
    let log_file = pods.join("shop_web-1_0c0ffee0-0000-4000-8000-000000000001/web/0.log");
    let mut shipper_env = kafka_env("shipper");
    shipper_env.extend(
        [
            ("SLUICE_KAFKA__SECURITY__SASL__PASSWORD", SHIPPER_PW.to_owned()),
            ("SLUICE_NODE_NAME", "node-1".to_owned()),
            ("SLUICE_KUBERNETES__ENABLED", "false".to_owned()),
            ("SLUICE_PATHS__ROOT", pods.display().to_string()),
            ("SLUICE_PATHS__SYMLINK_DIRS", String::new()),
            ("SLUICE_CHECKPOINT__DIR", tmp.path().join("ckpt").display().to_string()),
            ("SLUICE_CHECKPOINT__INTERVAL", "200ms".to_owned()),
            ("SLUICE_TAIL__RESCAN_INTERVAL", "200ms".to_owned()),
            ("RUST_LOG", "info,librdkafka=debug".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v)),
    );
    write_lines(&log_file, 0, 100);
    let shipper = Proc::spawn("sluice-shipper", &[], &shipper_env, tmp.path());
    wait_for_docs(&search, 100, "pipeline with least privileges", &[&shipper, &indexer]).await;
    eprintln!("least-privilege pipeline: 100 records end to end after {:?}", started.elapsed());

    // --- a missing ACL: the shipper's Write on its topic is revoked while lines keep coming.
    let write_acl = grants(&[&["--allow-principal", "User:shipper", "--operation", "Write", "--topic", topic]]);
    kafka.remove_acl(&write_acl).await;
    write_lines(&log_file, 100, 50);
    let mut shipper = shipper;
    let body =
        shipper.wait_not_ready_with("Kafka refused an operation for user `shipper`", Duration::from_secs(60)).await;
    assert!(body.contains("Topic authorization failed"), "{body}");
    // librdkafka keeps failing (the record is produced again after a backoff): wait for several
    // failures, then there must still be one error line only.
    let deadline = Instant::now() + Duration::from_secs(60);
    while shipper.metric("sluice_shipper_kafka_delivery_errors_total{kind=\"authorization\"}").await < 3.0 {
        assert!(Instant::now() < deadline, "fewer than 3 authorization failures:\n{}", shipper.log_text());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(count(&shipper.log_text(), "Kafka refused an operation"), 1, "{}", shipper.log_text());
    kafka.acl(&write_acl).await;
    wait_for_docs(&search, 150, "after the ACL was granted again", &[&shipper, &indexer]).await;
    let shipper_log = shipper.stop();
    outputs.add("sluice-shipper (ACL revoked, then granted)", shipper_log.clone());
    assert!(shipper_log.contains("Kafka access works again"), "{shipper_log}");

    // --- a wrong password: one clear error, /readyz says why; fixed, nothing is lost.
    write_lines(&log_file, 150, 30);
    let mut wrong_env = shipper_env.clone();
    set(&mut wrong_env, "SLUICE_KAFKA__SECURITY__SASL__PASSWORD", WRONG_PW);
    let mut shipper = Proc::spawn("sluice-shipper", &[], &wrong_env, tmp.path());
    let body =
        shipper.wait_not_ready_with("Kafka authentication failed for user `shipper`", Duration::from_secs(60)).await;
    assert!(body.contains("invalid credentials"), "{body}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while shipper.metric("sluice_shipper_kafka_client_errors_total{kind=\"authentication\"}").await < 3.0 {
        assert!(Instant::now() < deadline, "fewer than 3 authentication failures:\n{}", shipper.log_text());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let log = shipper.stop();
    outputs.add("sluice-shipper (wrong password)", log.clone());
    assert_eq!(count(&log, "Kafka authentication failed"), 1, "{log}");

    // --- an unknown CA: the same, for TLS.
    let mut ca_env = shipper_env.clone();
    set(&mut ca_env, "SLUICE_KAFKA__SECURITY__TLS__CA_FILE", pki.path("other-ca.crt").display().to_string());
    let mut shipper = Proc::spawn("sluice-shipper", &[], &ca_env, tmp.path());
    let body = shipper.wait_not_ready_with("Kafka TLS handshake failed", Duration::from_secs(60)).await;
    assert!(body.contains("certificate verify failed"), "{body}");
    let log = shipper.stop();
    outputs.add("sluice-shipper (unknown CA)", log.clone());
    assert_eq!(count(&log, "Kafka TLS handshake failed"), 1, "{log}");
    let out = run("sluice-shipper", &["--check-config", "--check-connectivity"], &ca_env);
    outputs.add("sluice-shipper --check-connectivity (unknown CA)", text(&out));
    assert!(!out.status.success() && text(&out).contains("Kafka TLS handshake failed"), "{}", text(&out));

    // --- fixed: the 30 lines written meanwhile arrive, once.
    let shipper = Proc::spawn("sluice-shipper", &[], &shipper_env, tmp.path());
    wait_for_docs(&search, 180, "after the password and CA were fixed", &[&shipper, &indexer]).await;
    outputs.add("sluice-shipper (fixed)", shipper.stop());
    outputs.add("sluice-indexer run", indexer.stop());

    // --- the viewer (`sluice logs`, `sluice top --kafka`) over TLS with least-privilege users:
    // Elasticsearch role sluice_viewer (read, view_index_metadata on sec-logs-*); Kafka user
    // `viewer` with Describe on the topic and the indexer's group (lag without joining the group).
    let mut view_env = kafka_env("viewer");
    view_env.extend(
        [
            ("SLUICE_KAFKA__SECURITY__SASL__PASSWORD_FILE", secret_file("kafka-viewer", VIEWER_PW)),
            ("SLUICE_KAFKA__GROUP_ID", group.to_owned()),
            ("ELASTICSEARCH_URL", search.url.clone()),
            ("SLUICE_ELASTICSEARCH__TLS__CA_FILE", es_ca.display().to_string()),
            ("SLUICE_ELASTICSEARCH__AUTH__USERNAME", "viewer".to_owned()),
            ("SLUICE_ELASTICSEARCH__AUTH__PASSWORD", ES_VIEWER_PW.to_owned()),
            ("SLUICE_ELASTICSEARCH__INDEX", "sec-logs-%Y.%m.%d".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v)),
    );
    let out = run("sluice", &["logs", "-A", "--since-time", "2026-12-02T00:00:00Z", "-o", "raw"], &view_env);
    outputs.add("sluice logs (viewer)", text(&out));
    assert!(out.status.success(), "sluice logs as viewer over TLS:\n{}", text(&out));
    let shown: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
    let expected: Vec<String> = (0..180).map(|i| format!("secure line {i}")).collect();
    assert_eq!(shown, expected, "sluice logs as viewer: every line once, in order");
    let mut wrong_es = view_env.clone();
    set(&mut wrong_es, "SLUICE_ELASTICSEARCH__AUTH__PASSWORD", WRONG_PW);
    let out = run("sluice", &["logs", "-A", "--since-time", "2026-12-02T00:00:00Z"], &wrong_es);
    outputs.add("sluice logs (wrong password)", text(&out));
    assert!(!out.status.success() && text(&out).contains("refused the credentials"), "{}", text(&out));

    let top =
        ["top", "--once", "-o", "json", "--kafka", "--interval", "1s", "--kafka-timeout", "5s", "--since", "100000h"];
    let topic_describe = grants(&[&["--allow-principal", "User:viewer", "--operation", "Describe", "--topic", topic]]);
    kafka.acl(&topic_describe).await;
    let out = run("sluice", &top, &view_env);
    outputs.add("sluice top --kafka (no ACL on the group)", text(&out));
    assert!(!out.status.success(), "lag read without Describe on the group:\n{}", text(&out));
    assert!(text(&out).contains("Kafka refused an operation for user `viewer`"), "{}", text(&out));
    kafka.acl(&grants(&[&["--allow-principal", "User:viewer", "--operation", "Describe", "--group", group]])).await;
    let out = run("sluice", &top, &view_env);
    outputs.add("sluice top --kafka (viewer)", text(&out));
    assert!(out.status.success(), "sluice top --kafka as viewer:\n{}", text(&out));
    let t: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    let lines: u64 = t["rows"].as_array().expect("rows").iter().map(|r| r["lines"].as_u64().unwrap()).sum();
    assert_eq!(lines, 180, "{t}");
    let partitions = t["kafka"]["lag"]["partitions"].as_array().expect("lag partitions");
    assert_eq!(partitions.len(), 2, "{t}");
    // The indexer stopped gracefully: everything it consumed was committed (nothing left over).
    assert_eq!(t["kafka"]["lag"]["total"], 0, "{t}");
    // Every partition with records has its commit at the end (one file: its key took one partition).
    assert!(partitions.iter().all(|p| p["high"] == 0 || p["committed"] == p["high"]), "{t}");
    let high: i64 = partitions.iter().map(|p| p["high"].as_i64().unwrap()).sum();
    assert!(high >= 180, "{t}");
    let mut wrong_kafka = view_env.clone();
    set(&mut wrong_kafka, "SLUICE_KAFKA__SECURITY__SASL__PASSWORD_FILE", secret_file("viewer-wrong", WRONG_PW));
    let out = run("sluice", &top, &wrong_kafka);
    outputs.add("sluice top --kafka (wrong password)", text(&out));
    assert!(!out.status.success());
    assert!(text(&out).contains("Kafka authentication failed for user `viewer`"), "{}", text(&out));

    // --- secrets: --check-config (valid and invalid), with every secret set.
    for (binary, env) in
        [("sluice-shipper", &shipper_env), ("sluice-indexer", &run_env), ("sluice-indexer", &setup_env)]
    {
        let out = run(binary, &["--check-config"], env);
        assert!(out.status.success(), "{binary} --check-config: {}", text(&out));
        outputs.add(&format!("{binary} --check-config"), text(&out));
        let out = run(binary, &["--check-config", "--set", "kafka.brokerz=x"], env);
        assert!(!out.status.success());
        outputs.add(&format!("{binary} --check-config (invalid)"), text(&out));
    }
    outputs.assert_no_secret();
    eprintln!("security test done in {:?}", started.elapsed());
}

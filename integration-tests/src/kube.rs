//! A **real** Kubernetes control plane per test: a private etcd and kube-apiserver (v1.36.3, etcd
//! v3.6.16) on free 127.0.0.1 ports in a temp dir, started from the binaries `./dev k8s build`
//! puts in the machine-wide cache (`${SLUICE_K8S_CACHE:-/var/cache/sluice/k8s}/v1.36.3/bin/`).
//! There is no kubelet, scheduler or controller-manager: Pods are created with `spec.nodeName`
//! set and stay `Pending`; their `status` is written by the test through the status subresource.
//!
//! ```no_run
//! # async fn f() {
//! use sluice_integration_tests::kube::{ControlPlane, KubeUser, TestContainerStatus, TestPod};
//! let cp = ControlPlane::start().await;
//! cp.create_namespace("shop").await;
//! let pod = TestPod::new("shop", "web-7d4b9c8f6d-x2x9q", "node-a")
//!     .label("app", "web")
//!     .owner("ReplicaSet", "web-7d4b9c8f6d")
//!     .container("nginx", "nginx:1.27");
//! let uid = cp.create_pod(&pod).await.metadata.uid.unwrap();
//! cp.set_container_statuses("shop", "web-7d4b9c8f6d-x2x9q", &[
//!     TestContainerStatus::running("nginx", "nginx:1.27", "containerd://0123abcd"),
//! ]).await;
//! let kubeconfig = cp.kubeconfig(KubeUser::Shipper); // `kubernetes.kubeconfig: <path>`
//! # let _ = (uid, kubeconfig); }
//! ```
//!
//! # Identities
//! Token authentication (`--token-auth-file`) with three users, RBAC authorization:
//! - [`KubeUser::Admin`]: `admin`, group `system:masters` (everything);
//! - [`KubeUser::Shipper`]: `system:serviceaccount:sluice:sluice-shipper`, groups
//!   `system:serviceaccounts`, `system:serviceaccounts:sluice` — exactly what the ServiceAccount
//!   `sluice/sluice-shipper` authenticates as in a cluster, so the bindings of
//!   `deploy/k8s/rbac-shipper.yaml` (applied at start, into namespace `sluice`) are what it may do;
//! - [`KubeUser::Nobody`]: `nobody`, authenticated, no permissions (403 on everything but discovery).
//!
//! # Faults
//! - API server down / up: [`ControlPlane::stop_apiserver`] / [`ControlPlane::start_apiserver`]
//!   keep etcd, the port, the serving certificate and the tokens, so clients and kubeconfigs stay
//!   valid and reconnect. For "down at start": `start()`, `stop_apiserver()`, start the client,
//!   `start_apiserver()`.
//! - 410 Gone: the apiserver runs with `--watch-cache=false` by default, so watches are served by
//!   etcd directly. [`ControlPlane::compact_etcd`] compacts etcd past every revision a client has
//!   seen; the next time a client's watch is (re-)established from its last resourceVersion, the
//!   apiserver answers with an `ERROR` event, code 410, and a kube-runtime `watcher` relists
//!   (emits `Event::Init` again). A watch re-establishes when its `timeoutSeconds` ends (the client
//!   sets it; kube-runtime's default is 290 s) or when its connection breaks:
//!   [`ControlPlane::expire_watches`] = compact + restart etcd, which makes every **running** watch
//!   get the 410 within a second or two, whatever its timeout.
//!
//! Processes are killed (apiserver first) and the temp dir removed when the [`ControlPlane`] drops,
//! also when the test panics; a watchdog process does the same if the test process dies without
//! unwinding (SIGKILL, abort). When a test panics, the tail of the apiserver's log is printed.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Namespace, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::{Value, json};

/// Kubernetes version of the cached binaries (the directory under the cache root).
pub const K8S_VERSION: &str = "v1.36.3";
/// The RBAC manifest the Helm chart ships for the shipper, applied by [`ControlPlane::start`].
pub const RBAC_MANIFEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/k8s/rbac-shipper.yaml");
/// Namespace of the shipper's ServiceAccount (created at start).
pub const SHIPPER_NAMESPACE: &str = "sluice";
/// Name of the shipper's ServiceAccount.
pub const SHIPPER_SERVICE_ACCOUNT: &str = "sluice-shipper";

const HOW_TO_BUILD: &str = "run ./dev k8s build (builds etcd, kube-apiserver and kubectl from the Go module \
     proxy into the machine-wide cache, ~10 min cold, then cached)";
const FIELD_MANAGER: &str = "sluice-test-harness";
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// The directory holding `etcd` and `kube-apiserver`: `$SLUICE_K8S_BIN_DIR`, else
/// `${SLUICE_K8S_CACHE:-/var/cache/sluice/k8s}/v1.36.3/bin` (what `./dev k8s build` fills).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SLUICE_K8S_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let root =
        std::env::var_os("SLUICE_K8S_CACHE").map_or_else(|| PathBuf::from("/var/cache/sluice/k8s"), PathBuf::from);
    root.join(K8S_VERSION).join("bin")
}

/// Who a client or kubeconfig authenticates as (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KubeUser {
    /// `admin`, group `system:masters`.
    Admin,
    /// `system:serviceaccount:sluice:sluice-shipper`, the shipper's ServiceAccount.
    Shipper,
    /// `nobody`: authenticated, no permissions.
    Nobody,
}

impl KubeUser {
    /// All users, in token-file order.
    pub const ALL: [KubeUser; 3] = [KubeUser::Admin, KubeUser::Shipper, KubeUser::Nobody];

    /// The user name the API server sees.
    pub fn username(self) -> &'static str {
        match self {
            KubeUser::Admin => "admin",
            KubeUser::Shipper => "system:serviceaccount:sluice:sluice-shipper",
            KubeUser::Nobody => "nobody",
        }
    }

    /// Short name, used in file names and kubeconfig contexts.
    pub fn short_name(self) -> &'static str {
        match self {
            KubeUser::Admin => "admin",
            KubeUser::Shipper => "shipper",
            KubeUser::Nobody => "nobody",
        }
    }

    fn groups(self) -> &'static str {
        match self {
            KubeUser::Admin => "system:masters",
            KubeUser::Shipper => "system:serviceaccounts,system:serviceaccounts:sluice",
            KubeUser::Nobody => "",
        }
    }
}

/// Settings of a [`ControlPlane`]; [`ControlPlane::start`] uses the defaults.
#[derive(Clone, Debug, Default)]
pub struct ControlPlaneOptions {
    /// `--watch-cache` of the apiserver. Default `false`: watches go to etcd directly, so a
    /// compaction makes re-established watches fail with 410 Gone deterministically.
    pub watch_cache: bool,
    /// `--min-request-timeout` in seconds: the server-side timeout of watches whose client sends
    /// no `timeoutSeconds` (random between this and twice this). `None`: the default, 1800.
    pub min_request_timeout: Option<u32>,
    /// More apiserver flags (`--name=value`), appended last.
    pub extra_apiserver_args: Vec<String>,
}

impl ControlPlaneOptions {
    /// Turns the apiserver's watch cache on or off.
    #[must_use]
    pub fn watch_cache(mut self, on: bool) -> Self {
        self.watch_cache = on;
        self
    }

    /// Sets `--min-request-timeout`.
    #[must_use]
    pub fn min_request_timeout(mut self, seconds: u32) -> Self {
        self.min_request_timeout = Some(seconds);
        self
    }

    /// Appends an apiserver flag, e.g. `--v=4`.
    #[must_use]
    pub fn apiserver_arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_apiserver_args.push(arg.into());
        self
    }

    /// Starts a control plane with these settings.
    pub async fn start(self) -> ControlPlane {
        ControlPlane::start_with(self).await
    }
}

/// A private etcd + kube-apiserver for one test. See the module docs.
pub struct ControlPlane {
    dir: tempfile::TempDir,
    bin_dir: PathBuf,
    options: ControlPlaneOptions,
    etcd_port: u16,
    etcd_peer_port: u16,
    apiserver_port: u16,
    tokens: BTreeMap<KubeUser, String>,
    http: reqwest::Client,
    etcd: Mutex<Option<Child>>,
    apiserver: Mutex<Option<Child>>,
    watchdog: Mutex<Option<Child>>,
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver with the default [`ControlPlaneOptions`], waits until
    /// `/readyz` is ok, creates namespace `sluice`, applies `deploy/k8s/rbac-shipper.yaml` and
    /// waits until the shipper's permissions are in effect. Panics (with the process log) on failure,
    /// and with "run ./dev k8s build" when the binaries are not in the cache.
    pub async fn start() -> ControlPlane {
        Self::start_with(ControlPlaneOptions::default()).await
    }

    /// Options builder: `ControlPlane::options().min_request_timeout(5).start().await`.
    pub fn options() -> ControlPlaneOptions {
        ControlPlaneOptions::default()
    }

    /// Like [`ControlPlane::start`] with explicit options.
    pub async fn start_with(options: ControlPlaneOptions) -> ControlPlane {
        install_crypto_provider();
        let bin_dir = bin_dir();
        for binary in ["etcd", "kube-apiserver"] {
            let path = bin_dir.join(binary);
            assert!(path.is_file(), "{} is missing: {HOW_TO_BUILD}", path.display());
        }
        let started = Instant::now();
        let dir = tempfile::Builder::new().prefix("sluice-k8s-").tempdir().expect("create temp dir");
        let mut ports = Vec::new();
        while ports.len() < 3 {
            let port = crate::free_port();
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        let tokens: BTreeMap<KubeUser, String> =
            KubeUser::ALL.iter().map(|&u| (u, format!("{}-{}", u.short_name(), random_hex()))).collect();
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("reqwest client");
        let cp = ControlPlane {
            dir,
            bin_dir,
            options,
            etcd_port: ports[0],
            etcd_peer_port: ports[1],
            apiserver_port: ports[2],
            tokens,
            http,
            etcd: Mutex::new(None),
            apiserver: Mutex::new(None),
            watchdog: Mutex::new(None),
        };
        cp.write_credentials();
        cp.spawn_watchdog();
        cp.start_etcd().await;
        cp.start_apiserver_process().await;
        cp.setup_rbac().await;
        eprintln!(
            "[kube] control plane up in {:.1} s: {} (etcd {}, dir {})",
            started.elapsed().as_secs_f64(),
            cp.server_url(),
            cp.etcd_url(),
            cp.dir.path().display()
        );
        cp
    }

    /// `https://127.0.0.1:<port>` of the apiserver.
    pub fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.apiserver_port)
    }

    /// `http://127.0.0.1:<port>` of etcd (its v3 JSON gateway answers under `/v3/`).
    pub fn etcd_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.etcd_port)
    }

    /// The apiserver's port on 127.0.0.1 (stable across [`ControlPlane::start_apiserver`]).
    pub fn apiserver_port(&self) -> u16 {
        self.apiserver_port
    }

    /// The temp dir holding data, certificates, tokens, kubeconfigs and the logs
    /// (`etcd.log`, `kube-apiserver.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// PEM file with the CA (and the serving certificate) the apiserver generated in its cert dir
    /// at first start; kept across restarts.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("certs").join("apiserver.crt")
    }

    /// The bearer token of `user`.
    pub fn token(&self, user: KubeUser) -> &str {
        &self.tokens[&user]
    }

    /// Writes (again) and returns a kubeconfig for `user`: server URL, CA file, token — what the
    /// shipper takes as `kubernetes.kubeconfig: <path>`. File `<dir>/kubeconfig-<user>.yaml`.
    pub fn kubeconfig(&self, user: KubeUser) -> PathBuf {
        let path = self.dir.path().join(format!("kubeconfig-{}.yaml", user.short_name()));
        let name = user.short_name();
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: sluice-test\n  cluster:\n    server: {server}\n    \
             certificate-authority: {ca}\nusers:\n- name: {name}\n  user:\n    token: {token}\ncontexts:\n- name: \
             {name}@sluice-test\n  context:\n    cluster: sluice-test\n    user: {name}\n    namespace: default\n\
             current-context: {name}@sluice-test\n",
            server = self.server_url(),
            ca = self.ca_file().display(),
            token = self.token(user),
        );
        fs::write(&path, text).expect("write kubeconfig");
        path
    }

    /// A kube client for `user`, built from [`ControlPlane::kubeconfig`].
    pub async fn client(&self, user: KubeUser) -> Client {
        let kubeconfig = Kubeconfig::read_from(self.kubeconfig(user)).expect("read kubeconfig");
        let config =
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.expect("kube config");
        Client::try_from(config).expect("kube client")
    }

    /// A kube client as `admin` (`system:masters`).
    pub async fn admin_client(&self) -> Client {
        self.client(KubeUser::Admin).await
    }

    /// `Api<Pod>` of `namespace` as admin.
    pub async fn pods(&self, namespace: &str) -> Api<Pod> {
        Api::namespaced(self.admin_client().await, namespace)
    }

    // -----------------------------------------------------------------------------------------
    // Processes

    fn write_credentials(&self) {
        let dir = self.dir.path();
        fs::create_dir_all(dir.join("certs")).expect("create cert dir");
        let mut csv = String::new();
        for user in KubeUser::ALL {
            // token,user,uid,"group1,group2"
            csv.push_str(&format!(
                "{},{},{},\"{}\"\n",
                self.token(user),
                user.username(),
                user.short_name(),
                user.groups()
            ));
        }
        fs::write(dir.join("tokens.csv"), csv).expect("write tokens.csv");
        let status = Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(dir.join("sa.key"))
            .arg("2048")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run openssl (apt-get install openssl)");
        assert!(status.success(), "openssl genrsa failed");
    }

    /// A `sh` loop that kills the processes (pid files in the dir) and removes the dir once the
    /// test process is gone without having dropped the ControlPlane.
    fn spawn_watchdog(&self) {
        let script = r#"while kill -0 "$0" 2>/dev/null; do sleep 1; done
for f in "$1"/kube-apiserver.pid "$1"/etcd.pid; do [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null; done
sleep 1; rm -rf "$1""#;
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(std::process::id().to_string())
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn watchdog");
        *self.watchdog.lock().unwrap() = Some(child);
    }

    fn spawn(&self, name: &str, args: &[String]) -> Child {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{name}.log")))
            .expect("open log");
        let child = Command::new(self.bin_dir.join(name))
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e} ({HOW_TO_BUILD})"));
        fs::write(self.dir.path().join(format!("{name}.pid")), child.id().to_string()).expect("write pid file");
        child
    }

    fn etcd_args(&self) -> Vec<String> {
        let dir = self.dir.path();
        let peer = format!("http://127.0.0.1:{}", self.etcd_peer_port);
        vec![
            "--name=sluice".into(),
            format!("--data-dir={}", dir.join("etcd").display()),
            format!("--listen-client-urls={}", self.etcd_url()),
            format!("--advertise-client-urls={}", self.etcd_url()),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster=sluice={peer}"),
            "--unsafe-no-fsync".into(),
            "--log-level=warn".into(),
        ]
    }

    fn apiserver_args(&self) -> Vec<String> {
        let dir = self.dir.path();
        let sa_key = dir.join("sa.key");
        let mut args = vec![
            format!("--etcd-servers={}", self.etcd_url()),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={}", self.apiserver_port),
            format!("--cert-dir={}", dir.join("certs").display()),
            format!("--token-auth-file={}", dir.join("tokens.csv").display()),
            "--authorization-mode=RBAC".into(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", sa_key.display()),
            format!("--service-account-signing-key-file={}", sa_key.display()),
            "--disable-admission-plugins=ServiceAccount".into(),
            "--endpoint-reconciler-type=none".into(),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--allow-privileged=true".into(),
            "--profiling=false".into(),
            format!("--watch-cache={}", self.options.watch_cache),
        ];
        if let Some(seconds) = self.options.min_request_timeout {
            args.push(format!("--min-request-timeout={seconds}"));
        }
        args.extend(self.options.extra_apiserver_args.iter().cloned());
        args
    }

    async fn start_etcd(&self) {
        let child = self.spawn("etcd", &self.etcd_args());
        *self.etcd.lock().unwrap() = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let healthy = match self.http.get(format!("{}/health", self.etcd_url())).send().await {
                Ok(resp) => resp.text().await.is_ok_and(|t| t.contains("\"health\":\"true\"")),
                Err(_) => false,
            };
            if healthy {
                return;
            }
            self.assert_running("etcd", &self.etcd);
            assert!(Instant::now() < deadline, "etcd not healthy after {READY_TIMEOUT:?}\n{}", self.log_tail("etcd"));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills etcd (SIGKILL) and starts it again on the same data dir and ports; waits until healthy.
    /// The apiserver's etcd clients reconnect and resume their watches from the revision they had
    /// reached — after [`ControlPlane::compact_etcd`] that revision is gone, so watches end with 410.
    pub async fn restart_etcd(&self) {
        if let Some(mut child) = self.etcd.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.start_etcd().await;
    }

    /// Starts the apiserver again (after [`ControlPlane::stop_apiserver`]) on the same port, cert
    /// dir, tokens and etcd, and waits until `/readyz` answers 200 **and** the shipper's RBAC
    /// bindings are in effect (the RBAC authorizer loads them from informers: right after a
    /// restart, for a moment, a ready apiserver may still answer 403 — a client started earlier
    /// can see that window, the test code after this call does not). Panics if it is running.
    pub async fn start_apiserver(&self) {
        self.start_apiserver_process().await;
        self.wait_shipper_authorized().await;
    }

    async fn start_apiserver_process(&self) {
        {
            let mut slot = self.apiserver.lock().unwrap();
            assert!(slot.is_none(), "kube-apiserver is already running");
            *slot = Some(self.spawn("kube-apiserver", &self.apiserver_args()));
        }
        self.wait_ready().await;
    }

    /// Kills the apiserver (SIGKILL: connections drop at once, as with a crashed or unreachable
    /// server) and waits until it is gone. etcd keeps running.
    pub fn stop_apiserver(&self) {
        if let Some(mut child) = self.apiserver.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_file(self.dir.path().join("kube-apiserver.pid"));
    }

    /// Whether the apiserver process is running (not whether it is ready).
    pub fn apiserver_running(&self) -> bool {
        self.apiserver.lock().unwrap().as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    async fn wait_ready(&self) {
        let started = Instant::now();
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(5)).tls_built_in_root_certs(false);
        loop {
            // The CA file appears when the apiserver has generated its certificates.
            if let Ok(pem) = fs::read(self.ca_file())
                && let Ok(certs) = reqwest::Certificate::from_pem_bundle(&pem)
                && !certs.is_empty()
            {
                for cert in certs {
                    builder = builder.add_root_certificate(cert);
                }
                break;
            }
            self.assert_running("kube-apiserver", &self.apiserver);
            assert!(
                started.elapsed() < READY_TIMEOUT,
                "kube-apiserver wrote no certificate\n{}",
                self.log_tail("kube-apiserver")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let client = builder.build().expect("reqwest client");
        let mut last;
        loop {
            match client
                .get(format!("{}/readyz", self.server_url()))
                .bearer_auth(self.token(KubeUser::Admin))
                .send()
                .await
            {
                Ok(resp) if resp.status().is_success() => {
                    eprintln!("[kube] kube-apiserver ready after {:.1} s", started.elapsed().as_secs_f64());
                    return;
                }
                Ok(resp) => last = format!("{}: {}", resp.status(), resp.text().await.unwrap_or_default()),
                Err(e) => last = e.to_string(),
            }
            self.assert_running("kube-apiserver", &self.apiserver);
            assert!(
                started.elapsed() < READY_TIMEOUT,
                "kube-apiserver not ready after {READY_TIMEOUT:?}: {last}\n{}",
                self.log_tail("kube-apiserver")
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn assert_running(&self, name: &str, slot: &Mutex<Option<Child>>) {
        let exited = match slot.lock().unwrap().as_mut() {
            Some(child) => child.try_wait().ok().flatten(),
            None => None,
        };
        if let Some(status) = exited {
            panic!("{name} exited ({status})\n{}", self.log_tail(name));
        }
    }

    /// The last 40 lines of `<name>.log` (`etcd`, `kube-apiserver`).
    pub fn log_tail(&self, name: &str) -> String {
        let text = fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        format!("--- last lines of {name}.log ---\n{tail}")
    }

    // -----------------------------------------------------------------------------------------
    // etcd

    async fn etcd_post(&self, path: &str, body: Value) -> Value {
        let resp = self
            .http
            .post(format!("{}{path}", self.etcd_url()))
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("etcd {path}: {e}"));
        let status = resp.status();
        let value: Value = resp.json().await.unwrap_or_else(|e| panic!("etcd {path}: {e}"));
        assert!(status.is_success(), "etcd {path}: {status} {value}");
        value
    }

    /// etcd's current revision (`header.revision` of a range request).
    pub async fn etcd_revision(&self) -> i64 {
        // key "\0" (base64 "AA=="): any key works, only the header matters.
        let value = self.etcd_post("/v3/kv/range", json!({"key": "AA==", "count_only": true})).await;
        let revision = &value["header"]["revision"];
        revision
            .as_str()
            .and_then(|s| s.parse().ok())
            .or_else(|| revision.as_i64())
            .unwrap_or_else(|| panic!("no header.revision in {value}"))
    }

    /// Writes a key outside the apiserver's prefix twice (so the revision moves at least two past
    /// everything any client has seen), then compacts etcd (physically) to that revision. Returns
    /// the revision. A watch (re-)established afterwards from an older resourceVersion gets 410
    /// Gone. (Twice: the apiserver watches etcd from resourceVersion + 1, and a compaction to
    /// revision N still serves watches from N.)
    pub async fn compact_etcd(&self) -> i64 {
        for _ in 0..2 {
            // key "sluice-compact" / value "x", base64.
            self.etcd_post("/v3/kv/put", json!({"key": "c2x1aWNlLWNvbXBhY3Q=", "value": "eA=="})).await;
        }
        let revision = self.etcd_revision().await;
        self.etcd_post("/v3/kv/compaction", json!({"revision": revision.to_string(), "physical": true})).await;
        revision
    }

    /// [`ControlPlane::compact_etcd`] then [`ControlPlane::restart_etcd`]: every running watch
    /// (with the watch cache off, the default) resumes from a compacted revision and ends with
    /// an `ERROR` event, code 410 — a kube-runtime watcher then relists.
    pub async fn expire_watches(&self) {
        self.compact_etcd().await;
        self.restart_etcd().await;
    }

    // -----------------------------------------------------------------------------------------
    // Objects

    async fn setup_rbac(&self) {
        self.create_namespace(SHIPPER_NAMESPACE).await;
        self.apply_manifest(Path::new(RBAC_MANIFEST)).await;
        self.wait_shipper_authorized().await;
    }

    /// The RBAC authorizer works from informers: waits until the shipper may list pods.
    async fn wait_shipper_authorized(&self) {
        let started = Instant::now();
        let shipper: Api<Pod> = Api::all(self.client(KubeUser::Shipper).await);
        loop {
            match shipper.list(&ListParams::default().limit(1)).await {
                Ok(_) => return,
                Err(e) => {
                    assert!(started.elapsed() < Duration::from_secs(30), "the shipper cannot list pods: {e}");
                    eprintln!("[kube] shipper not authorized yet after {:.1} s: {e}", started.elapsed().as_secs_f64());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Applies every document of a YAML manifest (server-side apply, as admin; namespaced when
    /// `metadata.namespace` is set). The resource is `<lowercase kind>s` (right for ServiceAccount,
    /// ClusterRole(Binding), Role(Binding), Namespace, ConfigMap, Secret, Pod, Deployment, ...).
    pub async fn apply_manifest(&self, path: &Path) {
        let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let client = self.admin_client().await;
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(document).expect("parse manifest YAML");
            if value.is_null() {
                continue;
            }
            let object: DynamicObject = serde_json::from_value(value.clone()).expect("manifest object");
            let types = object.types.clone().expect("apiVersion and kind");
            let gvk = GroupVersionKind::try_from(&types).expect("apiVersion");
            let plural = match types.kind.as_str() {
                "Ingress" => "ingresses".to_owned(),
                "NetworkPolicy" => "networkpolicies".to_owned(),
                kind => format!("{}s", kind.to_ascii_lowercase()),
            };
            let resource = ApiResource::from_gvk_with_plural(&gvk, &plural);
            let name = object.metadata.name.clone().expect("metadata.name");
            let api: Api<DynamicObject> = match &object.metadata.namespace {
                Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
                None => Api::all_with(client.clone(), &resource),
            };
            api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&value))
                .await
                .unwrap_or_else(|e| panic!("apply {} {name}: {e}", types.kind));
        }
    }

    /// Creates namespace `name` with `labels`. Returns it.
    pub async fn create_namespace_with_labels(&self, name: &str, labels: &[(&str, &str)]) -> Namespace {
        let api: Api<Namespace> = Api::all(self.admin_client().await);
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                labels: Some(labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        api.create(&PostParams::default(), &namespace).await.unwrap_or_else(|e| panic!("create namespace {name}: {e}"))
    }

    /// Creates namespace `name`. Returns it.
    pub async fn create_namespace(&self, name: &str) -> Namespace {
        self.create_namespace_with_labels(name, &[]).await
    }

    /// Creates the Pod described by `pod` (bound to its node via `spec.nodeName`; it stays
    /// `Pending`). Returns the created object (with `metadata.uid`).
    pub async fn create_pod(&self, pod: &TestPod) -> Pod {
        let api = self.pods(&pod.namespace).await;
        api.create(&PostParams::default(), &pod.to_pod())
            .await
            .unwrap_or_else(|e| panic!("create pod {}/{}: {e}", pod.namespace, pod.name))
    }

    /// Replaces `status.containerStatuses` of a Pod through the status subresource (a JSON merge
    /// patch; `phase` set to `Running` when every container is running). Names must be containers
    /// of the Pod's spec. Returns the updated Pod.
    pub async fn set_container_statuses(&self, namespace: &str, pod: &str, statuses: &[TestContainerStatus]) -> Pod {
        let api = self.pods(namespace).await;
        let all_running = statuses.iter().all(|s| s.running);
        let mut status = json!({
            "containerStatuses": statuses.iter().map(TestContainerStatus::to_json).collect::<Vec<_>>(),
        });
        if all_running && !statuses.is_empty() {
            status["phase"] = json!("Running");
        }
        api.patch_status(pod, &PatchParams::default(), &Patch::Merge(json!({ "status": status })))
            .await
            .unwrap_or_else(|e| panic!("patch status of pod {namespace}/{pod}: {e}"))
    }

    /// Merge-patches `metadata.labels` of a Pod (a `null` value removes a label). Returns the Pod.
    pub async fn patch_pod_labels(&self, namespace: &str, pod: &str, labels: &[(&str, Option<&str>)]) -> Pod {
        let api = self.pods(namespace).await;
        let labels: serde_json::Map<String, Value> =
            labels.iter().map(|(k, v)| ((*k).to_owned(), v.map_or(Value::Null, |v| json!(v)))).collect();
        api.patch(pod, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": labels}})))
            .await
            .unwrap_or_else(|e| panic!("patch labels of pod {namespace}/{pod}: {e}"))
    }

    /// Deletes a Pod at once (grace period 0: with no kubelet, a graceful delete of a bound Pod
    /// would leave it terminating forever). Watchers see `Modified` (with
    /// `metadata.deletionTimestamp` set), then `Deleted`.
    pub async fn delete_pod(&self, namespace: &str, pod: &str) {
        let api = self.pods(namespace).await;
        api.delete(pod, &DeleteParams::default().grace_period(0))
            .await
            .unwrap_or_else(|e| panic!("delete pod {namespace}/{pod}: {e}"));
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "[kube] test panicked; control plane in {}\n{}",
                self.dir.path().display(),
                self.log_tail("kube-apiserver")
            );
        }
        // The apiserver before etcd (it hangs in its shutdown without etcd).
        for slot in [&self.apiserver, &self.etcd, &self.watchdog] {
            let child = match slot.lock() {
                Ok(mut guard) => guard.take(),
                Err(poisoned) => poisoned.into_inner().take(),
            };
            if let Some(mut child) = child {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // The TempDir field removes the directory.
    }
}

/// A Pod to create with [`ControlPlane::create_pod`]: bound to `node` via `spec.nodeName`.
#[derive(Clone, Debug)]
pub struct TestPod {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// `spec.nodeName`.
    pub node: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
    /// `metadata.ownerReferences`.
    pub owners: Vec<OwnerReference>,
    /// `(name, image)` of each container; one `app`/`busybox:1.36` when none is given.
    pub containers: Vec<(String, String)>,
}

impl TestPod {
    /// A Pod `namespace/name` on `node`.
    pub fn new(namespace: &str, name: &str, node: &str) -> Self {
        TestPod {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            node: node.to_owned(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            owners: Vec::new(),
            containers: Vec::new(),
        }
    }

    /// Adds a label.
    #[must_use]
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Adds an annotation.
    #[must_use]
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.annotations.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Adds a controller owner reference (`controller: true`) to `kind`/`name` with a made-up uid;
    /// apiVersion from the kind (`apps/v1` for ReplicaSet, Deployment, StatefulSet, DaemonSet;
    /// `batch/v1` for Job, CronJob; else `v1`). The owner object itself is not created.
    #[must_use]
    pub fn owner(mut self, kind: &str, name: &str) -> Self {
        let api_version = match kind {
            "ReplicaSet" | "Deployment" | "StatefulSet" | "DaemonSet" => "apps/v1",
            "Job" | "CronJob" => "batch/v1",
            _ => "v1",
        };
        self.owners.push(OwnerReference {
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
            name: name.to_owned(),
            uid: fake_uid(),
            controller: Some(self.owners.is_empty()),
            block_owner_deletion: Some(true),
        });
        self
    }

    /// Adds a container.
    #[must_use]
    pub fn container(mut self, name: &str, image: &str) -> Self {
        self.containers.push((name.to_owned(), image.to_owned()));
        self
    }

    /// The Pod object.
    pub fn to_pod(&self) -> Pod {
        let containers = if self.containers.is_empty() {
            vec![("app".to_owned(), "busybox:1.36".to_owned())]
        } else {
            self.containers.clone()
        };
        let non_empty = |m: &BTreeMap<String, String>| (!m.is_empty()).then(|| m.clone());
        Pod {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: non_empty(&self.labels),
                annotations: non_empty(&self.annotations),
                owner_references: (!self.owners.is_empty()).then(|| self.owners.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: Some(self.node.clone()),
                containers: containers
                    .into_iter()
                    .map(|(name, image)| Container { name, image: Some(image), ..Container::default() })
                    .collect(),
                ..PodSpec::default()
            }),
            status: None,
        }
    }
}

/// One entry of `status.containerStatuses` for [`ControlPlane::set_container_statuses`].
#[derive(Clone, Debug)]
pub struct TestContainerStatus {
    /// Container name (must be in the Pod's spec).
    pub name: String,
    /// `image` as the runtime reports it.
    pub image: String,
    /// `imageID`, e.g. `docker.io/library/nginx@sha256:…`.
    pub image_id: String,
    /// `containerID`, `<runtime>://<id>`, e.g. `containerd://0123…`.
    pub container_id: String,
    /// `restartCount`.
    pub restart_count: i32,
    /// `state.running` (with `ready: true`) when true, else `state.waiting` (`ContainerCreating`).
    pub running: bool,
}

impl TestContainerStatus {
    /// A running, ready container with restart count 0 and `imageID` `<image>@sha256:000…`.
    pub fn running(name: &str, image: &str, container_id: &str) -> Self {
        TestContainerStatus {
            name: name.to_owned(),
            image: image.to_owned(),
            image_id: format!("{image}@sha256:{}", "0".repeat(64)),
            container_id: container_id.to_owned(),
            restart_count: 0,
            running: true,
        }
    }

    /// Sets `imageID`.
    #[must_use]
    pub fn image_id(mut self, image_id: &str) -> Self {
        self.image_id = image_id.to_owned();
        self
    }

    /// Sets `restartCount`.
    #[must_use]
    pub fn restart_count(mut self, count: i32) -> Self {
        self.restart_count = count;
        self
    }

    /// A waiting (not yet running, not ready) container.
    #[must_use]
    pub fn waiting(mut self) -> Self {
        self.running = false;
        self
    }

    fn to_json(&self) -> Value {
        let state = if self.running {
            json!({"running": {"startedAt": "2026-01-01T00:00:00Z"}})
        } else {
            json!({"waiting": {"reason": "ContainerCreating"}})
        };
        json!({
            "name": self.name,
            "image": self.image,
            "imageID": self.image_id,
            "containerID": self.container_id,
            "restartCount": self.restart_count,
            "ready": self.running,
            "started": self.running,
            "state": state,
        })
    }
}

/// The rustls provider of the workspace (`ring`), installed once for the process so that building
/// a client never panics about an ambiguous CryptoProvider (another crate may pull in aws-lc-rs).
fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn random_hex() -> String {
    use std::hash::{BuildHasher, Hasher};
    static N: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(N.fetch_add(1, Ordering::Relaxed));
    hasher
        .write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    format!("{:016x}", hasher.finish())
}

fn fake_uid() -> String {
    let hex = format!("{}{}", random_hex(), random_hex());
    format!("{}-{}-4{}-8{}-{}", &hex[0..8], &hex[8..12], &hex[13..16], &hex[17..20], &hex[20..32])
}

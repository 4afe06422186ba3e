//! The node-scoped pod watch (and the optional namespace watch) feeding a [`PodStore`].
//!
//! `kube-runtime`'s `watcher` with field selector `spec.nodeName=<node>` and the "any" list
//! semantic (`resourceVersion=0`: lists are served from the API server's watch cache, not etcd),
//! wrapped in the default backoff (exponential 0.8 s → 30 s with jitter, reset after 2 min of
//! success), so thousands of shippers reconnecting after an API server restart spread out.
//!
//! Errors never stop the watch: it retries forever with backoff while the read path uses path
//! metadata. A refused request (403) is logged once, naming the missing permission; other errors
//! are logged when their class changes and then at growing intervals (1 min doubling to 30 min),
//! and once more on recovery.

use std::time::{Duration, Instant};

use futures::stream::{BoxStream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

use super::KubernetesConfig;
use super::metrics::EnrichMetrics;
use super::store::{Health, PodStore};

/// Without a failed request for this long, a failing watch is considered current again (a
/// reconnected watch on a quiet node delivers no event to prove it).
const FAILING_QUIET: Duration = Duration::from_secs(90);
/// First reminder interval while the same transient error repeats; doubles up to [`REMIND_MAX`].
const REMIND_FIRST: Duration = Duration::from_secs(60);
/// Longest interval between reminders of a repeating transient error.
const REMIND_MAX: Duration = Duration::from_secs(1800);

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `kubernetes.kubeconfig` could not be read or used.
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The configured path.
        path: String,
        /// The cause.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// Neither `KUBECONFIG`/`~/.kube/config` nor the in-cluster service account is usable.
    #[error("no Kubernetes configuration (in-cluster service account or kubeconfig): {0}")]
    Infer(#[from] kube::config::InferConfigError),
    /// The configuration was read but no client could be built from it.
    #[error("cannot build a Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// Builds a client from `kubernetes.kubeconfig`, or `kube::Config::infer()` when it is empty
/// (`KUBECONFIG`, `~/.kube/config`, then the in-cluster service account).
pub async fn client(config: &KubernetesConfig) -> Result<Client, ClientError> {
    install_crypto_provider();
    let kube_config = if config.kubeconfig.is_empty() {
        kube::Config::infer().await?
    } else {
        let err = |source| ClientError::Kubeconfig { path: config.kubeconfig.clone(), source };
        let file = Kubeconfig::read_from(&config.kubeconfig).map_err(err)?;
        kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default()).await.map_err(err)?
    };
    Ok(Client::try_from(kube_config)?)
}

/// Makes `ring` the process-wide rustls provider when none is installed, so building a TLS client
/// cannot panic when another dependency compiles in a second provider. Idempotent.
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// Watches the pods of `node_name` (and namespaces when `kubernetes.namespace_labels`) into
/// `store` until `shutdown` is cancelled. Starts on the current tokio runtime; never fails: a
/// missing configuration or an unreachable or refusing API server is logged, counted and retried
/// with backoff while records carry path metadata. Returns at once when `kubernetes.enabled` is
/// false (the store answers [`super::Lookup::Unknown`]).
pub async fn run(
    config: KubernetesConfig,
    node_name: String,
    store: PodStore,
    metrics: EnrichMetrics,
    shutdown: CancellationToken,
) {
    if !config.enabled {
        store.set_health(Health::Disabled);
        tracing::info!("kubernetes.enabled is false: records carry metadata from their paths only");
        return;
    }
    let Some(client) = connect(&config, &store, &metrics, &shutdown).await else { return };
    tracing::info!(
        node = %node_name,
        namespace_labels = config.namespace_labels,
        streaming_list = config.streaming_list,
        "watching pods of this node"
    );
    let list = |c: watcher::Config| if config.streaming_list { c.streaming_lists() } else { c.any_semantic() };
    let pods = watcher::watcher(
        Api::<Pod>::all(client.clone()),
        list(watcher::Config::default().fields(&format!("spec.nodeName={node_name}"))),
    )
    .default_backoff()
    .boxed();
    let namespaces: BoxStream<'static, watcher::Result<Event<Namespace>>> = if config.namespace_labels {
        watcher::watcher(Api::<Namespace>::all(client), list(watcher::Config::default())).default_backoff().boxed()
    } else {
        futures::stream::pending().boxed()
    };
    let tick = (config.deleted_pod_grace / 4).clamp(Duration::from_secs(1), Duration::from_secs(30));
    drive(pods, namespaces, tick, &store, &metrics, &shutdown).await;
    metrics.synced.set(0);
}

/// The event loop of [`run`], over any streams (tests feed it fakes).
async fn drive(
    mut pods: BoxStream<'static, watcher::Result<Event<Pod>>>,
    mut namespaces: BoxStream<'static, watcher::Result<Event<Namespace>>>,
    tick: Duration,
    store: &PodStore,
    metrics: &EnrichMetrics,
    shutdown: &CancellationToken,
) {
    let mut pod_errors = Reporter::new("pods");
    let mut ns_errors = Reporter::new("namespaces");
    let mut ns_listed = false;
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            event = pods.next() => match event {
                Some(Ok(event)) => {
                    let init = matches!(event, Event::Init);
                    if init {
                        metrics.relist("pods");
                    } else {
                        pod_errors.recovered();
                        if store.health() == Health::Failing {
                            store.set_health(if store.synced() { Health::Synced } else { Health::Starting });
                        }
                    }
                    store.apply_pod_event(event, Instant::now());
                    metrics.pods.set(i64::try_from(store.len()).unwrap_or(i64::MAX));
                    metrics.synced.set(i64::from(store.health() == Health::Synced));
                }
                Some(Err(err)) => {
                    let class = classify(&err);
                    metrics.watch_error("pods", class.kind);
                    if class.kind != "gone" {
                        store.set_health(Health::Failing);
                        metrics.synced.set(0);
                    }
                    pod_errors.error(&class, &err, store.synced());
                }
                None => return,
            },
            event = namespaces.next() => match event {
                Some(Ok(event)) => {
                    if matches!(event, Event::Init) {
                        metrics.relist("namespaces");
                    } else {
                        ns_errors.recovered();
                        ns_listed |= matches!(event, Event::InitDone);
                    }
                    store.apply_namespace_event(event);
                }
                Some(Err(err)) => {
                    let class = classify(&err);
                    metrics.watch_error("namespaces", class.kind);
                    ns_errors.error(&class, &err, ns_listed);
                }
                None => namespaces = futures::stream::pending().boxed(),
            },
            _ = ticker.tick() => {
                let now = Instant::now();
                let collected = store.gc(now);
                metrics.pods_collected.inc_by(collected as u64);
                metrics.pods.set(i64::try_from(store.len()).unwrap_or(i64::MAX));
                if store.health() == Health::Failing && pod_errors.quiet_for(now) >= FAILING_QUIET {
                    // Reconnected without an event to show for it (quiet node).
                    store.set_health(if store.synced() { Health::Synced } else { Health::Starting });
                    metrics.synced.set(i64::from(store.synced()));
                    pod_errors.recovered();
                }
            }
        }
    }
}

/// Connects, retrying with backoff while the configuration is unusable. `None` on shutdown.
async fn connect(
    config: &KubernetesConfig,
    store: &PodStore,
    metrics: &EnrichMetrics,
    shutdown: &CancellationToken,
) -> Option<Client> {
    let mut delay = Duration::from_secs(1);
    let mut last: Option<String> = None;
    loop {
        match client(config).await {
            Ok(client) => return Some(client),
            Err(err) => {
                store.set_health(Health::Failing);
                metrics.watch_error("pods", "config");
                let text = err.to_string();
                if last.as_deref() != Some(&text) {
                    tracing::error!(
                        error = %text,
                        "cannot create a Kubernetes client: records carry metadata from their paths only; retrying \
                         (set kubernetes.kubeconfig, run in-cluster with a service account, or kubernetes.enabled: false)"
                    );
                    last = Some(text);
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(300));
    }
}

/// The class of a watch error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Class {
    /// Metric label: `forbidden`, `unauthorized`, `gone`, `api`, `connect`, `decode`, `other`.
    pub(crate) kind: &'static str,
    /// The API server's message for status errors.
    pub(crate) message: Option<String>,
}

pub(crate) fn classify(err: &watcher::Error) -> Class {
    use kube::Error as E;
    let status = |s: &kube::core::Status| {
        let kind = match s.code {
            403 => "forbidden",
            401 => "unauthorized",
            410 => "gone",
            _ if s.reason == "Forbidden" => "forbidden",
            _ if s.reason == "Unauthorized" => "unauthorized",
            _ if s.reason == "Expired" || s.reason == "Gone" => "gone",
            _ => "api",
        };
        Class { kind, message: Some(s.message.clone()) }
    };
    let plain = |kind| Class { kind, message: None };
    match err {
        watcher::Error::WatchError(s) => status(s),
        watcher::Error::InitialListFailed(e) | watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => {
            match e {
                E::Api(s) => status(s),
                E::HyperError(_) | E::Service(_) | E::ReadEvents(_) => plain("connect"),
                E::SerdeError(_) | E::FromUtf8(_) | E::LinesCodecMaxLineLengthExceeded => plain("decode"),
                E::Auth(_) => plain("unauthorized"),
                _ => plain("other"),
            }
        }
        _ => plain("other"),
    }
}

/// What the watch of `resource` needs, for the log of a refused request.
fn permission_hint(resource: &str) -> String {
    if resource == "namespaces" {
        "the shipper's ServiceAccount needs get/list/watch on namespaces because kubernetes.namespace_labels is on \
         (ClusterRole sluice-shipper-namespaces)"
            .to_owned()
    } else {
        format!("the shipper's ServiceAccount needs get/list/watch on {resource} (ClusterRole sluice-shipper)")
    }
}

/// Logs watch errors once per change, transient ones again at growing intervals, and recovery.
#[derive(Debug)]
pub(crate) struct Reporter {
    resource: &'static str,
    /// Signature of the error last logged.
    last: Option<String>,
    failures: u64,
    last_error: Option<Instant>,
    next_reminder: Option<Instant>,
    interval: Duration,
}

/// What [`Reporter::decide`] wants logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Report {
    /// Nothing (a repeat within the quiet interval, or a routine `410 Gone`).
    Quiet,
    /// A new error: log it in full.
    New,
    /// The same transient error is still happening: remind.
    Reminder,
}

impl Reporter {
    pub(crate) fn new(resource: &'static str) -> Self {
        Reporter { resource, last: None, failures: 0, last_error: None, next_reminder: None, interval: REMIND_FIRST }
    }

    /// Decides what to log for an error of `class` at `now` (pure, for tests).
    pub(crate) fn decide(&mut self, class: &Class, now: Instant) -> Report {
        if class.kind == "gone" {
            return Report::Quiet;
        }
        self.failures += 1;
        self.last_error = Some(now);
        let signature = format!("{}:{}", class.kind, class.message.as_deref().unwrap_or_default());
        let persistent = matches!(class.kind, "forbidden" | "unauthorized");
        if self.last.as_deref() != Some(&signature) {
            self.last = Some(signature);
            self.interval = REMIND_FIRST;
            self.next_reminder = (!persistent).then(|| now + self.interval);
            return Report::New;
        }
        match self.next_reminder {
            Some(at) if now >= at => {
                self.interval = (self.interval * 2).min(REMIND_MAX);
                self.next_reminder = Some(now + self.interval);
                Report::Reminder
            }
            _ => Report::Quiet,
        }
    }

    /// Logs `err` as [`Reporter::decide`] says. `allowed_before`: the watch had listed before, so a
    /// refusal may be an API server still loading its authorization cache after a restart (seen
    /// for a second or two) — a warning then, an error when the permission never worked.
    fn error(&mut self, class: &Class, err: &watcher::Error, allowed_before: bool) {
        let resource = self.resource;
        match self.decide(class, Instant::now()) {
            Report::Quiet if class.kind == "gone" => {
                tracing::debug!(resource, error = %err, "watch expired (410 Gone), relisting");
            }
            Report::Quiet => {}
            Report::New => match class.kind {
                "forbidden" | "unauthorized" => {
                    let message = class
                        .message
                        .as_deref()
                        .filter(|m| !m.is_empty())
                        .map_or_else(|| err.to_string(), str::to_owned);
                    let hint = permission_hint(resource);
                    if allowed_before {
                        tracing::warn!(
                            resource,
                            "{message} — {hint}; it was allowed before (RBAC changed, or the API server is still \
                             starting); records carry metadata from their paths meanwhile, retrying with backoff"
                        );
                    } else {
                        tracing::error!(
                            resource,
                            "{message} — {hint}; records carry metadata from their paths meanwhile, retrying with backoff"
                        );
                    }
                }
                _ => tracing::warn!(
                    resource,
                    error = %err,
                    kind = class.kind,
                    "Kubernetes API request failed; records carry metadata from their paths meanwhile, retrying with backoff"
                ),
            },
            Report::Reminder => tracing::warn!(
                resource,
                error = %err,
                failures = self.failures,
                "Kubernetes API still failing; records carry metadata from their paths"
            ),
        }
    }

    /// A request succeeded: logs recovery once after failures.
    pub(crate) fn recovered(&mut self) {
        if self.failures > 0 {
            tracing::info!(resource = self.resource, failures = self.failures, "Kubernetes watch recovered");
        }
        self.last = None;
        self.failures = 0;
        self.last_error = None;
        self.next_reminder = None;
        self.interval = REMIND_FIRST;
    }

    /// Time since the last failure (zero when none is pending).
    fn quiet_for(&self, now: Instant) -> Duration {
        self.last_error.map_or(Duration::ZERO, |at| now.saturating_duration_since(at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::pod::tests::pod;
    use crate::enrich::store::Lookup;
    use kube::core::Status;

    fn forbidden() -> watcher::Error {
        let status = Status::failure(
            "pods is forbidden: User \"system:serviceaccount:sluice:default\" cannot list resource \"pods\" in API group \"\" at the cluster scope",
            "Forbidden",
        )
        .with_code(403);
        watcher::Error::InitialListFailed(kube::Error::Api(Box::new(status)))
    }

    fn gone() -> watcher::Error {
        watcher::Error::WatchError(Box::new(Status::failure("too old resource version", "Expired").with_code(410)))
    }

    fn down() -> watcher::Error {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        watcher::Error::WatchFailed(kube::Error::ReadEvents(io))
    }

    #[test]
    fn hints_name_the_cluster_role() {
        assert!(permission_hint("pods").ends_with("get/list/watch on pods (ClusterRole sluice-shipper)"));
        assert!(permission_hint("namespaces").contains("(ClusterRole sluice-shipper-namespaces)"));
    }

    #[test]
    fn errors_are_classified() {
        assert_eq!(classify(&forbidden()).kind, "forbidden");
        assert!(classify(&forbidden()).message.unwrap().contains("cannot list resource \"pods\""));
        assert_eq!(classify(&gone()).kind, "gone");
        assert_eq!(classify(&down()).kind, "connect");
        let unauthorized = Status::failure("Unauthorized", "Unauthorized").with_code(401);
        let err = watcher::Error::WatchStartFailed(kube::Error::Api(Box::new(unauthorized)));
        assert_eq!(classify(&err).kind, "unauthorized");
        let busy = Status::failure("too many requests", "TooManyRequests").with_code(429);
        assert_eq!(classify(&watcher::Error::WatchError(Box::new(busy))).kind, "api");
        assert_eq!(classify(&watcher::Error::NoResourceVersion).kind, "other");
    }

    #[test]
    fn forbidden_is_reported_once_until_it_changes_or_recovers() {
        let mut r = Reporter::new("pods");
        let t0 = Instant::now();
        let class = classify(&forbidden());
        assert_eq!(r.decide(&class, t0), Report::New);
        for i in 1..100 {
            assert_eq!(r.decide(&class, t0 + Duration::from_secs(i * 60)), Report::Quiet, "no repeats");
        }
        let other = Class { kind: "forbidden", message: Some("namespaces is forbidden".into()) };
        assert_eq!(r.decide(&other, t0 + Duration::from_secs(7000)), Report::New, "a different error is logged");
        r.recovered();
        assert_eq!(r.decide(&other, t0 + Duration::from_secs(7001)), Report::New, "again after recovery");
    }

    #[test]
    fn api_down_reminders_back_off() {
        let mut r = Reporter::new("pods");
        let t0 = Instant::now();
        let class = classify(&down());
        assert_eq!(r.decide(&class, t0), Report::New);
        // An error every second for two hours: reminders at 1, 3, 7, 15, 31, 61, 91 … minutes.
        let mut reminders = Vec::new();
        for s in 1..=7200u64 {
            if r.decide(&class, t0 + Duration::from_secs(s)) == Report::Reminder {
                reminders.push(s / 60);
            }
        }
        assert_eq!(reminders, [1, 3, 7, 15, 31, 61, 91]);
        assert_eq!(r.decide(&classify(&gone()), t0), Report::Quiet, "410 is routine");
    }

    #[tokio::test]
    async fn drive_applies_events_marks_failures_and_stops_on_shutdown() {
        let store = PodStore::new(&KubernetesConfig::default());
        let metrics = EnrichMetrics::default();
        let shutdown = CancellationToken::new();
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let task = tokio::spawn({
            let (store, metrics, shutdown) = (store.clone(), metrics.clone(), shutdown.clone());
            async move {
                let ns = futures::stream::pending().boxed();
                drive(rx.boxed(), ns, Duration::from_secs(1), &store, &metrics, &shutdown).await
            }
        });
        let settle = || async {
            for _ in 0..50 {
                tokio::task::yield_now().await;
            }
        };
        tx.unbounded_send(Err(forbidden())).unwrap();
        settle().await;
        assert_eq!(store.lookup("u1"), Lookup::Unavailable, "refused: path metadata, no waiting");
        tx.unbounded_send(Ok(Event::Init)).unwrap();
        tx.unbounded_send(Ok(Event::InitApply(pod("shop", "web-0", "u1")))).unwrap();
        tx.unbounded_send(Ok(Event::InitDone)).unwrap();
        settle().await;
        assert!(matches!(store.lookup("u1"), Lookup::Found(_)));
        assert_eq!(store.lookup("u2"), Lookup::Pending);
        assert_eq!(store.health(), Health::Synced);
        assert_eq!(metrics.pods.get(), 1);
        assert_eq!(metrics.synced.get(), 1);
        tx.unbounded_send(Err(gone())).unwrap();
        settle().await;
        assert_eq!(store.health(), Health::Synced, "410 Gone is a routine relist");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn disabled_run_returns_at_once() {
        let config = KubernetesConfig { enabled: false, ..Default::default() };
        let store = PodStore::new(&config);
        run(config, "node-1".into(), store.clone(), EnrichMetrics::default(), CancellationToken::new()).await;
        assert_eq!(store.lookup("u"), Lookup::Unknown);
    }

    #[tokio::test]
    async fn client_from_a_kubeconfig_builds_without_a_crypto_provider_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\ncurrent-context: t\nclusters:\n- name: t\n  cluster:\n    server: https://127.0.0.1:1\n    insecure-skip-tls-verify: true\ncontexts:\n- name: t\n  context:\n    cluster: t\n    user: t\nusers:\n- name: t\n  user:\n    token: abc\n",
        )
        .unwrap();
        let config = KubernetesConfig { kubeconfig: path.display().to_string(), ..Default::default() };
        if let Err(err) = client(&config).await {
            panic!("{err}");
        }
        let missing = KubernetesConfig { kubeconfig: "/nonexistent/kubeconfig".into(), ..Default::default() };
        let Err(err) = client(&missing).await else { panic!("a missing kubeconfig is an error") };
        assert!(err.to_string().contains("/nonexistent/kubeconfig"), "{err}");
    }

    #[tokio::test]
    async fn run_against_a_closed_port_retries_until_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: t\nclusters:\n- name: t\n  cluster:\n    server: http://127.0.0.1:{port}\ncontexts:\n- name: t\n  context:\n    cluster: t\n    user: t\nusers:\n- name: t\n  user: {{}}\n"
            ),
        )
        .unwrap();
        let config = KubernetesConfig { kubeconfig: path.display().to_string(), ..Default::default() };
        let store = PodStore::new(&config);
        let metrics = EnrichMetrics::default();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(config, "node-1".into(), store.clone(), metrics.clone(), shutdown.clone()));
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.health() != Health::Failing && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(store.health(), Health::Failing);
        assert_eq!(store.lookup("u1"), Lookup::Unavailable);
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
    }
}

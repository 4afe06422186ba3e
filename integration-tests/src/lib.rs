//! Harness for tests against a **real** Apache Kafka broker and a **real** Elasticsearch (or
//! OpenSearch) node. Never a mock.
//!
//! # Layout
//! - [`kafka`] / [`elasticsearch`]: the shared services of a test run. When `KAFKA_BOOTSTRAP_SERVERS`
//!   / `ELASTICSEARCH_URL` are set (`./dev services up` prints them; `.ci/run` exports them) the
//!   running stack is used; otherwise a container of the local image is started for the caller
//!   and removed when the handle drops.
//! - [`kafka_dedicated`] / [`search_dedicated`]: always a private container, for fault tests that
//!   stop, restart or reconfigure the service.
//! - [`search_secured`]: a private Elasticsearch with security on (HTTPS with a generated CA, a
//!   file-realm user); [`search_cluster`]: private Elasticsearch nodes forming one cluster.
//! - [`unique_name`]: topic, group and index names that never collide between tests or runs;
//!   [`sweep`] deletes what earlier, finished test processes left on a long-lived stack.
//! - [`binaries`]: the workspace's binaries, refused when missing or older than their sources.
//! - [`metric_names`]: the metric names the binaries declare (from their sources), so that a
//!   helper reading an absent series as 0 can still refuse a name no binary has.
//!
//! Containers use host networking (no bridge network is allowed here), so every container gets
//! its own free 127.0.0.1 ports. When neither Docker nor the variables are available, the harness
//! panics with a message saying how to start the services: tests never pass silently.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use elasticsearch::Elasticsearch;
use elasticsearch::auth::Credentials;
use elasticsearch::cert::{Certificate, CertificateValidation};
use elasticsearch::http::Url;
use elasticsearch::http::transport::{SingleNodeConnectionPool, Transport, TransportBuilder};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use testcontainers::core::WaitFor;
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

pub mod binaries;
pub mod helm;
pub mod kube;
pub mod metric_names;
pub mod secure;
pub mod sweep;

/// Environment variable naming a running Kafka (`host:port[,host:port]`).
pub const KAFKA_ENV: &str = "KAFKA_BOOTSTRAP_SERVERS";
/// Environment variable naming a running Elasticsearch/OpenSearch (`http://host:port`).
pub const ES_ENV: &str = "ELASTICSEARCH_URL";

/// Line on stdout of `sluice/kafka` once the broker serves requests.
pub const KAFKA_STARTED: &str = "Kafka Server started";
/// Line fragment on stdout of `sluice/elasticsearch` / `sluice/opensearch` once the node started.
pub const SEARCH_STARTED: &str = "started";

const HOW_TO_START: &str = "no Kafka/Elasticsearch for the integration tests: either run `./dev services up` \
     and export the KAFKA_BOOTSTRAP_SERVERS=… and ELASTICSEARCH_URL=… lines it prints, or make a Docker \
     engine available (`./dev services build` builds the local images the tests start)";

/// Image of the Kafka broker (override with `SLUICE_KAFKA_IMAGE`, `name:tag`).
pub fn kafka_image() -> (String, String) {
    image_from_env("SLUICE_KAFKA_IMAGE", "sluice/kafka:4.1.1")
}

/// Image of the search engine for `flavor` (override with `SLUICE_ES_IMAGE` / `SLUICE_OPENSEARCH_IMAGE`).
pub fn search_image(flavor: Flavor) -> (String, String) {
    match flavor {
        Flavor::Elasticsearch => image_from_env("SLUICE_ES_IMAGE", "sluice/elasticsearch:8.19.21"),
        Flavor::OpenSearch => image_from_env("SLUICE_OPENSEARCH_IMAGE", "sluice/opensearch:2.19.6"),
    }
}

fn image_from_env(var: &str, default: &str) -> (String, String) {
    let image = std::env::var(var).unwrap_or_else(|_| default.to_owned());
    let (name, tag) = image.rsplit_once(':').unwrap_or((&image, "latest"));
    (name.to_owned(), tag.to_owned())
}

/// A name unique to this process and call: `<prefix>-<pid>-<n>-<millis>`, lower case.
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let millis = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
    format!("{}-{}-{n}-{}", prefix.to_ascii_lowercase(), std::process::id(), millis % 100_000_000)
}

/// First and last port [`free_port`] hands out: below the kernel's ephemeral range (32768–60999
/// by default, where `bind(0)` and every outgoing connection take their ports), above the shared
/// stack's and the compose stack's ports (9092, 9200, 19xxx), below `cli/tests/compose_stack.rs`'s 29xxx.
const LEASED_PORTS: (u16, u16) = (20_000, 28_999);

/// A TCP port on 127.0.0.1 that is free and **stays reserved for this test process until it
/// exits**, so that it can be handed to a container or child process that binds it later.
///
/// A port from `bind(0)` released before use can be taken in between by another test's container
/// (host networking) or by any outgoing connection. Instead, ports come from [`LEASED_PORTS`]
/// (outside the ephemeral range: no outgoing connection gets one) and each is locked with an
/// `flock` on `<tmp>/sluice-test-ports/<port>`, held until the process exits (the kernel releases
/// it even after a crash), so no other test process hands it out meanwhile. A port nothing binds
/// stays closed: it is also a "dead node" address no one else can take.
pub fn free_port() -> u16 {
    use std::sync::Mutex;
    static HELD: Mutex<Vec<std::fs::File>> = Mutex::new(Vec::new());
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join("sluice-test-ports");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let (first, last) = LEASED_PORTS;
    let span = u32::from(last - first) + 1;
    // Start at a different place per process: fewer collisions to skip.
    let start = std::process::id().wrapping_mul(2_654_435_761) % span + NEXT.fetch_add(1, Ordering::Relaxed);
    for i in 0..span {
        let port = first + ((start + i) % span) as u16;
        let path = dir.join(port.to_string());
        let Ok(file) = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path) else {
            continue;
        };
        if file.try_lock().is_err() {
            continue; // another test process holds it
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue; // something outside the tests uses it
        }
        HELD.lock().expect("port lease lock").push(file);
        return port;
    }
    panic!("no free port in {first}–{last} (all leased or in use)")
}

fn docker_available() -> bool {
    std::env::var_os("DOCKER_HOST").is_some() || std::path::Path::new("/var/run/docker.sock").exists()
}

/// A Kafka broker for a test: the shared one, or a container owned by this handle.
pub struct Kafka {
    /// Bootstrap servers, `host:port`.
    pub bootstrap: String,
    container: Option<ContainerAsync<GenericImage>>,
}

impl Kafka {
    /// A handle on brokers someone else runs (`host:port[,host:port]`); it owns no container.
    pub fn external(bootstrap: String) -> Kafka {
        Kafka { bootstrap, container: None }
    }

    /// A client config pointing at this broker.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        config
    }

    /// Creates a topic (idempotent: an existing topic is fine) and waits until its metadata shows.
    pub async fn create_topic(&self, name: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = self.client_config().create().expect("admin client");
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let results = admin.create_topics([&topic], &AdminOptions::new()).await.expect("create_topics");
        for result in results {
            if let Err((topic, code)) = result {
                assert_eq!(code, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists, "creating topic {topic}");
            }
        }
    }

    /// The id of the container this handle owns (`None` for the shared broker), for `docker` commands
    /// the handle has no method for (`docker pause`).
    pub fn container_id(&self) -> Option<&str> {
        self.container.as_ref().map(|c| c.id())
    }

    /// Stops the broker container (fault tests). Panics for the shared broker.
    pub async fn stop(&self) {
        self.container.as_ref().expect("stop() needs kafka_dedicated()").stop().await.expect("stop kafka");
    }

    /// Kills the broker container at once (SIGKILL: no controlled shutdown). Panics for the shared broker.
    pub async fn kill(&self) {
        let container = self.container.as_ref().expect("kill() needs a dedicated broker");
        container.stop_with_timeout(Some(0)).await.expect("kill kafka");
    }

    /// Starts the broker container again after [`Kafka::stop`] and waits until it answers.
    pub async fn start(&self) {
        self.container.as_ref().expect("start() needs kafka_dedicated()").start().await.expect("start kafka");
        // Generous: a JVM restarting on a loaded 2-core machine has been seen to take over 90 s.
        wait_for_kafka(&self.bootstrap, Duration::from_secs(240)).await;
    }
}

/// The shared Kafka of this run (`KAFKA_BOOTSTRAP_SERVERS`) or, without it, a private container.
pub async fn kafka() -> Kafka {
    match std::env::var(KAFKA_ENV) {
        Ok(bootstrap) if !bootstrap.is_empty() => {
            wait_for_kafka(&bootstrap, Duration::from_secs(30)).await;
            sweep::kafka(&bootstrap).await;
            Kafka { bootstrap, container: None }
        }
        _ => kafka_dedicated().await,
    }
}

/// A private single-node Kafka (KRaft) container on free ports, removed when the handle drops.
pub async fn kafka_dedicated() -> Kafka {
    assert!(docker_available(), "{HOW_TO_START}");
    let (port, controller) = (free_port(), free_port());
    let (name, tag) = kafka_image();
    let container = GenericImage::new(name, tag)
        .with_wait_for(WaitFor::message_on_stdout(KAFKA_STARTED))
        .with_network("host")
        .with_label("sluice.test", "1")
        .with_env_var("KAFKA_NODE_ID", "1")
        .with_env_var("KAFKA_PROCESS_ROLES", "broker,controller")
        .with_env_var("KAFKA_LISTENERS", format!("PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}"))
        .with_env_var("KAFKA_ADVERTISED_LISTENERS", format!("PLAINTEXT://127.0.0.1:{port}"))
        .with_env_var("KAFKA_CONTROLLER_QUORUM_VOTERS", format!("1@127.0.0.1:{controller}"))
        .with_env_var("KAFKA_HEAP_OPTS", "-Xmx512m -Xms256m")
        .with_startup_timeout(Duration::from_secs(180))
        .start()
        .await
        .unwrap_or_else(|err| panic!("cannot start Kafka container: {err}\n{HOW_TO_START}"));
    let bootstrap = format!("127.0.0.1:{port}");
    wait_for_kafka(&bootstrap, Duration::from_secs(60)).await;
    Kafka { bootstrap, container: Some(container) }
}

/// `nodes` private Kafka containers forming one KRaft cluster (each a combined broker and
/// controller, all of them voters), configured like `./dev services --kafka-brokers 3`: default
/// replication factor `min(nodes, 3)`, `min.insync.replicas` 2 from three nodes on, the internal
/// topics replicated the same way. Element `i` is node `i + 1`; [`Kafka::bootstrap`] of each is its
/// own listener, [`cluster_bootstrap`] joins them. Waits until every broker is in the metadata.
pub async fn kafka_cluster(nodes: usize) -> Vec<Kafka> {
    assert!(docker_available(), "{HOW_TO_START}");
    assert!(nodes >= 2, "a cluster has at least two brokers");
    let ports: Vec<(u16, u16)> = (0..nodes).map(|_| (free_port(), free_port())).collect();
    let voters =
        ports.iter().enumerate().map(|(i, (_, c))| format!("{}@127.0.0.1:{c}", i + 1)).collect::<Vec<_>>().join(",");
    let rf = nodes.min(3).to_string();
    let min_isr = if nodes >= 3 { "2" } else { "1" };
    let cluster_id = kraft_cluster_id();
    let (name, tag) = kafka_image();
    let starts = ports.iter().enumerate().map(|(i, (port, controller))| {
        GenericImage::new(name.clone(), tag.clone())
            .with_wait_for(WaitFor::message_on_stdout(KAFKA_STARTED))
            .with_network("host")
            .with_label("sluice.test", "1")
            .with_env_var("CLUSTER_ID", cluster_id.clone())
            .with_env_var("KAFKA_NODE_ID", (i + 1).to_string())
            .with_env_var("KAFKA_PROCESS_ROLES", "broker,controller")
            .with_env_var(
                "KAFKA_LISTENERS",
                format!("PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}"),
            )
            .with_env_var("KAFKA_ADVERTISED_LISTENERS", format!("PLAINTEXT://127.0.0.1:{port}"))
            .with_env_var("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER")
            .with_env_var("KAFKA_INTER_BROKER_LISTENER_NAME", "PLAINTEXT")
            .with_env_var("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT")
            .with_env_var("KAFKA_CONTROLLER_QUORUM_VOTERS", voters.clone())
            .with_env_var("KAFKA_DEFAULT_REPLICATION_FACTOR", rf.clone())
            .with_env_var("KAFKA_MIN_INSYNC_REPLICAS", min_isr)
            .with_env_var("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", rf.clone())
            .with_env_var("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", rf.clone())
            .with_env_var("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", min_isr)
            .with_env_var("KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR", rf.clone())
            .with_env_var("KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR", min_isr)
            .with_env_var("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
            .with_env_var("KAFKA_HEAP_OPTS", "-Xmx384m -Xms128m")
            .with_startup_timeout(Duration::from_secs(480))
            .start()
    });
    // All at once: a node reports "started" only once the controller quorum has a majority.
    let containers = futures_join_all(starts).await;
    let mut out = Vec::new();
    for ((port, _), container) in ports.iter().zip(containers) {
        let container = container.unwrap_or_else(|err| panic!("cannot start a Kafka node: {err}\n{HOW_TO_START}"));
        out.push(Kafka { bootstrap: format!("127.0.0.1:{port}"), container: Some(container) });
    }
    let bootstrap = cluster_bootstrap(&out);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let seen = {
            let bootstrap = bootstrap.clone();
            tokio::task::spawn_blocking(move || {
                use rdkafka::consumer::{BaseConsumer, Consumer};
                let consumer: BaseConsumer =
                    ClientConfig::new().set("bootstrap.servers", &bootstrap).create().expect("metadata client");
                consumer.fetch_metadata(None, Duration::from_secs(3)).map(|m| m.brokers().len()).unwrap_or(0)
            })
            .await
            .expect("metadata task")
        };
        if seen == nodes {
            return out;
        }
        assert!(Instant::now() < deadline, "only {seen} of {nodes} Kafka brokers joined the cluster");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The bootstrap list of all nodes of a [`kafka_cluster`] (`host:port,host:port,…`).
pub fn cluster_bootstrap(nodes: &[Kafka]) -> String {
    nodes.iter().map(|k| k.bootstrap.as_str()).collect::<Vec<_>>().join(",")
}

/// A KRaft cluster id: 16 bytes in URL-safe base64 without padding (what `kafka-storage random-uuid`
/// prints). The bytes only need to differ between runs: pid, time and a counter, no RNG needed.
fn kraft_cluster_id() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&(nanos as u64).to_le_bytes());
    bytes[8..12].copy_from_slice(&std::process::id().to_le_bytes());
    bytes[12..].copy_from_slice(&N.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
        for k in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * k) & 63) as usize] as char);
        }
    }
    out
}

async fn wait_for_kafka(bootstrap: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let ok = {
            let bootstrap = bootstrap.to_owned();
            tokio::task::spawn_blocking(move || {
                use rdkafka::consumer::{BaseConsumer, Consumer};
                let consumer: BaseConsumer =
                    ClientConfig::new().set("bootstrap.servers", &bootstrap).create().expect("metadata client");
                consumer.fetch_metadata(None, Duration::from_secs(3)).map(|m| !m.brokers().is_empty())
            })
            .await
            .expect("metadata task")
        };
        match ok {
            Ok(true) => return,
            other if Instant::now() > deadline => {
                panic!("Kafka at {bootstrap} does not answer: {other:?}\n{HOW_TO_START}")
            }
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Which search engine a [`Search`] handle talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Elasticsearch 8.x.
    Elasticsearch,
    /// OpenSearch 2.x.
    OpenSearch,
}

/// An Elasticsearch or OpenSearch node for a test.
pub struct Search {
    /// Base URL, `http://127.0.0.1:<port>` (`https://` for [`search_secured`]).
    pub url: String,
    /// Which engine runs there.
    pub flavor: Flavor,
    /// Basic-auth user and password ([`search_secured`]).
    pub credentials: Option<(String, String)>,
    /// The CA certificate (PEM) that signed the node's HTTPS certificate ([`search_secured`]).
    pub ca_pem: Option<Vec<u8>>,
    container: Option<ContainerAsync<GenericImage>>,
}

impl Search {
    /// An `elasticsearch` crate client for this node (with its credentials and CA, if any).
    pub fn client(&self) -> Elasticsearch {
        client(&self.url, self.credentials.as_ref(), self.ca_pem.as_deref())
    }

    /// A GET returning the JSON body, for assertions (`/_count`, `/_cat/indices?format=json`, …).
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        get_json(&self.client(), path).await.unwrap_or_else(|| panic!("GET {}{path} failed", self.url))
    }

    /// Sends a request with an optional JSON body; returns the status and the JSON answer
    /// (`Null` if it is not JSON). Panics when there is no HTTP response.
    pub async fn request(
        &self,
        method: elasticsearch::http::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let response = self
            .client()
            .send(
                method,
                path,
                Default::default(),
                Option::<&()>::None,
                body.map(elasticsearch::http::request::JsonBody::new),
                Some(Duration::from_secs(30)),
            )
            .await
            .unwrap_or_else(|err| panic!("{method:?} {}{path}: {err}", self.url));
        let status = response.status_code().as_u16();
        (status, response.json().await.unwrap_or_default())
    }

    /// Stops the node container (fault tests). Panics for the shared node.
    pub async fn stop(&self) {
        self.container.as_ref().expect("stop() needs search_dedicated()").stop().await.expect("stop search");
    }

    /// Kills the node container at once (SIGKILL: no graceful shutdown). Panics for the shared node.
    pub async fn kill(&self) {
        let container = self.container.as_ref().expect("kill() needs a dedicated container");
        container.stop_with_timeout(Some(0)).await.expect("kill search");
    }

    /// Starts the node container again after [`Search::stop`] and waits for green/yellow health.
    pub async fn start(&self) {
        self.container.as_ref().expect("start() needs search_dedicated()").start().await.expect("start search");
        // Shard recovery after a restart took over 5 min at a load average of 60–110 on 2 cores.
        wait_for_client(&self.client(), &self.url, Duration::from_secs(600)).await;
    }
}

fn client(url: &str, credentials: Option<&(String, String)>, ca_pem: Option<&[u8]>) -> Elasticsearch {
    let pool = SingleNodeConnectionPool::new(Url::parse(url).expect("search URL"));
    let mut builder = TransportBuilder::new(pool).enable_meta_header(false);
    if let Some((user, password)) = credentials {
        builder = builder.auth(Credentials::Basic(user.clone(), password.clone()));
    }
    if let Some(pem) = ca_pem {
        builder = builder.cert_validation(CertificateValidation::Full(Certificate::from_pem(pem).expect("CA PEM")));
    }
    Elasticsearch::new(builder.build().expect("transport"))
}

/// The shared Elasticsearch of this run (`ELASTICSEARCH_URL`) or, without it, a private container.
pub async fn elasticsearch() -> Search {
    match std::env::var(ES_ENV) {
        Ok(url) if !url.is_empty() => {
            let url = url.trim_end_matches('/').to_owned();
            let flavor = wait_for_search(&url, Duration::from_secs(60)).await;
            sweep::search(&url).await;
            Search { url, flavor, credentials: None, ca_pem: None, container: None }
        }
        _ => search_dedicated(Flavor::Elasticsearch, &[]).await,
    }
}

/// A private single-node search engine container on free ports, with extra settings
/// (e.g. `("thread_pool.write.queue_size", "1")`), removed when the handle drops.
pub async fn search_dedicated(flavor: Flavor, settings: &[(&str, &str)]) -> Search {
    assert!(docker_available(), "{HOW_TO_START}");
    let (http, transport) = (free_port(), free_port());
    let (name, tag) = search_image(flavor);
    let java_opts = match flavor {
        Flavor::Elasticsearch => "ES_JAVA_OPTS",
        Flavor::OpenSearch => "OPENSEARCH_JAVA_OPTS",
    };
    let mut request = GenericImage::new(name, tag)
        .with_wait_for(WaitFor::message_on_stdout(SEARCH_STARTED))
        .with_network("host")
        .with_label("sluice.test", "1")
        .with_env_var("http.port", http.to_string())
        .with_env_var("transport.port", transport.to_string())
        .with_env_var(java_opts, "-Xms512m -Xmx512m")
        // Generous: at a load average near 100 on 2 cores a node took over 4 min to start.
        .with_startup_timeout(Duration::from_secs(600));
    for (key, value) in settings {
        request = request.with_env_var(*key, *value);
    }
    let container =
        request.start().await.unwrap_or_else(|err| panic!("cannot start {flavor:?} container: {err}\n{HOW_TO_START}"));
    let url = format!("http://127.0.0.1:{http}");
    let seen = wait_for_search(&url, Duration::from_secs(300)).await;
    assert_eq!(seen, flavor, "the image at {url} is not {flavor:?}");
    Search { url, flavor, credentials: None, ca_pem: None, container: Some(container) }
}

/// Where `sluice/elasticsearch` writes the CA of its generated HTTPS certificate (`SLUICE_ES_TLS`).
pub const SECURED_CA_PATH: &str = "/usr/share/elasticsearch/config/certs/ca.crt";

/// A private single-node Elasticsearch with security on: HTTPS on `https://127.0.0.1:<port>` with a
/// certificate for `localhost` / `127.0.0.1` signed by a CA made at start (`elasticsearch-certutil`),
/// and a file-realm superuser `user` / `password` (`elasticsearch-users useradd`, at least 6
/// characters). The returned handle carries the credentials and the CA PEM ([`Search::ca_pem`]).
pub async fn search_secured(user: &str, password: &str) -> Search {
    assert!(docker_available(), "{HOW_TO_START}");
    let (http, transport) = (free_port(), free_port());
    let (name, tag) = search_image(Flavor::Elasticsearch);
    let container = GenericImage::new(name, tag)
        .with_wait_for(WaitFor::message_on_stdout(SEARCH_STARTED))
        .with_network("host")
        .with_label("sluice.test", "1")
        .with_env_var("http.port", http.to_string())
        .with_env_var("transport.port", transport.to_string())
        .with_env_var("ES_JAVA_OPTS", "-Xms512m -Xmx512m")
        .with_env_var("SLUICE_ES_TLS", "true")
        .with_env_var("SLUICE_ES_USER", user)
        .with_env_var("SLUICE_ES_PASSWORD", password)
        .with_startup_timeout(Duration::from_secs(240))
        .start()
        .await
        .unwrap_or_else(|err| panic!("cannot start a secured Elasticsearch container: {err}\n{HOW_TO_START}"));
    let ca_pem = container.copy_file_from(SECURED_CA_PATH, Vec::<u8>::new()).await.expect("copy the CA out");
    let url = format!("https://127.0.0.1:{http}");
    let credentials = Some((user.to_owned(), password.to_owned()));
    wait_for_client(&client(&url, credentials.as_ref(), Some(&ca_pem)), &url, Duration::from_secs(120)).await;
    Search { url, flavor: Flavor::Elasticsearch, credentials, ca_pem: Some(ca_pem), container: Some(container) }
}

/// `nodes` private Elasticsearch containers forming one cluster (own `cluster.name`, seed hosts on
/// their transport ports). Only the first node is master-eligible, so any other node can be
/// stopped or killed without the cluster losing its master. Waits until all nodes joined.
pub async fn search_cluster(nodes: usize) -> Vec<Search> {
    assert!(docker_available(), "{HOW_TO_START}");
    assert!(nodes >= 2, "a cluster has at least two nodes");
    let ports: Vec<(u16, u16)> = (0..nodes).map(|_| (free_port(), free_port())).collect();
    let cluster = unique_name("sluice-it-cluster");
    let seeds = ports.iter().map(|(_, t)| format!("127.0.0.1:{t}")).collect::<Vec<_>>().join(",");
    let (name, tag) = search_image(Flavor::Elasticsearch);
    let starts = ports.iter().enumerate().map(|(i, (http, transport))| {
        let node_name = format!("{cluster}-{i}");
        let mut request = GenericImage::new(name.clone(), tag.clone())
            .with_wait_for(WaitFor::message_on_stdout(SEARCH_STARTED))
            .with_network("host")
            .with_label("sluice.test", "1")
            .with_env_var("cluster.name", cluster.clone())
            .with_env_var("node.name", node_name)
            .with_env_var("http.port", http.to_string())
            .with_env_var("transport.port", transport.to_string())
            .with_env_var("discovery.seed_hosts", seeds.clone())
            .with_env_var("ES_JAVA_OPTS", "-Xms512m -Xmx512m")
            .with_startup_timeout(Duration::from_secs(600));
        request = if i == 0 {
            request.with_env_var("cluster.initial_master_nodes", format!("{cluster}-0"))
        } else {
            request.with_env_var("node.roles", "data,ingest")
        };
        request.start()
    });
    let containers = futures_join_all(starts).await;
    let mut out = Vec::new();
    for ((http, _), container) in ports.iter().zip(containers) {
        let container = container.unwrap_or_else(|err| panic!("cannot start a cluster node: {err}\n{HOW_TO_START}"));
        let url = format!("http://127.0.0.1:{http}");
        out.push(Search {
            url,
            flavor: Flavor::Elasticsearch,
            credentials: None,
            ca_pem: None,
            container: Some(container),
        });
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let health = get_json(&out[0].client(), "/_cluster/health").await;
        if health.as_ref().and_then(|h| h["number_of_nodes"].as_u64()) == Some(nodes as u64) {
            break;
        }
        assert!(Instant::now() < deadline, "the {nodes} nodes did not form a cluster: {health:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    out
}

/// Awaits all futures concurrently, results in order (no `futures` dependency needed).
async fn futures_join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.expect("task"));
    }
    out
}

/// Waits for `_cluster/health` green or yellow; tells Elasticsearch from OpenSearch by the
/// `_nodes/_local` answer (`GET /` is missing in the integration-test distributions).
async fn wait_for_search(url: &str, timeout: Duration) -> Flavor {
    wait_for_client(&Elasticsearch::new(Transport::single_node(url).expect("transport")), url, timeout).await
}

async fn wait_for_client(client: &Elasticsearch, url: &str, timeout: Duration) -> Flavor {
    let deadline = Instant::now() + timeout;
    loop {
        let health = get_json(client, "/_cluster/health").await;
        if let Some(status) = health.as_ref().and_then(|h| h["status"].as_str())
            && (status == "green" || status == "yellow")
        {
            let nodes = get_json(client, "/_nodes/_local/settings").await.unwrap_or_default();
            let is_opensearch = nodes.to_string().contains("opensearch");
            return if is_opensearch { Flavor::OpenSearch } else { Flavor::Elasticsearch };
        }
        if Instant::now() > deadline {
            panic!("search engine at {url} is not healthy: {health:?}\n{HOW_TO_START}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// GET `path` and parse the JSON body; `None` on any transport or parse failure.
async fn get_json(client: &Elasticsearch, path: &str) -> Option<serde_json::Value> {
    let response = client
        .send(
            elasticsearch::http::Method::Get,
            path,
            Default::default(),
            Option::<&()>::None,
            None::<&str>,
            Some(Duration::from_secs(10)),
        )
        .await
        .ok()?;
    response.json().await.ok()
}

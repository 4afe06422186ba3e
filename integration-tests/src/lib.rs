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
//! - [`unique_name`]: topic, group and index names that never collide between tests or runs.
//!
//! Containers use host networking (no bridge network is allowed here), so every container gets
//! its own free 127.0.0.1 ports. When neither Docker nor the variables are available, the harness
//! panics with a message saying how to start the services: tests never pass silently.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use elasticsearch::Elasticsearch;
use elasticsearch::http::transport::Transport;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use testcontainers::core::WaitFor;
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

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

/// A free TCP port on 127.0.0.1 (bound then released; good enough for test containers).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind 127.0.0.1:0").port()
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

    /// Stops the broker container (fault tests). Panics for the shared broker.
    pub async fn stop(&self) {
        self.container.as_ref().expect("stop() needs kafka_dedicated()").stop().await.expect("stop kafka");
    }

    /// Starts the broker container again after [`Kafka::stop`] and waits until it answers.
    pub async fn start(&self) {
        self.container.as_ref().expect("start() needs kafka_dedicated()").start().await.expect("start kafka");
        wait_for_kafka(&self.bootstrap, Duration::from_secs(90)).await;
    }
}

/// The shared Kafka of this run (`KAFKA_BOOTSTRAP_SERVERS`) or, without it, a private container.
pub async fn kafka() -> Kafka {
    match std::env::var(KAFKA_ENV) {
        Ok(bootstrap) if !bootstrap.is_empty() => {
            wait_for_kafka(&bootstrap, Duration::from_secs(30)).await;
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
    /// Base URL, `http://127.0.0.1:<port>`.
    pub url: String,
    /// Which engine runs there.
    pub flavor: Flavor,
    container: Option<ContainerAsync<GenericImage>>,
}

impl Search {
    /// An `elasticsearch` crate client for this node.
    pub fn client(&self) -> Elasticsearch {
        Elasticsearch::new(Transport::single_node(&self.url).expect("transport"))
    }

    /// A GET returning the JSON body, for assertions (`/_count`, `/_cat/indices?format=json`, …).
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        get_json(&self.client(), path).await.unwrap_or_else(|| panic!("GET {}{path} failed", self.url))
    }

    /// Stops the node container (fault tests). Panics for the shared node.
    pub async fn stop(&self) {
        self.container.as_ref().expect("stop() needs search_dedicated()").stop().await.expect("stop search");
    }

    /// Starts the node container again after [`Search::stop`] and waits for green/yellow health.
    pub async fn start(&self) {
        self.container.as_ref().expect("start() needs search_dedicated()").start().await.expect("start search");
        wait_for_search(&self.url, Duration::from_secs(120)).await;
    }
}

/// The shared Elasticsearch of this run (`ELASTICSEARCH_URL`) or, without it, a private container.
pub async fn elasticsearch() -> Search {
    match std::env::var(ES_ENV) {
        Ok(url) if !url.is_empty() => {
            let url = url.trim_end_matches('/').to_owned();
            let flavor = wait_for_search(&url, Duration::from_secs(60)).await;
            Search { url, flavor, container: None }
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
        .with_startup_timeout(Duration::from_secs(240));
    for (key, value) in settings {
        request = request.with_env_var(*key, *value);
    }
    let container =
        request.start().await.unwrap_or_else(|err| panic!("cannot start {flavor:?} container: {err}\n{HOW_TO_START}"));
    let url = format!("http://127.0.0.1:{http}");
    let seen = wait_for_search(&url, Duration::from_secs(120)).await;
    assert_eq!(seen, flavor, "the image at {url} is not {flavor:?}");
    Search { url, flavor, container: Some(container) }
}

/// Waits for `_cluster/health` green or yellow; tells Elasticsearch from OpenSearch by the
/// `_nodes/_local` answer (`GET /` is missing in the integration-test distributions).
async fn wait_for_search(url: &str, timeout: Duration) -> Flavor {
    let client = Elasticsearch::new(Transport::single_node(url).expect("transport"));
    let deadline = Instant::now() + timeout;
    loop {
        let health = get_json(&client, "/_cluster/health").await;
        if let Some(status) = health.as_ref().and_then(|h| h["status"].as_str()) {
            if status == "green" || status == "yellow" {
                let nodes = get_json(&client, "/_nodes/_local/settings").await.unwrap_or_default();
                let is_opensearch = nodes.to_string().contains("opensearch");
                return if is_opensearch { Flavor::OpenSearch } else { Flavor::Elasticsearch };
            }
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

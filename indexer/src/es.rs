//! Elasticsearch / OpenSearch client: several nodes, round-robin, a circuit breaker per node,
//! TLS and authentication.
//!
//! Built on the `elasticsearch` crate's raw transport (one [`Transport`] per node): the crate has
//! no retries or failover of its own (elastic/elasticsearch-rs#37), so node choice, breaker and
//! retries live here and in [`crate::bulk`]. Request bodies are passed as one [`Bytes`] buffer, so
//! a pre-built `_bulk` body is never copied.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use elasticsearch::auth::Credentials;
use elasticsearch::cert::{Certificate, CertificateValidation};
use elasticsearch::http::headers::{CONTENT_TYPE, HeaderMap, HeaderValue};
use elasticsearch::http::transport::{SingleNodeConnectionPool, Transport, TransportBuilder};
use elasticsearch::http::{Method, Url};

use crate::config::{BreakerConfig, ElasticsearchConfig};

/// Why the client cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A URL does not parse.
    #[error("elasticsearch.urls: `{0}` is not a valid URL")]
    Url(String),
    /// The CA file cannot be read or parsed.
    #[error("elasticsearch.tls.ca_file: {0}")]
    Ca(String),
    /// The HTTP client cannot be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// Why a request got no HTTP response.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RequestError {
    /// Every node's breaker is open; the earliest probe is due in `retry_in`.
    #[error("no Elasticsearch node available (all circuit breakers open)")]
    NoNode {
        /// When a node may be probed again.
        retry_in: Duration,
    },
    /// The request timed out.
    #[error("request to {node} timed out")]
    Timeout {
        /// Node URL (without credentials).
        node: String,
    },
    /// Connection refused, reset, TLS failure and such.
    #[error("request to {node} failed: {message}")]
    Transport {
        /// Node URL (without credentials).
        node: String,
        /// The error.
        message: String,
    },
}

impl RequestError {
    /// Short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            RequestError::NoNode { .. } => "no_node",
            RequestError::Timeout { .. } => "timeout",
            RequestError::Transport { .. } => "transport",
        }
    }
}

/// An HTTP response, fully read.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Body bytes.
    pub body: Bytes,
    /// Whether the server sent `X-elastic-product: Elasticsearch`.
    pub elastic_product: bool,
    /// Index of the node that answered.
    pub node: usize,
}

/// The search engine behind the URLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Distribution {
    /// Elasticsearch, with its version.
    Elasticsearch(String),
    /// OpenSearch, with its version.
    OpenSearch(String),
}

impl Distribution {
    /// `elasticsearch` or `opensearch`.
    pub fn name(&self) -> &'static str {
        match self {
            Distribution::Elasticsearch(_) => "elasticsearch",
            Distribution::OpenSearch(_) => "opensearch",
        }
    }

    /// The version string.
    pub fn version(&self) -> &str {
        match self {
            Distribution::Elasticsearch(v) | Distribution::OpenSearch(v) => v,
        }
    }
}

/// What the breaker says about sending to a node now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allow {
    /// Closed: send.
    Yes,
    /// Open, probe due: send one request as a probe.
    Probe,
    /// Open: do not send before this instant.
    No(Instant),
}

/// Per-node circuit breaker: opens after `failure_threshold` consecutive failures, then lets one
/// probe through after `min_open`, doubling up to `max_open` while probes fail.
#[derive(Debug, Clone)]
pub struct Breaker {
    config: BreakerConfig,
    failures: u32,
    open_until: Option<Instant>,
    open_for: Duration,
    probing: bool,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        let open_for = config.min_open;
        Breaker { config, failures: 0, open_until: None, open_for, probing: false }
    }

    /// Whether the breaker is closed (the node is considered up).
    pub fn is_closed(&self) -> bool {
        self.open_until.is_none()
    }

    /// Asks to send a request at `now`.
    pub fn allow(&mut self, now: Instant) -> Allow {
        match self.open_until {
            None => Allow::Yes,
            Some(until) if now >= until && !self.probing => {
                self.probing = true;
                Allow::Probe
            }
            // A probe is out: wait for it, but do not wait forever if it never reports.
            Some(until) if now >= until => Allow::No(now + self.config.min_open),
            Some(until) => Allow::No(until),
        }
    }

    /// Reports a successful request.
    pub fn success(&mut self) {
        self.failures = 0;
        self.open_until = None;
        self.probing = false;
        self.open_for = self.config.min_open;
    }

    /// Reports a failed request at `now`. Returns `true` when this opened the breaker.
    pub fn failure(&mut self, now: Instant) -> bool {
        self.failures = self.failures.saturating_add(1);
        if self.open_until.is_some() {
            // A failed probe: stay open, longer.
            if self.probing {
                self.open_for = (self.open_for * 2).min(self.config.max_open);
            }
            self.probing = false;
            self.open_until = Some(now + self.open_for);
            return false;
        }
        if self.failures >= self.config.failure_threshold {
            self.open_until = Some(now + self.open_for);
            return true;
        }
        false
    }
}

struct Node {
    url: String,
    transport: Transport,
    breaker: Mutex<Breaker>,
}

/// The set of configured nodes.
pub struct NodePool {
    nodes: Vec<Node>,
    next: AtomicUsize,
}

impl std::fmt::Debug for NodePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodePool").field("nodes", &self.urls()).finish()
    }
}

/// `_bulk` responses are trimmed to what classification needs (positions are kept: every item
/// keeps its `status`).
pub const BULK_FILTER_PATH: &str = "errors,items.*.status,items.*.error.type,items.*.error.reason,\
items.*.error.caused_by.type,items.*.error.caused_by.reason";

impl NodePool {
    /// Builds one transport per URL with the configured TLS and credentials.
    pub fn new(config: &ElasticsearchConfig) -> Result<Self, BuildError> {
        let ca_pem = match &config.tls.ca_file {
            Some(path) if !config.tls.insecure_skip_verify => {
                let pem = std::fs::read(path).map_err(|e| BuildError::Ca(format!("{}: {e}", path.display())))?;
                Certificate::from_pem(&pem).map_err(|e| BuildError::Ca(format!("{}: {e}", path.display())))?;
                Some(pem)
            }
            _ => None,
        };
        let mut nodes = Vec::new();
        for raw in &config.urls {
            let mut url = Url::parse(raw.expose()).map_err(|_| BuildError::Url(raw.redacted()))?;
            let mut credentials = credentials(config);
            if !url.username().is_empty() {
                // Credentials in the URL are moved to the Authorization header (and out of logs).
                if credentials.is_none() {
                    let user = url.username().to_owned();
                    let password = url.password().unwrap_or_default().to_owned();
                    credentials = Some(Credentials::Basic(user, password));
                }
                let _ = url.set_username("");
                let _ = url.set_password(None);
            }
            let mut builder = TransportBuilder::new(SingleNodeConnectionPool::new(url.clone()))
                .enable_meta_header(false)
                .timeout(config.request_timeout);
            if let Some(credentials) = credentials {
                builder = builder.auth(credentials);
            }
            if config.tls.insecure_skip_verify {
                builder = builder.cert_validation(CertificateValidation::None);
            } else if let Some(pem) = &ca_pem {
                // `Certificate` is not Clone: parse the (already validated) PEM once per node.
                let cert = Certificate::from_pem(pem).map_err(|e| BuildError::Ca(e.to_string()))?;
                builder = builder.cert_validation(CertificateValidation::Full(cert));
            }
            let transport = builder.build().map_err(|e| BuildError::Client(e.to_string()))?;
            nodes.push(Node {
                url: url.as_str().trim_end_matches('/').to_owned(),
                transport,
                breaker: Mutex::new(Breaker::new(config.breaker.clone())),
            });
        }
        Ok(NodePool { nodes, next: AtomicUsize::new(0) })
    }

    /// Node URLs, without credentials.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url.clone()).collect()
    }

    /// Whether each node's breaker is closed.
    pub fn node_states(&self) -> Vec<(String, bool)> {
        self.nodes.iter().map(|n| (n.url.clone(), n.breaker.lock().expect("breaker lock").is_closed())).collect()
    }

    /// Picks the next node round-robin whose breaker allows a request.
    fn pick(&self) -> Result<usize, RequestError> {
        let now = Instant::now();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut earliest: Option<Instant> = None;
        for i in 0..self.nodes.len() {
            let idx = (start + i) % self.nodes.len();
            match self.nodes[idx].breaker.lock().expect("breaker lock").allow(now) {
                Allow::Yes | Allow::Probe => return Ok(idx),
                Allow::No(until) => earliest = Some(earliest.map_or(until, |e| e.min(until))),
            }
        }
        let retry_in = earliest.map_or(Duration::from_secs(1), |e| e.saturating_duration_since(now));
        Err(RequestError::NoNode { retry_in })
    }

    /// Sends one request to the next available node and reads the whole response. Connection
    /// errors, timeouts and 502/503/504 count against the node's breaker.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Bytes>,
        content_type: Option<&'static str>,
        timeout: Option<Duration>,
    ) -> Result<Reply, RequestError> {
        let idx = self.pick()?;
        let node = &self.nodes[idx];
        let mut headers = HeaderMap::new();
        if let Some(ct) = content_type {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
        }
        let query = if query.is_empty() { None } else { Some(query) };
        let result = node.transport.send(method, path, headers, query, body, timeout).await;
        let outcome = match result {
            Ok(response) => {
                let status = response.status_code().as_u16();
                let elastic_product = response
                    .headers()
                    .get("x-elastic-product")
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"elasticsearch"));
                match response.bytes().await {
                    Ok(body) => Ok(Reply { status, body, elastic_product, node: idx }),
                    Err(e) => Err(classify_error(&node.url, &e)),
                }
            }
            Err(e) => Err(classify_error(&node.url, &e)),
        };
        let node_failed = match &outcome {
            Ok(reply) => matches!(reply.status, 502..=504),
            Err(_) => true,
        };
        let mut breaker = node.breaker.lock().expect("breaker lock");
        if node_failed {
            if breaker.failure(Instant::now()) {
                tracing::warn!(node = %node.url, "circuit breaker opened for Elasticsearch node");
            }
        } else {
            if !breaker.is_closed() {
                tracing::info!(node = %node.url, "Elasticsearch node is back; circuit breaker closed");
            }
            breaker.success();
        }
        outcome
    }

    /// Like [`NodePool::send`], but when a node gives no answer (refused, reset, timeout) or a
    /// 502–504, the request goes to the next node, once per configured node. For management calls
    /// (detection, template, retention), which have no retry loop of their own: without this, a
    /// dead first node in `elasticsearch.urls` makes `setup` fail although another node is up.
    /// `_bulk` uses [`NodePool::send`]: its retries with backoff live in [`crate::bulk`].
    pub async fn send_failover(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Bytes>,
        content_type: Option<&'static str>,
        timeout: Option<Duration>,
    ) -> Result<Reply, RequestError> {
        let mut attempts = self.nodes.len();
        loop {
            attempts -= 1;
            let result = self.send(method, path, query, body.clone(), content_type, timeout).await;
            let failed_over = match &result {
                Ok(reply) => matches!(reply.status, 502..=504),
                Err(RequestError::NoNode { .. }) => false,
                Err(_) => true,
            };
            if !failed_over || attempts == 0 {
                return result;
            }
        }
    }

    /// Sends a JSON request (helper for management calls; fails over like [`NodePool::send_failover`]).
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Reply, RequestError> {
        let body = body.map(|b| Bytes::from(serde_json::to_vec(b).expect("JSON value serialises")));
        self.send_failover(method, path, &[], body, Some("application/json"), None).await
    }

    /// Detects Elasticsearch vs OpenSearch with `GET _nodes/_local` (exists in both; `GET /` does not
    /// exist in the integ-test distribution): Elasticsearch 8 answers with `X-elastic-product`.
    pub async fn detect(&self) -> Result<Distribution, DetectError> {
        let reply = self
            .send_failover(Method::Get, "/_nodes/_local", &[("filter_path", "nodes.*.version")], None, None, None)
            .await
            .map_err(DetectError::Request)?;
        if reply.status == 401 || reply.status == 403 {
            return Err(DetectError::Refused(reply.status, error_reason(&reply.body)));
        }
        if reply.status != 200 {
            return Err(DetectError::Status(reply.status, String::from_utf8_lossy(&reply.body).into_owned()));
        }
        let value: serde_json::Value =
            serde_json::from_slice(&reply.body).map_err(|e| DetectError::Status(reply.status, e.to_string()))?;
        let version = value["nodes"]
            .as_object()
            .and_then(|nodes| nodes.values().next())
            .and_then(|node| node["version"].as_str())
            .unwrap_or("unknown")
            .to_owned();
        Ok(if reply.elastic_product { Distribution::Elasticsearch(version) } else { Distribution::OpenSearch(version) })
    }
}

/// Why the distribution could not be detected.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// No response.
    #[error(transparent)]
    Request(RequestError),
    /// Credentials refused (401) or not allowed (403).
    #[error(
        "Elasticsearch refused the credentials (HTTP {0}): {1}; check elasticsearch.auth (username/password or \
         api_key) or the user:password in elasticsearch.urls"
    )]
    Refused(u16, String),
    /// An unexpected response.
    #[error("unexpected response {0}: {1}")]
    Status(u16, String),
}

/// `error.reason` of an Elasticsearch error body, or the start of the body.
fn error_reason(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["reason"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(300).collect())
}

fn classify_error(node: &str, error: &elasticsearch::Error) -> RequestError {
    if error.is_timeout() {
        RequestError::Timeout { node: node.to_owned() }
    } else {
        // The source chain says "connection refused" and such; it never contains credentials
        // (they were moved out of the URL).
        let mut message = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(s) = source {
            // Some errors repeat their source in their own message: say each part once.
            let text = s.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = s.source();
        }
        RequestError::Transport { node: node.to_owned(), message }
    }
}

fn credentials(config: &ElasticsearchConfig) -> Option<Credentials> {
    let auth = &config.auth;
    if !auth.api_key.is_empty() {
        Some(Credentials::EncodedApiKey(auth.api_key.expose().to_owned()))
    } else if !auth.username.is_empty() {
        Some(Credentials::Basic(auth.username.clone(), auth.password.expose().to_owned()))
    } else {
        None
    }
}

/// A URL for messages: credentials removed.
pub fn redact(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) => {
            if !u.username().is_empty() || u.password().is_some() {
                let _ = u.set_username("");
                let _ = u.set_password(None);
            }
            u.to_string()
        }
        Err(_) => "<invalid url>".into(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig {
            failure_threshold: 2,
            min_open: Duration::from_secs(1),
            max_open: Duration::from_secs(4),
        })
    }

    #[test]
    fn breaker_opens_after_threshold_and_probes_with_backoff() {
        let mut b = breaker();
        let t0 = Instant::now();
        assert_eq!(b.allow(t0), Allow::Yes);
        assert!(!b.failure(t0));
        assert_eq!(b.allow(t0), Allow::Yes, "one failure is below the threshold");
        assert!(b.failure(t0));
        assert_eq!(b.allow(t0), Allow::No(t0 + Duration::from_secs(1)));
        // Probe due: exactly one request goes through.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.allow(t1), Allow::Probe);
        assert!(matches!(b.allow(t1), Allow::No(_)));
        // The probe fails: open twice as long.
        b.failure(t1);
        assert_eq!(b.allow(t1 + Duration::from_millis(1500)), Allow::No(t1 + Duration::from_secs(2)));
        let t2 = t1 + Duration::from_secs(2);
        assert_eq!(b.allow(t2), Allow::Probe);
        b.failure(t2);
        let t3 = t2 + Duration::from_secs(4);
        assert_eq!(b.allow(t3), Allow::Probe);
        b.failure(t3);
        assert_eq!(b.allow(t3 + Duration::from_secs(3)), Allow::No(t3 + Duration::from_secs(4)), "capped at max_open");
        // A successful probe closes it and resets the backoff.
        b.allow(t3 + Duration::from_secs(4));
        b.success();
        assert!(b.is_closed());
        assert_eq!(b.allow(t3), Allow::Yes);
        b.failure(t3);
        b.failure(t3);
        assert_eq!(b.allow(t3), Allow::No(t3 + Duration::from_secs(1)));
    }

    #[test]
    fn success_resets_the_failure_count() {
        let mut b = breaker();
        let t = Instant::now();
        b.failure(t);
        b.success();
        assert!(!b.failure(t), "failures must be consecutive");
    }

    #[tokio::test]
    async fn round_robin_skips_nodes_with_open_breakers() {
        let config = ElasticsearchConfig {
            urls: vec!["http://127.0.0.1:1".into(), "http://user:secret@127.0.0.1:2".into()],
            ..ElasticsearchConfig::default()
        };
        let pool = NodePool::new(&config).unwrap();
        assert_eq!(pool.urls(), vec!["http://127.0.0.1:1", "http://127.0.0.1:2"], "credentials never shown");
        let picks: Vec<usize> = (0..4).map(|_| pool.pick().unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 0, 1]);
        let now = Instant::now();
        for _ in 0..3 {
            pool.nodes[0].breaker.lock().unwrap().failure(now);
        }
        let picks: Vec<usize> = (0..4).map(|_| pool.pick().unwrap()).collect();
        assert_eq!(picks, vec![1, 1, 1, 1]);
        for _ in 0..3 {
            pool.nodes[1].breaker.lock().unwrap().failure(now);
        }
        assert!(matches!(pool.pick(), Err(RequestError::NoNode { .. })));
    }

    /// A port of 127.0.0.1 that refuses connections for as long as the socket lives: bound (so no
    /// one else can take it) but not listening. (Ports like 7 or 9 may be open on some machines.)
    fn closed_port() -> (tokio::net::TcpSocket, u16) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = socket.local_addr().unwrap().port();
        (socket, port)
    }

    #[tokio::test]
    async fn connection_refused_is_a_transport_error_and_counts_against_the_node() {
        let (_held, port) = closed_port();
        let url = format!("http://127.0.0.1:{port}");
        let config = ElasticsearchConfig {
            urls: vec![url.as_str().into()],
            breaker: BreakerConfig { failure_threshold: 1, ..BreakerConfig::default() },
            ..ElasticsearchConfig::default()
        };
        let pool = NodePool::new(&config).unwrap();
        let err = pool.send(Method::Get, "/_cluster/health", &[], None, None, None).await.unwrap_err();
        assert!(matches!(err, RequestError::Transport { .. }), "{err:?}");
        assert_eq!(pool.node_states(), vec![(url.clone(), false)]);
        assert!(matches!(pool.send(Method::Get, "/", &[], None, None, None).await, Err(RequestError::NoNode { .. })));
    }

    #[tokio::test]
    async fn management_requests_fail_over_to_the_next_node() {
        let ((_a, first), (_b, second)) = (closed_port(), closed_port());
        let second_url = format!("http://127.0.0.1:{second}");
        let config = ElasticsearchConfig {
            urls: vec![format!("http://127.0.0.1:{first}").as_str().into(), second_url.as_str().into()],
            ..ElasticsearchConfig::default()
        };
        let pool = NodePool::new(&config).unwrap();
        let err = pool.send_failover(Method::Get, "/_cluster/health", &[], None, None, None).await.unwrap_err();
        assert!(matches!(err, RequestError::Transport { ref node, .. } if *node == second_url), "{err:?}");
        // Both nodes were tried once: each breaker counted one failure.
        for node in &pool.nodes {
            assert_eq!(node.breaker.lock().unwrap().failures, 1);
        }
    }

    /// A one-address HTTP server answering every request with `reply` (a whole HTTP response, as
    /// recorded from Elasticsearch); returns its URL and the request heads it saw (lower case).
    async fn recorded((head, body): (&'static str, &'static str)) -> (String, Arc<Mutex<Vec<String>>>) {
        let reply = format!(
            "{}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            head.replace('\n', "\r\n"),
            body.len()
        );
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let heads: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = heads.clone();
        tokio::spawn(async move {
            let reply = reply;
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                seen.lock().unwrap().push(String::from_utf8_lossy(&buf).to_ascii_lowercase());
                let _ = stream.write_all(reply.as_bytes()).await;
            }
        });
        (url, heads)
    }

    /// What Elasticsearch 8 answers `GET /_nodes/_local?filter_path=nodes.*.version` with.
    const NODES_OK: (&str, &str) = (
        "HTTP/1.1 200 OK\nX-elastic-product: Elasticsearch\ncontent-type: application/json",
        r#"{"nodes":{"q1UgXc7ZQ":{"version":"8.19.21"}}}"#,
    );

    /// What Elasticsearch 8 answers a request with an API key it does not know (its shape: a
    /// `security_exception` with `WWW-Authenticate: ApiKey`).
    const API_KEY_REFUSED: (&str, &str) = (
        "HTTP/1.1 401 Unauthorized\nWWW-Authenticate: ApiKey\nX-elastic-product: Elasticsearch\ncontent-type: application/json",
        r#"{"error":{"root_cause":[{"type":"security_exception","reason":"unable to authenticate with provided credentials and anonymous access is not allowed for this request","additional_unsuccessful_credentials":"API key: api key [k1] does not exist"}],"type":"security_exception","reason":"unable to authenticate with provided credentials and anonymous access is not allowed for this request","additional_unsuccessful_credentials":"API key: api key [k1] does not exist"},"status":401}"#,
    );

    #[tokio::test]
    async fn an_api_key_is_sent_as_the_apikey_authorization_header_and_its_refusal_is_reported() {
        let (url, heads) = recorded(NODES_OK).await;
        // Credentials in the URL give way to the API key and are never sent.
        let with_user = url.replacen("http://", "http://user:url-secret@", 1);
        let mut config =
            ElasticsearchConfig { urls: vec![with_user.as_str().into()], ..ElasticsearchConfig::default() };
        config.auth.api_key =
            crate::config::Secret::new("VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw==");
        let pool = NodePool::new(&config).unwrap();
        assert_eq!(pool.detect().await.unwrap(), Distribution::Elasticsearch("8.19.21".into()));
        let head = heads.lock().unwrap()[0].clone();
        assert!(head.starts_with("get /_nodes/_local?filter_path=nodes.*.version "), "{head}");
        let auth: Vec<&str> = head.lines().filter(|l| l.starts_with("authorization:")).collect();
        assert_eq!(
            auth,
            vec![format!("authorization: apikey {}", config.auth.api_key.expose().to_ascii_lowercase())],
            "exactly one ApiKey header (the request is lower-cased here)"
        );
        assert!(!head.contains("url-secret") && !head.contains("basic"), "{head}");

        let (url, heads) = recorded(API_KEY_REFUSED).await;
        let mut config = ElasticsearchConfig { urls: vec![url.as_str().into()], ..ElasticsearchConfig::default() };
        config.auth.api_key = crate::config::Secret::new("a2V5Ondyb25n");
        let pool = NodePool::new(&config).unwrap();
        let err = pool.detect().await.unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, DetectError::Refused(401, _)), "{err:?}");
        assert!(text.contains("refused the credentials (HTTP 401): unable to authenticate with provided credentials"));
        assert!(text.contains("api_key"), "points at the setting: {text}");
        assert!(!text.contains("a2V5Ondyb25n"), "the key is not in the error: {text}");
        assert!(heads.lock().unwrap()[0].contains("authorization: apikey a2v5ondyb25n"));
        // A refusal is not a node failure: the breaker stays closed.
        assert_eq!(pool.node_states(), vec![(url, true)]);
    }

    #[test]
    fn redacts_credentials() {
        assert_eq!(redact("https://u:p@es:9200/"), "https://es:9200/");
        assert_eq!(redact("::"), "<invalid url>");
    }
}

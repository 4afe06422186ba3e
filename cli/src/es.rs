//! A small Elasticsearch/OpenSearch client for `verify`, `logs` and `top`: refresh, count, full
//! scans and sorted pages with a point in time and `search_after` (consistent over many pages, no
//! scroll contexts), `_mget`, `_msearch`; TLS, basic auth and API keys like the indexer.

use std::time::Duration;

use reqwest::{Client, Method, StatusCode, Url};
use serde_json::{Value, json};
use sluice_common::secret::Secret;

/// Errors talking to Elasticsearch.
#[derive(Debug, thiserror::Error)]
pub enum EsError {
    /// The URL is not usable.
    #[error("invalid Elasticsearch URL {url}: {reason}")]
    Url {
        /// The URL (without credentials).
        url: String,
        /// Why.
        reason: String,
    },
    /// The request did not get a response.
    #[error("{method} {url}")]
    Http {
        /// HTTP method.
        method: Method,
        /// The URL.
        url: String,
        /// The cause.
        source: reqwest::Error,
    },
    /// An error status.
    #[error("{method} {url}: HTTP {status}: {body}")]
    Status {
        /// HTTP method.
        method: Method,
        /// The URL.
        url: String,
        /// The status.
        status: StatusCode,
        /// The response body (shortened).
        body: String,
    },
    /// A response without the expected fields.
    #[error("{url}: unexpected response: {detail}")]
    Response {
        /// The URL.
        url: String,
        /// What was missing.
        detail: String,
    },
}

/// One search hit.
#[derive(Debug, Clone)]
pub struct Hit {
    /// `_index`.
    pub index: String,
    /// `_id`.
    pub id: String,
    /// `_source` (the requested fields).
    pub source: Value,
}

/// A client for one Elasticsearch (or OpenSearch-compatible) endpoint.
#[derive(Debug, Clone)]
pub struct Es {
    http: Client,
    base: Url,
    auth: Option<(String, Secret)>,
    api_key: Option<Secret>,
}

impl Es {
    /// A client for `url` (`http[s]://[user:password@]host:port`).
    pub fn new(url: &str) -> Result<Es, EsError> {
        let bad = |reason: String| EsError::Url { url: url.to_owned(), reason };
        let mut base = Url::parse(url).map_err(|e| bad(e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(bad("the scheme must be http or https".into()));
        }
        let auth = (!base.username().is_empty())
            .then(|| (base.username().to_owned(), Secret::new(base.password().unwrap_or_default())));
        let _ = base.set_username("");
        let _ = base.set_password(None);
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        let http = Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| bad(e.to_string()))?;
        Ok(Es { http, base, auth, api_key: None })
    }

    /// The base URL without credentials.
    pub fn url(&self) -> &str {
        self.base.as_str()
    }

    async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<(StatusCode, Value), EsError> {
        let url = self.base.join(path).map_err(|e| EsError::Url { url: path.to_owned(), reason: e.to_string() })?;
        let mut req = self.authorize(self.http.request(method.clone(), url.clone()));
        if let Some(b) = body {
            req = req.json(b);
        }
        let http = |source| EsError::Http { method: method.clone(), url: url.to_string(), source };
        let resp = req.send().await.map_err(http)?;
        let status = resp.status();
        let text = resp.text().await.map_err(http)?;
        if !status.is_success() {
            let mut body = text;
            body.truncate(600);
            return Err(EsError::Status { method, url: url.to_string(), status, body });
        }
        let v = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok((status, v))
    }

    /// Makes everything indexed so far searchable (`POST <index>/_refresh`).
    pub async fn refresh(&self, index: &str) -> Result<(), EsError> {
        match self
            .call(Method::POST, &format!("{index}/_refresh?allow_no_indices=true&ignore_unavailable=true"), None)
            .await
        {
            Err(EsError::Status { status: StatusCode::NOT_FOUND, .. }) => Ok(()),
            r => r.map(|_| ()),
        }
    }

    /// Documents matching `query`.
    pub async fn count(&self, index: &str, query: &Value) -> Result<u64, EsError> {
        let path = format!("{index}/_count?allow_no_indices=true&ignore_unavailable=true");
        let (_, v) = self.call(Method::POST, &path, Some(&json!({ "query": query }))).await?;
        v["count"].as_u64().ok_or_else(|| EsError::Response { url: path, detail: format!("no count in {v}") })
    }

    /// Every document matching `query`, `page` at a time, through a point in time sorted by
    /// `_shard_doc` with `search_after`; `fields` limits `_source`. Returns the number of hits.
    pub async fn scan(
        &self,
        index: &str,
        query: &Value,
        fields: &[&str],
        page: usize,
        mut each: impl FnMut(Hit),
    ) -> Result<u64, EsError> {
        let (_, v) =
            self.call(Method::POST, &format!("{index}/_pit?keep_alive=2m&allow_no_indices=true"), None).await?;
        let mut pit = v["id"]
            .as_str()
            .ok_or_else(|| EsError::Response { url: format!("{index}/_pit"), detail: format!("no id in {v}") })?
            .to_owned();
        let mut after: Option<Value> = None;
        let mut total = 0u64;
        let result = loop {
            let mut body = json!({
                "size": page,
                "query": query,
                "_source": fields,
                "pit": {"id": pit, "keep_alive": "2m"},
                "sort": [{"_shard_doc": "asc"}],
                "track_total_hits": false,
            });
            if let Some(a) = &after {
                body["search_after"] = a.clone();
            }
            let v = match self.call(Method::POST, "_search", Some(&body)).await {
                Ok((_, v)) => v,
                Err(e) => break Err(e),
            };
            if let Some(id) = v["pit_id"].as_str() {
                pit = id.to_owned();
            }
            let Some(hits) = v["hits"]["hits"].as_array() else {
                break Err(EsError::Response { url: "_search".into(), detail: "no hits.hits".into() });
            };
            if hits.is_empty() {
                break Ok(total);
            }
            for h in hits {
                total += 1;
                each(Hit {
                    index: h["_index"].as_str().unwrap_or_default().to_owned(),
                    id: h["_id"].as_str().unwrap_or_default().to_owned(),
                    source: h["_source"].clone(),
                });
            }
            after = hits.last().map(|h| h["sort"].clone());
            if hits.len() < page {
                break Ok(total);
            }
        };
        // Best effort: the point in time expires anyway.
        let _ = self.call(Method::DELETE, "_pit", Some(&json!({ "id": pit }))).await;
        result
    }

    /// Sends a raw request (tests and setup helpers).
    pub async fn request(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value, EsError> {
        self.call(method, path, body).await.map(|(_, v)| v)
    }

    /// Sends NDJSON to `_bulk` (tests).
    pub async fn bulk(&self, ndjson: String) -> Result<Value, EsError> {
        let url = self
            .base
            .join("_bulk?refresh=true")
            .map_err(|e| EsError::Url { url: "_bulk".into(), reason: e.to_string() })?;
        let req =
            self.authorize(self.http.post(url.clone()).header("content-type", "application/x-ndjson").body(ndjson));
        let http = |source| EsError::Http { method: Method::POST, url: url.to_string(), source };
        let resp = req.send().await.map_err(http)?;
        let status = resp.status();
        let text = resp.text().await.map_err(http)?;
        if !status.is_success() {
            return Err(EsError::Status { method: Method::POST, url: url.to_string(), status, body: text });
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

/// Which search engine answers (point-in-time APIs differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Elasticsearch (answers with `X-elastic-product: Elasticsearch`).
    Elasticsearch,
    /// OpenSearch (or anything else speaking the same search API).
    OpenSearch,
}

/// Credentials for Elasticsearch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Auth {
    /// No credentials.
    #[default]
    None,
    /// HTTP basic auth: user and password (`Debug` prints `***` for the password).
    Basic(String, Secret),
    /// An API key, base64 of `id:key` (the `encoded` value Elasticsearch returns; `Debug` prints `***`).
    ApiKey(Secret),
}

/// How to reach Elasticsearch, the same settings as the indexer's `elasticsearch.*` keys. `Debug`
/// shows no secret (a password in the URL prints `***`).
#[derive(Clone, Default)]
pub struct EsSettings {
    /// `http[s]://[user:password@]host:port`.
    pub url: String,
    /// Credentials (a `user:password@` in the URL is used when this is [`Auth::None`]).
    pub auth: Auth,
    /// PEM file with CA certificates to trust in addition to the system roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// Accept any server certificate (testing only).
    pub insecure_skip_verify: bool,
    /// Timeout of one request.
    pub timeout: Duration,
}

impl std::fmt::Debug for EsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let EsSettings { url, auth, ca_file, insecure_skip_verify, timeout } = self;
        f.debug_struct("EsSettings")
            .field("url", &redact(url))
            .field("auth", auth)
            .field("ca_file", ca_file)
            .field("insecure_skip_verify", insecure_skip_verify)
            .field("timeout", timeout)
            .finish()
    }
}

/// An open point in time (Elasticsearch `_pit`, OpenSearch `_search/point_in_time`).
#[derive(Debug, Clone)]
pub struct Pit {
    /// The current id (a search may return a new one).
    pub id: String,
    flavor: Flavor,
}

/// One hit of a sorted search.
#[derive(Debug, Clone)]
pub struct SortedHit {
    /// `_index`.
    pub index: String,
    /// `_id`.
    pub id: String,
    /// `_source`, or `Null` when not requested.
    pub source: Value,
    /// The sort values, for `search_after`.
    pub sort: Value,
}

impl Es {
    /// A client from full connection settings (TLS, basic auth or API key).
    pub fn with_settings(settings: &EsSettings) -> Result<Es, EsError> {
        let bad = |reason: String| EsError::Url { url: redact(&settings.url), reason };
        let mut es = Es::new(&settings.url).map_err(|e| match e {
            EsError::Url { reason, .. } => bad(reason),
            other => other,
        })?;
        match &settings.auth {
            Auth::None => {}
            Auth::Basic(u, p) => es.auth = Some((u.clone(), p.clone())),
            Auth::ApiKey(k) => {
                es.auth = None;
                es.api_key = Some(k.clone());
            }
        }
        let mut builder = Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(if settings.timeout.is_zero() { Duration::from_secs(60) } else { settings.timeout });
        if let Some(path) = &settings.ca_file {
            let pem = std::fs::read(path).map_err(|e| bad(format!("reading the CA file {}: {e}", path.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| bad(format!("the CA file {} is not PEM: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(bad(format!("the CA file {} holds no certificate", path.display())));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if settings.insecure_skip_verify {
            builder = builder.danger_accept_invalid_certs(true);
        }
        es.http = builder.build().map_err(|e| bad(e.to_string()))?;
        Ok(es)
    }

    /// Elasticsearch or OpenSearch, from `GET _nodes/_local` (`GET /` is missing in the
    /// integration-test distributions): Elasticsearch 8 answers with `X-elastic-product`.
    pub async fn flavor(&self) -> Result<Flavor, EsError> {
        let url = self
            .base
            .join("_nodes/_local?filter_path=nodes.*.version")
            .map_err(|e| EsError::Url { url: "_nodes/_local".into(), reason: e.to_string() })?;
        let req = self.authorize(self.http.get(url.clone()));
        let http = |source| EsError::Http { method: Method::GET, url: url.to_string(), source };
        let resp = req.send().await.map_err(http)?;
        let status = resp.status();
        let elastic = resp.headers().contains_key("x-elastic-product");
        // A user allowed to read logs but not to monitor nodes: Elasticsearch still names itself.
        if status == StatusCode::FORBIDDEN {
            return Ok(if elastic { Flavor::Elasticsearch } else { Flavor::OpenSearch });
        }
        if !status.is_success() {
            let mut body = resp.text().await.unwrap_or_default();
            body.truncate(600);
            return Err(EsError::Status { method: Method::GET, url: url.to_string(), status, body });
        }
        Ok(if elastic { Flavor::Elasticsearch } else { Flavor::OpenSearch })
    }

    /// Opens a point in time over `index` (`keep_alive` like `1m`).
    pub async fn open_pit(&self, flavor: Flavor, index: &str, keep_alive: &str) -> Result<Pit, EsError> {
        let (path, field) = match flavor {
            Flavor::Elasticsearch => (format!("{index}/_pit?keep_alive={keep_alive}"), "id"),
            Flavor::OpenSearch => (format!("{index}/_search/point_in_time?keep_alive={keep_alive}"), "pit_id"),
        };
        let (_, v) = self.call(Method::POST, &path, None).await?;
        let id = v[field]
            .as_str()
            .ok_or_else(|| EsError::Response { url: path.clone(), detail: format!("no {field} in {v}") })?;
        Ok(Pit { id: id.to_owned(), flavor })
    }

    /// Closes a point in time (best effort: it expires anyway).
    pub async fn close_pit(&self, pit: &Pit) {
        let _ = match pit.flavor {
            Flavor::Elasticsearch => self.call(Method::DELETE, "_pit", Some(&json!({ "id": pit.id }))).await,
            Flavor::OpenSearch => {
                self.call(Method::DELETE, "_search/point_in_time", Some(&json!({ "pit_id": [pit.id] }))).await
            }
        };
    }

    /// One page of a sorted search inside `pit` (`body` holds query, sort, size, `_source`);
    /// `after` is the previous page's last sort values. Updates the pit id when it changes.
    pub async fn pit_page(
        &self,
        pit: &mut Pit,
        keep_alive: &str,
        body: &Value,
        after: Option<&Value>,
    ) -> Result<Vec<SortedHit>, EsError> {
        let mut body = body.clone();
        body["pit"] = json!({"id": pit.id, "keep_alive": keep_alive});
        if let Some(a) = after {
            body["search_after"] = a.clone();
        }
        let (_, v) = self.call(Method::POST, "_search", Some(&body)).await?;
        if let Some(id) = v["pit_id"].as_str() {
            pit.id = id.to_owned();
        }
        hits_of(&v, "_search")
    }

    /// A sorted search without a point in time (`GET <index>/_search`); a missing index is an error.
    pub async fn search(&self, index: &str, body: &Value) -> Result<Value, EsError> {
        self.call(Method::POST, &format!("{index}/_search?allow_no_indices=false"), Some(body)).await.map(|(_, v)| v)
    }

    /// The hits of a search response.
    pub fn hits(v: &Value) -> Result<Vec<SortedHit>, EsError> {
        hits_of(v, "_search")
    }

    /// `_source` of documents by index and id (`_mget`), in request order; `Null` for missing ones.
    pub async fn mget(&self, docs: &[(&str, &str)], source: &Value) -> Result<Vec<Value>, EsError> {
        let body = json!({
            "docs": docs.iter().map(|(index, id)| json!({"_index": index, "_id": id, "_source": source})).collect::<Vec<_>>()
        });
        let (_, v) = self.call(Method::POST, "_mget", Some(&body)).await?;
        let list = v["docs"]
            .as_array()
            .ok_or_else(|| EsError::Response { url: "_mget".into(), detail: format!("no docs in {v}") })?;
        Ok(list.iter().map(|d| d["_source"].clone()).collect())
    }

    /// Several searches in one request (`_msearch`): `(index, body)` pairs; the answers in order.
    pub async fn msearch(&self, searches: &[(String, Value)]) -> Result<Vec<Value>, EsError> {
        let mut nd = String::new();
        for (index, body) in searches {
            nd.push_str(&json!({"index": index, "allow_no_indices": true, "ignore_unavailable": true}).to_string());
            nd.push('\n');
            nd.push_str(&body.to_string());
            nd.push('\n');
        }
        let v = self.ndjson("_msearch", nd).await?;
        let responses = v["responses"]
            .as_array()
            .ok_or_else(|| EsError::Response { url: "_msearch".into(), detail: "no responses".into() })?;
        Ok(responses.clone())
    }

    fn authorize(&self, mut req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if let Some((u, p)) = &self.auth {
            req = req.basic_auth(u, Some(p.expose()));
        }
        if let Some(k) = &self.api_key {
            req = req.header("authorization", format!("ApiKey {}", k.expose()));
        }
        req
    }

    async fn ndjson(&self, path: &str, ndjson: String) -> Result<Value, EsError> {
        let url = self.base.join(path).map_err(|e| EsError::Url { url: path.into(), reason: e.to_string() })?;
        let req =
            self.authorize(self.http.post(url.clone()).header("content-type", "application/x-ndjson").body(ndjson));
        let http = |source| EsError::Http { method: Method::POST, url: url.to_string(), source };
        let resp = req.send().await.map_err(http)?;
        let status = resp.status();
        let text = resp.text().await.map_err(http)?;
        if !status.is_success() {
            let mut body = text;
            body.truncate(600);
            return Err(EsError::Status { method: Method::POST, url: url.to_string(), status, body });
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

fn hits_of(v: &Value, url: &str) -> Result<Vec<SortedHit>, EsError> {
    let hits = v["hits"]["hits"]
        .as_array()
        .ok_or_else(|| EsError::Response { url: url.into(), detail: "no hits.hits".into() })?;
    Ok(hits
        .iter()
        .map(|h| SortedHit {
            index: h["_index"].as_str().unwrap_or_default().to_owned(),
            id: h["_id"].as_str().unwrap_or_default().to_owned(),
            source: h.get("_source").cloned().unwrap_or(Value::Null),
            sort: h["sort"].clone(),
        })
        .collect())
}

/// `url` without its password, for messages.
pub fn redact(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

//! A small Elasticsearch client for `verify`: refresh, count, and a full scan with a point in time
//! and `search_after` (consistent over many pages, no scroll contexts).

use std::time::Duration;

use reqwest::{Client, Method, StatusCode, Url};
use serde_json::{Value, json};

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
    auth: Option<(String, String)>,
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
            .then(|| (base.username().to_owned(), base.password().unwrap_or_default().to_owned()));
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
        Ok(Es { http, base, auth })
    }

    /// The base URL without credentials.
    pub fn url(&self) -> &str {
        self.base.as_str()
    }

    async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<(StatusCode, Value), EsError> {
        let url = self.base.join(path).map_err(|e| EsError::Url { url: path.to_owned(), reason: e.to_string() })?;
        let mut req = self.http.request(method.clone(), url.clone());
        if let Some((u, p)) = &self.auth {
            req = req.basic_auth(u, Some(p));
        }
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
        let mut req = self.http.post(url.clone()).header("content-type", "application/x-ndjson").body(ndjson);
        if let Some((u, p)) = &self.auth {
            req = req.basic_auth(u, Some(p));
        }
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

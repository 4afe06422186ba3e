//! Least privilege in Elasticsearch: at start of `run` the indexer asks
//! `_security/user/_has_privileges` whether its user holds every right it will need, and refuses to
//! run, naming each missing one, instead of failing record by record later. The roles are
//! documented in `docs/security.md`.
//!
//! What `run` needs, and why:
//! - cluster `monitor`: `GET _nodes/_local` (detection) and the node metrics;
//! - cluster `manage_index_templates`: only with `elasticsearch.template.install: true` (the
//!   least-privilege setup leaves templates to `setup` and sets it to `false`);
//! - on the indices of `elasticsearch.index` (as a wildcard): `create_doc` (`_bulk` with `create`)
//!   and `create_index` (a new day's index is created by its first document);
//! - with `retention.days > 0`: `monitor` (`_cat/indices`) and `delete_index` on them too.

use elasticsearch::http::Method;
use serde_json::json;

use crate::config::IndexerConfig;
use crate::es::{NodePool, RequestError};
use crate::index::IndexPattern;

/// The privileges `run` needs with this configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Required {
    /// Cluster privileges.
    pub cluster: Vec<&'static str>,
    /// Index privileges, on [`Required::indices`].
    pub index: Vec<&'static str>,
    /// Index names (wildcards) the index privileges must cover.
    pub indices: String,
}

/// What the check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The user holds every required privilege.
    Held,
    /// Not checked: security is off, or the engine has no such API (OpenSearch); the reason.
    NotChecked(String),
}

/// Why the indexer must not run.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// The user lacks privileges.
    #[error(
        "the Elasticsearch user `{user}` lacks privileges the indexer needs: {}; grant them (docs/security.md, role \
         `sluice_indexer`) or change the configuration that needs them",
        .missing.join(", ")
    )]
    Missing {
        /// The user name Elasticsearch reported.
        user: String,
        /// Each missing privilege, e.g. `index privilege create_doc on sluice-logs-*`.
        missing: Vec<String>,
    },
    /// The check could not be made (no response, credentials refused).
    #[error("cannot check the Elasticsearch privileges: {0}")]
    Request(String),
}

impl From<RequestError> for PrivilegeError {
    fn from(err: RequestError) -> Self {
        PrivilegeError::Request(err.to_string())
    }
}

/// The privileges `run` needs with `config`.
pub fn required(config: &IndexerConfig, pattern: &IndexPattern) -> Required {
    let mut cluster = vec!["monitor"];
    if config.elasticsearch.template.install {
        cluster.push("manage_index_templates");
    }
    let mut index = vec!["create_doc", "create_index"];
    if config.retention.days > 0 {
        index.extend(["monitor", "delete_index"]);
    }
    Required { cluster, index, indices: pattern.wildcard() }
}

/// Asks Elasticsearch whether the configured user holds `required`.
pub async fn check(pool: &NodePool, required: &Required) -> Result<Outcome, PrivilegeError> {
    let body = json!({
        "cluster": required.cluster,
        "index": [{"names": [required.indices], "privileges": required.index}],
    });
    let reply = pool.json(Method::Post, "/_security/user/_has_privileges", Some(&body)).await?;
    let text = String::from_utf8_lossy(&reply.body);
    match reply.status {
        200 => {}
        401 | 403 => {
            return Err(PrivilegeError::Request(format!(
                "HTTP {}: {}",
                reply.status,
                text.chars().take(300).collect::<String>()
            )));
        }
        // Security disabled (Elasticsearch answers 500 "Security must be explicitly enabled"),
        // or no such endpoint (OpenSearch: 400/404/405).
        status => {
            return Ok(Outcome::NotChecked(format!("HTTP {status}: {}", text.chars().take(200).collect::<String>())));
        }
    }
    let value: serde_json::Value =
        serde_json::from_slice(&reply.body).map_err(|e| PrivilegeError::Request(format!("unexpected answer: {e}")))?;
    let missing = missing(&value, required);
    if missing.is_empty() {
        Ok(Outcome::Held)
    } else {
        let user = value["username"].as_str().unwrap_or("?").to_owned();
        Err(PrivilegeError::Missing { user, missing })
    }
}

/// The privileges an `_has_privileges` answer reports as not held (anything not reported as
/// `true` counts as missing).
fn missing(answer: &serde_json::Value, required: &Required) -> Vec<String> {
    let mut out = Vec::new();
    for privilege in &required.cluster {
        if answer["cluster"][privilege].as_bool() != Some(true) {
            out.push(format!("cluster privilege {privilege}"));
        }
    }
    for privilege in &required.index {
        if answer["index"][&required.indices][privilege].as_bool() != Some(true) {
            out.push(format!("index privilege {privilege} on {}", required.indices));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_follows_the_configuration() {
        let mut config = IndexerConfig::default();
        let pattern = IndexPattern::parse(&config.elasticsearch.index).unwrap();
        let r = required(&config, &pattern);
        assert_eq!(r.cluster, ["monitor", "manage_index_templates"]);
        assert_eq!(r.index, ["create_doc", "create_index"]);
        assert_eq!(r.indices, "sluice-logs-*.*.*");
        config.elasticsearch.template.install = false;
        config.retention.days = 7;
        let r = required(&config, &pattern);
        assert_eq!(r.cluster, ["monitor"]);
        assert_eq!(r.index, ["create_doc", "create_index", "monitor", "delete_index"]);
    }

    // The shape of Elasticsearch 8.19's answer.
    #[test]
    fn missing_privileges_are_named() {
        let r = Required { cluster: vec!["monitor"], index: vec!["create_doc", "create_index"], indices: "l-*".into() };
        let answer = json!({
            "username": "indexer", "has_all_requested": false,
            "cluster": {"monitor": true},
            "index": {"l-*": {"create_doc": true, "create_index": false}},
            "application": {}
        });
        assert_eq!(missing(&answer, &r), ["index privilege create_index on l-*"]);
        let all = json!({"cluster": {"monitor": true}, "index": {"l-*": {"create_doc": true, "create_index": true}}});
        assert!(missing(&all, &r).is_empty());
        assert_eq!(missing(&json!({}), &r).len(), 3);
    }
}

//! The composable index template for schema v1, installed idempotently (`PUT _index_template`).
//!
//! `keyword` for `kubernetes.*` and other identifiers, `text` for `message`, `date_nanos` for
//! `@timestamp`, `integer` for `kubernetes.container.restart_count`. Labels, annotations and
//! namespace labels are one `flattened` field each (`flat_object` on
//! OpenSearch), so any number of label keys never grows the mapping; other unknown string fields
//! become `keyword`, bounded by `index.mapping.total_fields.limit`.

use elasticsearch::http::Method;
use serde_json::{Value, json};

use crate::config::ElasticsearchConfig;
use crate::es::{Distribution, NodePool, RequestError};
use crate::index::IndexPattern;

/// Why the template could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// No response.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// Refused.
    #[error("PUT _index_template/{name} answered {status}: {body}")]
    Refused {
        /// Template name.
        name: String,
        /// HTTP status.
        status: u16,
        /// Response body.
        body: String,
    },
}

/// The template body for `config` on `distribution`.
pub fn body(config: &ElasticsearchConfig, distribution: &Distribution) -> Value {
    let pattern = IndexPattern::parse(&config.index).expect("validated pattern");
    let t = &config.template;
    let kw = json!({"type": "keyword", "ignore_above": 1024});
    let flat = match distribution {
        Distribution::Elasticsearch(_) => json!({"type": "flattened"}),
        Distribution::OpenSearch(_) => json!({"type": "flat_object"}),
    };
    let name = json!({"properties": {"name": kw}});
    json!({
        "index_patterns": [pattern.wildcard()],
        "priority": t.priority,
        "_meta": {"managed_by": "sluice-indexer", "schema_version": sluice_common::schema::SCHEMA_VERSION},
        "template": {
            "settings": {
                "index": {
                    "number_of_shards": t.shards,
                    "number_of_replicas": t.replicas,
                    "refresh_interval": t.refresh_interval,
                    "mapping": {"total_fields": {"limit": t.total_fields_limit}},
                }
            },
            "mappings": {
                "dynamic": true,
                "date_detection": false,
                "dynamic_templates": [
                    {"strings_as_keyword": {"match_mapping_type": "string", "mapping": kw}}
                ],
                "properties": {
                    "@timestamp": {"type": "date_nanos"},
                    "message": {"type": "text"},
                    "stream": {"type": "keyword"},
                    "log": {"properties": {
                        "file": {"properties": {"path": kw}},
                        "offset": {"type": "long"},
                    }},
                    "kubernetes": {"properties": {
                        "namespace": kw,
                        "pod": {"properties": {"name": kw, "uid": kw}},
                        "container": {"properties": {"name": kw, "restart_count": {"type": "integer"}}},
                        "node": name,
                        "owner": {"properties": {"kind": kw, "name": kw}},
                        "labels": flat,
                        "annotations": flat,
                        "namespace_labels": flat,
                    }},
                    "container": {"properties": {
                        "id": kw,
                        "image": {"properties": {"name": kw, "id": kw}},
                        "runtime": kw,
                    }},
                    "host": name,
                    "agent": {"properties": {"type": kw, "version": kw}},
                    "tags": kw,
                }
            }
        }
    })
}

/// Installs (or replaces with identical content) the template.
pub async fn install(
    pool: &NodePool,
    config: &ElasticsearchConfig,
    distribution: &Distribution,
) -> Result<(), TemplateError> {
    let name = &config.template.name;
    let body = body(config, distribution);
    let reply = pool.json(Method::Put, &format!("/_index_template/{name}"), Some(&body)).await?;
    if reply.status != 200 {
        return Err(TemplateError::Refused {
            name: name.clone(),
            status: reply.status,
            body: String::from_utf8_lossy(&reply.body).chars().take(1000).collect(),
        });
    }
    tracing::info!(template = %name, patterns = %body["index_patterns"], distribution = distribution.name(), "index template installed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_follows_schema_v1_and_config() {
        let mut config = ElasticsearchConfig::default();
        config.template.shards = 3;
        config.template.replicas = 2;
        let es = body(&config, &Distribution::Elasticsearch("8.19.21".into()));
        assert_eq!(es["index_patterns"], json!(["sluice-logs-*.*.*"]));
        let settings = &es["template"]["settings"]["index"];
        assert_eq!(settings["number_of_shards"], 3);
        assert_eq!(settings["number_of_replicas"], 2);
        let props = &es["template"]["mappings"]["properties"];
        assert_eq!(props["@timestamp"]["type"], "date_nanos");
        assert_eq!(props["message"]["type"], "text");
        assert_eq!(props["kubernetes"]["properties"]["namespace"]["type"], "keyword");
        assert_eq!(props["kubernetes"]["properties"]["pod"]["properties"]["uid"]["type"], "keyword");
        assert_eq!(props["kubernetes"]["properties"]["labels"]["type"], "flattened");
        let k8s = &props["kubernetes"]["properties"];
        assert_eq!(k8s["namespace_labels"]["type"], "flattened");
        assert_eq!(k8s["owner"]["properties"]["kind"]["type"], "keyword");
        assert_eq!(k8s["owner"]["properties"]["name"]["type"], "keyword");
        assert_eq!(k8s["container"]["properties"]["name"]["type"], "keyword");
        assert_eq!(k8s["container"]["properties"]["restart_count"]["type"], "integer");
        assert_eq!(props["container"]["properties"]["image"]["properties"]["id"]["type"], "keyword");
        let os = body(&config, &Distribution::OpenSearch("2.19.6".into()));
        assert_eq!(
            os["template"]["mappings"]["properties"]["kubernetes"]["properties"]["labels"]["type"],
            "flat_object"
        );
    }
}

//! The connection flags `logs` and `top` share: the same settings and environment variables as the
//! indexer's `elasticsearch.*` keys, so an operator with the indexer's environment can use them as is.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::es::{Auth, Es, EsError, EsSettings, Flavor, redact};

/// Errors reaching the logs.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A flag combination that cannot work.
    #[error("{0}")]
    Flags(String),
    /// Elasticsearch did not answer.
    #[error("cannot reach Elasticsearch at {url}")]
    Unreachable {
        /// The URL, password redacted.
        url: String,
        /// The cause.
        source: EsError,
    },
    /// No index matches the pattern.
    #[error(
        "no index matches `{index}` at {url}: is the indexer writing there? (set --index, or \
         SLUICE_ELASTICSEARCH__INDEX, to the indexer's elasticsearch.index)"
    )]
    NoIndex {
        /// The pattern.
        index: String,
        /// The URL, password redacted.
        url: String,
    },
    /// Credentials refused.
    #[error("Elasticsearch at {url} refused the credentials (check --es-user/--es-password or --es-api-key)")]
    Refused {
        /// The URL, password redacted.
        url: String,
        /// The cause.
        source: EsError,
    },
    /// Any other Elasticsearch error.
    #[error(transparent)]
    Es(#[from] EsError),
}

/// Connection flags, mirroring the indexer's `elasticsearch.*` configuration keys.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// Elasticsearch/OpenSearch URL; a `user:password@` in it is used as basic auth.
    #[arg(long = "es-url", env = "ELASTICSEARCH_URL", hide_env_values = true, default_value = "http://127.0.0.1:9200")]
    pub es_url: String,
    /// Indices to read: a pattern with wildcards (comma-separated), or the indexer's
    /// `elasticsearch.index` pattern (`%Y`, `%m`, `%d`, `%H`, `{namespace}` are read as `*`).
    #[arg(long, env = "SLUICE_ELASTICSEARCH__INDEX", default_value = "sluice-logs-*")]
    pub index: String,
    /// Basic-auth user (`elasticsearch.auth.username`).
    #[arg(long, env = "SLUICE_ELASTICSEARCH__AUTH__USERNAME")]
    pub es_user: Option<String>,
    /// Basic-auth password (`elasticsearch.auth.password`); prefer the environment variable.
    #[arg(long, env = "SLUICE_ELASTICSEARCH__AUTH__PASSWORD", hide_env_values = true)]
    pub es_password: Option<String>,
    /// API key, base64 of `id:key` (`elasticsearch.auth.api_key`).
    #[arg(long, env = "SLUICE_ELASTICSEARCH__AUTH__API_KEY", hide_env_values = true)]
    pub es_api_key: Option<String>,
    /// PEM file of CA certificates to trust for https:// (`elasticsearch.tls.ca_file`).
    #[arg(long, env = "SLUICE_ELASTICSEARCH__TLS__CA_FILE")]
    pub es_ca_file: Option<PathBuf>,
    /// Accept any server certificate, testing only (`elasticsearch.tls.insecure_skip_verify`).
    #[arg(long, env = "SLUICE_ELASTICSEARCH__TLS__INSECURE_SKIP_VERIFY")]
    pub es_insecure_skip_verify: bool,
    /// Timeout of one request to Elasticsearch.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub es_timeout: Duration,
}

impl Default for Connection {
    fn default() -> Self {
        Connection {
            es_url: "http://127.0.0.1:9200".into(),
            index: "sluice-logs-*".into(),
            es_user: None,
            es_password: None,
            es_api_key: None,
            es_ca_file: None,
            es_insecure_skip_verify: false,
            es_timeout: Duration::from_secs(30),
        }
    }
}

/// A checked connection: the client, the engine, and the index pattern to search.
#[derive(Debug, Clone)]
pub struct Connected {
    /// The client.
    pub es: Es,
    /// Elasticsearch or OpenSearch.
    pub flavor: Flavor,
    /// The index pattern (wildcards).
    pub index: String,
}

impl Connection {
    /// The index pattern as wildcards: the indexer's `%Y`/`%m`/`%d`/`%H`/`{namespace}` become `*`.
    pub fn index_pattern(&self) -> Result<String, ConnectError> {
        let mut out = String::new();
        let mut chars = self.index.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '%' => match chars.next() {
                    Some('Y' | 'm' | 'd' | 'H') => out.push('*'),
                    Some('%') => out.push('%'),
                    other => {
                        return Err(ConnectError::Flags(format!(
                            "--index `{}`: unknown placeholder %{} (use %Y %m %d %H or wildcards)",
                            self.index,
                            other.map(String::from).unwrap_or_default()
                        )));
                    }
                },
                '{' => {
                    let name: String = chars.by_ref().take_while(|&c| c != '}').collect();
                    if name != "namespace" {
                        return Err(ConnectError::Flags(format!(
                            "--index `{}`: unknown placeholder {{{name}}} (only {{namespace}})",
                            self.index
                        )));
                    }
                    out.push('*');
                }
                ' ' | '"' | '<' | '>' | '|' | '\\' | '/' | '?' | '#' => {
                    return Err(ConnectError::Flags(format!("--index `{}`: `{c}` is not allowed", self.index)));
                }
                c => out.push(c),
            }
        }
        // `***` from `%Y.%m.%d` reads better as the template's `*.*.*`; collapse runs only.
        while out.contains("**") {
            out = out.replace("**", "*");
        }
        if out.is_empty() {
            return Err(ConnectError::Flags("--index must not be empty".into()));
        }
        Ok(out)
    }

    /// The client settings.
    pub fn settings(&self) -> Result<EsSettings, ConnectError> {
        let auth = match (&self.es_user, &self.es_password, &self.es_api_key) {
            (Some(_), _, Some(_)) => {
                return Err(ConnectError::Flags("set either --es-user/--es-password or --es-api-key, not both".into()));
            }
            (None, Some(_), _) => return Err(ConnectError::Flags("--es-password needs --es-user".into())),
            (Some(u), p, None) => Auth::Basic(u.clone(), p.clone().unwrap_or_default()),
            (None, None, Some(k)) => Auth::ApiKey(k.clone()),
            (None, None, None) => Auth::None,
        };
        Ok(EsSettings {
            url: self.es_url.clone(),
            auth,
            ca_file: self.es_ca_file.clone(),
            insecure_skip_verify: self.es_insecure_skip_verify,
            timeout: self.es_timeout,
        })
    }

    /// Connects, tells Elasticsearch from OpenSearch and checks that an index matches the pattern
    /// (each failure is a clear [`ConnectError`]).
    pub async fn connect(&self) -> Result<Connected, ConnectError> {
        let index = self.index_pattern()?;
        let es = Es::with_settings(&self.settings()?)?;
        let url = redact(&self.es_url);
        let flavor = es.flavor().await.map_err(|e| classify(e, &url))?;
        let path = format!("{index}/_count?allow_no_indices=false&ignore_unavailable=false");
        match es.request(reqwest::Method::GET, &path, None).await {
            Ok(_) => {}
            Err(EsError::Status { status, .. }) if status == reqwest::StatusCode::NOT_FOUND => {
                return Err(ConnectError::NoIndex { index, url });
            }
            Err(e) => return Err(classify(e, &url)),
        }
        Ok(Connected { es, flavor, index })
    }
}

fn classify(e: EsError, url: &str) -> ConnectError {
    match e {
        EsError::Http { .. } => ConnectError::Unreachable { url: url.to_owned(), source: e },
        EsError::Status { status, .. } if status.as_u16() == 401 || status.as_u16() == 403 => {
            ConnectError::Refused { url: url.to_owned(), source: e }
        }
        e => ConnectError::Es(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_patterns_of_the_indexer_become_wildcards() {
        let c = |index: &str| Connection { index: index.into(), ..Default::default() }.index_pattern();
        assert_eq!(c("sluice-logs-*").unwrap(), "sluice-logs-*");
        assert_eq!(c("sluice-logs-%Y.%m.%d").unwrap(), "sluice-logs-*.*.*");
        assert_eq!(c("logs-{namespace}-%Y.%m.%d-%H").unwrap(), "logs-*-*.*.*-*");
        assert_eq!(c("a-*,b-*").unwrap(), "a-*,b-*");
        assert!(c("logs-%Q").unwrap_err().to_string().contains("%Q"));
        assert!(c("logs-{pod}").unwrap_err().to_string().contains("{pod}"));
        assert!(c("a b").is_err());
    }

    #[test]
    fn auth_flags_are_checked() {
        let c = Connection { es_user: Some("u".into()), es_api_key: Some("k".into()), ..Default::default() };
        assert!(c.settings().unwrap_err().to_string().contains("not both"));
        let c = Connection { es_password: Some("p".into()), ..Default::default() };
        assert!(c.settings().unwrap_err().to_string().contains("needs --es-user"));
        let c = Connection { es_user: Some("u".into()), es_password: Some("p".into()), ..Default::default() };
        assert_eq!(c.settings().unwrap().auth, Auth::Basic("u".into(), "p".into()));
    }
}

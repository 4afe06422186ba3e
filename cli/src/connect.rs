//! The connection flags `logs` and `top` share: the same settings and environment variables as the
//! indexer's `elasticsearch.*` keys, so an operator with the indexer's environment can use them as is.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use reqwest::Url;
use sluice_common::secret::{Secret, read_secret_file};

use crate::es::{Auth, Es, EsError, EsSettings, Flavor, redact};

/// Errors reaching the logs.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A flag combination that cannot work.
    #[error("{0}")]
    Flags(String),
    /// A `--es-*-file` cannot be read (the message names the flag and the file, never the content).
    #[error("{flag} {}: cannot read the file: {error}", path.display())]
    SecretFile {
        /// The flag, e.g. `--es-password-file`.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
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
    #[error(
        "Elasticsearch at {url} refused the credentials (check --es-user/--es-password[-file] or --es-api-key[-file])"
    )]
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

/// Connection flags, mirroring the indexer's `elasticsearch.*` configuration keys. `Debug` shows no
/// secret: the password and API key print `***`, a password in the URL too.
#[derive(Clone, Args)]
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
    /// Basic-auth password (`elasticsearch.auth.password`); prefer the file or the environment
    /// variable (a flag shows in `ps`).
    #[arg(
        long,
        env = "SLUICE_ELASTICSEARCH__AUTH__PASSWORD",
        hide_env_values = true,
        conflicts_with = "es_password_file"
    )]
    pub es_password: Option<Secret>,
    /// File holding the basic-auth password, e.g. a mounted Kubernetes Secret; one trailing newline
    /// is ignored (`elasticsearch.auth.password_file`).
    #[arg(long, env = "SLUICE_ELASTICSEARCH__AUTH__PASSWORD_FILE", value_name = "FILE")]
    pub es_password_file: Option<PathBuf>,
    /// API key, base64 of `id:key` (`elasticsearch.auth.api_key`).
    #[arg(
        long,
        env = "SLUICE_ELASTICSEARCH__AUTH__API_KEY",
        hide_env_values = true,
        conflicts_with = "es_api_key_file"
    )]
    pub es_api_key: Option<Secret>,
    /// File holding the API key, e.g. a mounted Kubernetes Secret; one trailing newline is ignored
    /// (`elasticsearch.auth.api_key_file`).
    #[arg(long, env = "SLUICE_ELASTICSEARCH__AUTH__API_KEY_FILE", value_name = "FILE")]
    pub es_api_key_file: Option<PathBuf>,
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

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured: a new field cannot be forgotten here.
        let Connection {
            es_url,
            index,
            es_user,
            es_password,
            es_password_file,
            es_api_key,
            es_api_key_file,
            es_ca_file,
            es_insecure_skip_verify,
            es_timeout,
        } = self;
        f.debug_struct("Connection")
            .field("es_url", &redact(es_url))
            .field("index", index)
            .field("es_user", es_user)
            .field("es_password", es_password)
            .field("es_password_file", es_password_file)
            .field("es_api_key", es_api_key)
            .field("es_api_key_file", es_api_key_file)
            .field("es_ca_file", es_ca_file)
            .field("es_insecure_skip_verify", es_insecure_skip_verify)
            .field("es_timeout", es_timeout)
            .finish()
    }
}

impl Default for Connection {
    fn default() -> Self {
        Connection {
            es_url: "http://127.0.0.1:9200".into(),
            index: "sluice-logs-*".into(),
            es_user: None,
            es_password: None,
            es_password_file: None,
            es_api_key: None,
            es_api_key_file: None,
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

    /// The client settings; reads `--es-password-file` / `--es-api-key-file`.
    pub fn settings(&self) -> Result<EsSettings, ConnectError> {
        // clap refuses these pairs already; this covers settings built in code.
        if self.es_password.is_some() && self.es_password_file.is_some() {
            return Err(ConnectError::Flags("set either --es-password or --es-password-file, not both".into()));
        }
        if self.es_api_key.is_some() && self.es_api_key_file.is_some() {
            return Err(ConnectError::Flags("set either --es-api-key or --es-api-key-file, not both".into()));
        }
        let has_password = self.es_password.is_some() || self.es_password_file.is_some();
        let has_api_key = self.es_api_key.is_some() || self.es_api_key_file.is_some();
        let auth = match (&self.es_user, has_password, has_api_key) {
            (Some(_), _, true) => {
                return Err(ConnectError::Flags(
                    "set either --es-user/--es-password[-file] or --es-api-key[-file], not both".into(),
                ));
            }
            (None, true, _) => return Err(ConnectError::Flags("--es-password[-file] needs --es-user".into())),
            (Some(u), _, false) => Auth::Basic(
                u.clone(),
                secret(self.es_password.as_ref(), self.es_password_file.as_deref(), "--es-password-file")?
                    .unwrap_or_default(),
            ),
            (None, false, true) => Auth::ApiKey(
                secret(self.es_api_key.as_ref(), self.es_api_key_file.as_deref(), "--es-api-key-file")?
                    .unwrap_or_default(),
            ),
            (None, false, false) => Auth::None,
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

    /// Accepted but unsafe settings, one line each, for stderr at start (the indexer logs the same
    /// for its `elasticsearch.*` keys): certificate verification off, credentials over `http://`.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.es_insecure_skip_verify {
            out.push(
                "--es-insecure-skip-verify: the server's certificate is NOT verified, anyone on the network path \
                 can read the logs and the credentials (for tests only)"
                    .to_owned(),
            );
        }
        let configured = if self.es_api_key.is_some() || self.es_api_key_file.is_some() {
            Some("an API key")
        } else if self.es_user.is_some() {
            Some("basic-auth credentials")
        } else {
            None
        };
        out.extend(plain_http_warning(&self.es_url, configured));
        out
    }
}

/// The warning for credentials sent in plain text: `url` is `http://` and carries `user:password@`,
/// or `configured` names the credentials given besides the URL ("an API key"). `None` otherwise
/// (also for a URL that does not parse: connecting reports that).
pub fn plain_http_warning(url: &str, configured: Option<&str>) -> Option<String> {
    let mut url = Url::parse(url).ok()?;
    if url.scheme() != "http" {
        return None;
    }
    let in_url = !url.username().is_empty() || url.password().is_some();
    let what = configured.or(in_url.then_some("basic-auth credentials"))?;
    let _ = url.set_username("");
    let _ = url.set_password(None);
    Some(format!("--es-url: {what} would be sent in plain text over `{url}`; use https://"))
}

/// The value of a secret flag, or the content of its file (one trailing newline trimmed).
fn secret(value: Option<&Secret>, file: Option<&Path>, flag: &'static str) -> Result<Option<Secret>, ConnectError> {
    let Some(path) = file else {
        return Ok(value.cloned());
    };
    let s = read_secret_file(path).map_err(|e| ConnectError::SecretFile {
        flag,
        path: path.to_owned(),
        error: e.source,
    })?;
    if s.is_empty() {
        return Err(ConnectError::Flags(format!("{flag} {}: the file is empty", path.display())));
    }
    Ok(Some(s))
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

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        connection: Connection,
    }

    fn parse(args: &[&str]) -> Result<Connection, clap::Error> {
        use clap::Parser;
        Cli::try_parse_from(std::iter::once("logs").chain(args.iter().copied())).map(|c| c.connection)
    }

    /// A file holding `content`, in a directory that lives as long as the returned guard.
    fn secret_file(content: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, content).unwrap();
        (dir, path)
    }

    #[test]
    fn secret_files_are_read_with_one_trailing_newline_trimmed() {
        let (_dir, pw) = secret_file("hunter2\n");
        let c = parse(&["--es-user", "viewer", "--es-password-file", pw.to_str().unwrap()]).unwrap();
        assert_eq!(c.es_password_file.as_deref(), Some(pw.as_path()));
        assert_eq!(c.settings().unwrap().auth, Auth::Basic("viewer".into(), "hunter2".into()));
        let (_dir, key) = secret_file("aWQ6a2V5\r\n");
        let c = parse(&["--es-api-key-file", key.to_str().unwrap()]).unwrap();
        assert_eq!(c.settings().unwrap().auth, Auth::ApiKey("aWQ6a2V5".into()));
        // Only one newline: the rest is the secret's.
        let (_dir, two) = secret_file("pw\n\n");
        let c = parse(&["--es-user", "u", "--es-password-file", two.to_str().unwrap()]).unwrap();
        assert_eq!(c.settings().unwrap().auth, Auth::Basic("u".into(), "pw\n".into()));
        // The inline flags still work.
        let c = parse(&["--es-api-key", "aWQ6a2V5"]).unwrap();
        assert_eq!(c.settings().unwrap().auth, Auth::ApiKey("aWQ6a2V5".into()));
    }

    #[test]
    fn secret_files_follow_the_indexers_environment_names() {
        use clap::CommandFactory;
        let cmd = Cli::command();
        let env = |id: &str| {
            let arg = cmd.get_arguments().find(|a| a.get_id() == id).unwrap_or_else(|| panic!("no {id}"));
            arg.get_env().map(|e| e.to_string_lossy().into_owned())
        };
        assert_eq!(env("es_password").as_deref(), Some("SLUICE_ELASTICSEARCH__AUTH__PASSWORD"));
        assert_eq!(env("es_password_file").as_deref(), Some("SLUICE_ELASTICSEARCH__AUTH__PASSWORD_FILE"));
        assert_eq!(env("es_api_key").as_deref(), Some("SLUICE_ELASTICSEARCH__AUTH__API_KEY"));
        assert_eq!(env("es_api_key_file").as_deref(), Some("SLUICE_ELASTICSEARCH__AUTH__API_KEY_FILE"));
    }

    #[test]
    fn a_secret_and_its_file_are_mutually_exclusive() {
        let (_dir, f) = secret_file("x");
        let f = f.to_str().unwrap();
        for (flag, file_flag) in [("--es-password", "--es-password-file"), ("--es-api-key", "--es-api-key-file")] {
            let err = parse(&["--es-user", "u", flag, "inline", file_flag, f]).unwrap_err();
            assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict, "{flag} with {file_flag}");
            let text = err.to_string();
            assert!(text.contains(flag) && text.contains(file_flag), "{text}");
            assert!(!text.contains("inline"), "the value is never shown: {text}");
        }
        // Built in code, the settings refuse the pair too.
        let path = Some(PathBuf::from(f));
        let c = Connection {
            es_user: Some("u".into()),
            es_password: Some("p".into()),
            es_password_file: path.clone(),
            ..Default::default()
        };
        assert!(c.settings().unwrap_err().to_string().contains("either --es-password or --es-password-file"));
        let c = Connection { es_api_key: Some("k".into()), es_api_key_file: path.clone(), ..Default::default() };
        assert!(c.settings().unwrap_err().to_string().contains("either --es-api-key or --es-api-key-file"));
        // And the user/key rules count the files.
        let c = Connection { es_password_file: path.clone(), ..Default::default() };
        assert!(c.settings().unwrap_err().to_string().contains("needs --es-user"));
        let c = Connection { es_user: Some("u".into()), es_api_key_file: path, ..Default::default() };
        assert!(c.settings().unwrap_err().to_string().contains("not both"));
    }

    #[test]
    fn an_unreadable_or_empty_secret_file_is_named() {
        let c = parse(&["--es-user", "u", "--es-password-file", "/nonexistent/sluice/es-password"]).unwrap();
        let err = c.settings().unwrap_err().to_string();
        assert!(err.starts_with("--es-password-file /nonexistent/sluice/es-password: cannot read the file: "), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let c = parse(&["--es-api-key-file", dir.path().to_str().unwrap()]).unwrap();
        let err = c.settings().unwrap_err().to_string();
        assert!(err.starts_with(&format!("--es-api-key-file {}: cannot read", dir.path().display())), "{err}");
        let (_dir, empty) = secret_file("\n");
        let c = parse(&["--es-api-key-file", empty.to_str().unwrap()]).unwrap();
        let err = c.settings().unwrap_err().to_string();
        assert_eq!(err, format!("--es-api-key-file {}: the file is empty", empty.display()));
    }

    #[test]
    fn debug_never_shows_a_secret() {
        let (_dir, pw) = secret_file("file-secret-1\n");
        let inline = parse(&["--es-user", "u", "--es-password", "inline-secret-2"]).unwrap();
        let key = parse(&["--es-api-key", "inline-secret-3"]).unwrap();
        let file = parse(&["--es-user", "u", "--es-password-file", pw.to_str().unwrap()]).unwrap();
        let url = parse(&["--es-url", "https://u:url-secret-4@es:9200"]).unwrap();
        let mut shown = String::new();
        for c in [&inline, &key, &file, &url] {
            shown.push_str(&format!("{c:?}\n{:?}\n", c.settings().unwrap()));
            shown.push_str(&format!("{:?}\n", Es::with_settings(&c.settings().unwrap()).unwrap()));
        }
        for secret in ["file-secret-1", "inline-secret-2", "inline-secret-3", "url-secret-4"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(format!("{inline:?}").contains("es_password: Some(\"***\")"), "{inline:?}");
        assert!(format!("{key:?}").contains("es_api_key: Some(\"***\")"), "{key:?}");
    }

    #[test]
    fn unsafe_settings_give_one_warning_each() {
        let w = |args: &[&str]| parse(args).unwrap().warnings();
        // Defaults (http://, no credentials), https with credentials: nothing to say.
        assert!(w(&[]).is_empty());
        assert!(w(&["--es-url", "https://es:9200", "--es-user", "u", "--es-password", "p"]).is_empty());
        assert!(w(&["--es-url", "https://u:p@es:9200", "--es-ca-file", "/ca.pem"]).is_empty());

        let insecure = w(&["--es-url", "https://es:9200", "--es-insecure-skip-verify"]);
        assert_eq!(insecure.len(), 1, "{insecure:?}");
        assert!(insecure[0].starts_with("--es-insecure-skip-verify: ") && insecure[0].contains("NOT verified"));

        let basic = w(&["--es-url", "http://es:9200", "--es-user", "u", "--es-password", "hunter2"]);
        assert_eq!(
            basic,
            ["--es-url: basic-auth credentials would be sent in plain text over `http://es:9200/`; use https://"]
        );
        let key = w(&["--es-url", "http://es:9200", "--es-api-key", "k"]);
        assert_eq!(key, ["--es-url: an API key would be sent in plain text over `http://es:9200/`; use https://"]);
        // Credentials in the URL count, and the warning does not repeat them.
        let in_url = w(&["--es-url", "http://elastic:hunter2@es:9200"]);
        assert_eq!(in_url.len(), 1, "{in_url:?}");
        assert!(in_url[0].contains("`http://es:9200/`") && !in_url[0].contains("hunter2"), "{in_url:?}");
        // Both at once: two lines.
        assert_eq!(w(&["--es-url", "http://es:9200", "--es-api-key", "k", "--es-insecure-skip-verify"]).len(), 2);

        // `verify` has only the URL.
        assert!(plain_http_warning("http://es:9200", None).is_none());
        assert!(plain_http_warning("https://u:p@es:9200", None).is_none());
        assert!(plain_http_warning("not a url", Some("an API key")).is_none());
        let v = plain_http_warning("http://u:p@es:9200", None).unwrap();
        assert!(v.contains("basic-auth credentials") && !v.contains(":p@"), "{v}");
    }
}

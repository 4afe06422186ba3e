//! `kafka.security.*`: the one TLS / SASL configuration shape of every Kafka client of Sluice
//! (the shipper's producer, the indexer's consumer and dead-letter producer, `setup`'s admin
//! client), and [`SecurityWatch`], which turns librdkafka's repeated authentication, TLS and
//! authorization errors into one clear message (log line + readiness) naming the cause.
//!
//! ```yaml
//! kafka:
//!   security:
//!     protocol: sasl_ssl            # plaintext (default) | ssl | sasl_plaintext | sasl_ssl
//!     tls:
//!       ca_file: /etc/sluice/kafka/ca.crt
//!       cert_file: /etc/sluice/kafka/tls.crt   # client certificate (mTLS), with key_file
//!       key_file: /etc/sluice/kafka/tls.key
//!       verify: true                # default; false logs a warning at start
//!     sasl:
//!       mechanism: scram-sha-512    # plain | scram-sha-256 | scram-sha-512 (default)
//!       username: shipper           # or username_file
//!       password_file: /etc/sluice/kafka/password   # or password / SLUICE_KAFKA__SECURITY__SASL__PASSWORD
//! ```

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use serde::{Deserialize, Serialize};

use crate::config::{Problems, Validate};
use crate::secret::{Secret, SecretFileError, read_secret_file, validate_pair, validate_readable};
use crate::server::Health;

/// `kafka.security.protocol`: librdkafka's `security.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    /// No TLS, no authentication (default).
    #[default]
    #[serde(alias = "PLAINTEXT")]
    Plaintext,
    /// TLS (optionally with a client certificate), no SASL.
    #[serde(alias = "SSL")]
    Ssl,
    /// SASL without TLS: credentials (PLAIN) and records travel in clear text.
    #[serde(alias = "SASL_PLAINTEXT")]
    SaslPlaintext,
    /// SASL over TLS.
    #[serde(alias = "SASL_SSL")]
    SaslSsl,
}

impl SecurityProtocol {
    /// The librdkafka value.
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    /// Whether the connection uses TLS.
    pub fn tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    /// Whether the connection authenticates with SASL.
    pub fn sasl(self) -> bool {
        matches!(self, SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl)
    }
}

/// `kafka.security.sasl.mechanism`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SaslMechanism {
    /// PLAIN: the password itself is sent (only over TLS).
    #[serde(rename = "plain", alias = "PLAIN")]
    Plain,
    /// SCRAM-SHA-256.
    #[serde(rename = "scram-sha-256", alias = "SCRAM-SHA-256")]
    ScramSha256,
    /// SCRAM-SHA-512 (default).
    #[default]
    #[serde(rename = "scram-sha-512", alias = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// The librdkafka value of `sasl.mechanism`.
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// `kafka.security.*` (see the module documentation).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSecurity {
    /// `plaintext` (default), `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub protocol: SecurityProtocol,
    /// `kafka.security.tls.*` (protocols `ssl` and `sasl_ssl`).
    pub tls: KafkaTls,
    /// `kafka.security.sasl.*` (protocols `sasl_plaintext` and `sasl_ssl`).
    pub sasl: KafkaSasl,
}

/// `kafka.security.tls.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaTls {
    /// PEM file of the CA certificate(s) that signed the brokers' certificates (default: the
    /// system's trust store).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (with `key_file`).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Password of an encrypted `key_file`.
    pub key_password: Secret,
    /// File holding `key_password`.
    pub key_password_file: Option<PathBuf>,
    /// Verify the broker's certificate and host name (default true). `false` is for tests only and
    /// logs a warning at start.
    pub verify: bool,
}

impl Default for KafkaTls {
    fn default() -> Self {
        KafkaTls {
            ca_file: None,
            cert_file: None,
            key_file: None,
            key_password: Secret::default(),
            key_password_file: None,
            verify: true,
        }
    }
}

/// `kafka.security.sasl.*`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSasl {
    /// `plain`, `scram-sha-256` or `scram-sha-512` (the default when unset).
    pub mechanism: Option<SaslMechanism>,
    /// User name.
    pub username: String,
    /// File holding the user name.
    pub username_file: Option<PathBuf>,
    /// Password (prefer `password_file` or `SLUICE_KAFKA__SECURITY__SASL__PASSWORD`).
    pub password: Secret,
    /// File holding the password (a mounted Kubernetes Secret).
    pub password_file: Option<PathBuf>,
}

/// librdkafka properties owned by `kafka.security.*`: refused in `kafka.properties`.
pub const SECURITY_PROPERTIES: &[&str] = &[
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "ssl.ca.location",
    "ssl.ca.pem",
    "ssl.certificate.location",
    "ssl.certificate.pem",
    "ssl.key.location",
    "ssl.key.pem",
    "ssl.key.password",
    "enable.ssl.certificate.verification",
    "ssl.endpoint.identification.algorithm",
];

/// Why the security settings could not be turned into client properties.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// A `*_file` could not be read.
    #[error(transparent)]
    File(#[from] SecretFileError),
}

impl KafkaSecurity {
    /// Sets the librdkafka properties of these settings on `config` (reading the `*_file`
    /// secrets now). Everything else of the client is the caller's.
    pub fn apply(&self, config: &mut ClientConfig) -> Result<(), SecurityError> {
        config.set("security.protocol", self.protocol.as_str());
        if self.protocol.tls() {
            let tls = &self.tls;
            let path = |p: &Path| p.to_string_lossy().into_owned();
            if let Some(ca) = &tls.ca_file {
                config.set("ssl.ca.location", path(ca));
            }
            if let Some(cert) = &tls.cert_file {
                config.set("ssl.certificate.location", path(cert));
            }
            if let Some(key) = &tls.key_file {
                config.set("ssl.key.location", path(key));
            }
            let key_password = Secret::resolve(&tls.key_password, tls.key_password_file.as_deref())?;
            if !key_password.is_empty() {
                config.set("ssl.key.password", key_password.expose());
            }
            if tls.verify {
                config.set("enable.ssl.certificate.verification", "true");
                config.set("ssl.endpoint.identification.algorithm", "https");
            } else {
                config.set("enable.ssl.certificate.verification", "false");
                config.set("ssl.endpoint.identification.algorithm", "none");
            }
        }
        if self.protocol.sasl() {
            let sasl = &self.sasl;
            config.set("sasl.mechanism", sasl.mechanism.unwrap_or_default().as_str());
            let username = match &sasl.username_file {
                Some(file) => read_secret_file(file)?.expose().trim().to_owned(),
                None => sasl.username.clone(),
            };
            config.set("sasl.username", username);
            let password = Secret::resolve(&sasl.password, sasl.password_file.as_deref())?;
            config.set("sasl.password", password.expose());
        }
        Ok(())
    }

    /// Accepted but unsafe settings, as messages to log at start (`kafka.security.…: …`).
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.protocol.tls() && !self.tls.verify {
            out.push(
                "kafka.security.tls.verify is false: the brokers' certificates are NOT verified, anyone on the \
                 network path can read the logs and the credentials (for tests only)"
                    .to_owned(),
            );
        }
        if self.protocol == SecurityProtocol::SaslPlaintext {
            let what = if self.sasl.mechanism == Some(SaslMechanism::Plain) {
                "the password and the logs travel"
            } else {
                "the logs travel"
            };
            out.push(format!("kafka.security.protocol is sasl_plaintext: {what} unencrypted; use sasl_ssl"));
        }
        out
    }

    /// Refuses `kafka.properties` keys that these settings own (one place to configure security).
    pub fn validate_properties<'a>(p: &mut Problems, keys: impl IntoIterator<Item = &'a String>) {
        for key in keys {
            if SECURITY_PROPERTIES.contains(&key.trim()) {
                p.push(&format!("properties.{key}"), "refused: set kafka.security.* instead");
            }
        }
    }

    /// The user name for messages (not a secret), `""` without SASL.
    pub fn principal(&self) -> String {
        if !self.protocol.sasl() {
            return String::new();
        }
        match &self.sasl.username_file {
            Some(file) => read_secret_file(file).map(|u| u.expose().trim().to_owned()).unwrap_or_default(),
            None => self.sasl.username.clone(),
        }
    }
}

impl Validate for KafkaSecurity {
    fn validate(&self, p: &mut Problems) {
        let tls = &self.tls;
        let protocol = self.protocol.as_str();
        if !self.protocol.tls() {
            let set = [
                ("tls.ca_file", tls.ca_file.is_some()),
                ("tls.cert_file", tls.cert_file.is_some()),
                ("tls.key_file", tls.key_file.is_some()),
                ("tls.key_password", !tls.key_password.is_empty() || tls.key_password_file.is_some()),
                ("tls.verify", !tls.verify),
            ];
            for (key, is_set) in set {
                if is_set {
                    p.push(key, format!("needs protocol ssl or sasl_ssl (protocol is {protocol})"));
                }
            }
        } else {
            if let Some(ca) = &tls.ca_file {
                validate_readable(p, "tls.ca_file", ca);
            }
            match (&tls.cert_file, &tls.key_file) {
                (Some(cert), Some(key)) => {
                    validate_readable(p, "tls.cert_file", cert);
                    validate_readable(p, "tls.key_file", key);
                }
                (Some(_), None) => p.push("tls.key_file", "is required with tls.cert_file (mutual TLS)"),
                (None, Some(_)) => p.push("tls.cert_file", "is required with tls.key_file (mutual TLS)"),
                (None, None) => {}
            }
            let key_password = !tls.key_password.is_empty() || tls.key_password_file.is_some();
            if key_password && tls.key_file.is_none() {
                p.push("tls.key_password", "needs tls.key_file");
            }
            p.prefix_push("tls");
            validate_pair(p, "key_password", !tls.key_password.is_empty(), tls.key_password_file.as_deref(), None);
            p.prefix_pop();
        }
        let sasl = &self.sasl;
        if !self.protocol.sasl() {
            let set = [
                ("sasl.mechanism", sasl.mechanism.is_some()),
                ("sasl.username", !sasl.username.is_empty() || sasl.username_file.is_some()),
                ("sasl.password", !sasl.password.is_empty() || sasl.password_file.is_some()),
            ];
            for (key, is_set) in set {
                if is_set {
                    p.push(key, format!("needs protocol sasl_ssl or sasl_plaintext (protocol is {protocol})"));
                }
            }
        } else {
            let why = Some("with protocol sasl_ssl / sasl_plaintext");
            p.prefix_push("sasl");
            validate_pair(p, "username", !sasl.username.is_empty(), sasl.username_file.as_deref(), why);
            validate_pair(p, "password", !sasl.password.is_empty(), sasl.password_file.as_deref(), why);
            p.prefix_pop();
        }
    }
}

/// What kind of security failure librdkafka reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityCause {
    /// SASL authentication failed (wrong user or password, unknown mechanism).
    Authentication,
    /// The TLS handshake failed (untrusted broker certificate, host name mismatch, client
    /// certificate refused).
    Tls,
    /// Authenticated, but an ACL is missing.
    Authorization,
}

/// Classifies a librdkafka error code and message; `None` when it is not about security.
pub fn classify(code: Option<RDKafkaErrorCode>, message: &str) -> Option<SecurityCause> {
    use RDKafkaErrorCode as C;
    match code {
        Some(C::Authentication | C::SaslAuthenticationFailed) => return Some(SecurityCause::Authentication),
        Some(C::SSL) => return Some(SecurityCause::Tls),
        Some(
            C::TopicAuthorizationFailed
            | C::GroupAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::TransactionalIdAuthorizationFailed,
        ) => return Some(SecurityCause::Authorization),
        _ => {}
    }
    // Some failures arrive as transport errors (or inside another error's text).
    if message.contains("SSL handshake failed") || message.contains("certificate verify failed") {
        Some(SecurityCause::Tls)
    } else if message.contains("SASL authentication error") || message.contains("Authentication failed") {
        Some(SecurityCause::Authentication)
    } else if message.contains("authorization failed") || message.contains("Authorization failed") {
        Some(SecurityCause::Authorization)
    } else {
        None
    }
}

/// One clear message per security failure of one Kafka client: librdkafka retries forever and
/// reports the same failure on every attempt; this logs it once at error level with its cause and
/// what to check, keeps it for readiness (`/readyz`) and for errors returned to the operator, and
/// logs once more when it clears.
#[derive(Debug)]
pub struct SecurityWatch {
    client: String,
    principal: String,
    health: Option<Health>,
    current: Mutex<Option<(SecurityCause, String)>>,
    /// Whether `current` is set: [`SecurityWatch::clear`] on a hot path costs one load.
    failing: AtomicBool,
}

impl SecurityWatch {
    /// A watch for `client` (e.g. `shipper producer`) with these settings.
    pub fn new(client: impl Into<String>, security: &KafkaSecurity) -> Self {
        SecurityWatch {
            client: client.into(),
            principal: security.principal(),
            health: None,
            current: Mutex::default(),
            failing: AtomicBool::new(false),
        }
    }

    /// Also marks `health` not ready while a failure lasts.
    pub fn with_health(mut self, health: Health) -> Self {
        self.health = Some(health);
        self
    }

    /// Looks at an error from librdkafka (error callback, delivery report, poll, admin result).
    /// Returns `true` when it is a security failure, which is then logged once here (callers
    /// should not log it again).
    pub fn observe(&self, code: Option<RDKafkaErrorCode>, detail: &str) -> bool {
        let Some(cause) = classify(code, detail) else { return false };
        let message = self.explain(cause, detail);
        let mut current = self.current.lock().expect("security watch lock");
        if current.as_ref().is_none_or(|(c, _)| *c != cause) {
            tracing::error!(client = %self.client, cause = ?cause, "{message}");
            *current = Some((cause, message));
            self.failing.store(true, Ordering::Relaxed);
        }
        // Every time: something else may have marked the process ready meanwhile.
        if let (Some(health), Some((_, message))) = (&self.health, current.as_ref())
            && health.not_ready_reason().as_deref() != Some(message.as_str())
        {
            health.set_not_ready(message.clone());
        }
        true
    }

    /// [`SecurityWatch::observe`] for a [`KafkaError`].
    pub fn observe_error(&self, error: &KafkaError, reason: &str) -> bool {
        let detail = if reason.is_empty() { error.to_string() } else { format!("{error}: {reason}") };
        self.observe(error.rdkafka_error_code(), &detail)
    }

    /// The failure in force, as the message that was logged.
    pub fn failure(&self) -> Option<String> {
        self.current.lock().expect("security watch lock").as_ref().map(|(_, m)| m.clone())
    }

    /// Something succeeded (a delivery, a commit, a metadata answer): the failure is over.
    pub fn clear(&self) {
        if !self.failing.load(Ordering::Relaxed) {
            return;
        }
        let mut current = self.current.lock().expect("security watch lock");
        self.failing.store(false, Ordering::Relaxed);
        if let Some((_, message)) = current.take() {
            tracing::info!(client = %self.client, "Kafka access works again");
            if let Some(health) = &self.health
                && health.not_ready_reason().as_deref() == Some(message.as_str())
            {
                health.set_ready();
            }
        }
    }

    /// A broker answered an authenticated request (e.g. metadata): authentication and TLS
    /// failures are over; an authorization failure stays until the refused operation succeeds.
    pub fn connected(&self) {
        if !self.failing.load(Ordering::Relaxed) {
            return;
        }
        let cause = self.current.lock().expect("security watch lock").as_ref().map(|(c, _)| *c);
        if matches!(cause, Some(SecurityCause::Authentication | SecurityCause::Tls)) {
            self.clear();
        }
    }

    fn explain(&self, cause: SecurityCause, detail: &str) -> String {
        let user = if self.principal.is_empty() { String::new() } else { format!(" for user `{}`", self.principal) };
        match cause {
            SecurityCause::Authentication => format!(
                "Kafka authentication failed{user} ({}): wrong user name or password, or a SASL mechanism the \
                 broker does not enable; check kafka.security.sasl.* ({detail})",
                self.client
            ),
            SecurityCause::Tls => format!(
                "Kafka TLS handshake failed ({}): the broker's certificate is not trusted or does not match its \
                 host name (kafka.security.tls.ca_file must hold the CA that signed it), or the broker refused \
                 the client certificate ({detail})",
                self.client
            ),
            SecurityCause::Authorization => format!(
                "Kafka refused an operation{user} ({}): an ACL is missing ({detail}); docs/security.md lists the \
                 ACLs each component needs",
                self.client
            ),
        }
    }
}

/// A client context for clients without one of their own (admin client, dead-letter producer):
/// security failures go to the [`SecurityWatch`] (once), other errors and librdkafka's own error
/// logs to `tracing` at warn level.
#[derive(Debug, Clone)]
pub struct WatchContext(pub Arc<SecurityWatch>);

impl ClientContext for WatchContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log_through(&self.0, level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if !self.0.observe_error(&error, reason) {
            tracing::warn!(client = %self.0.client, "Kafka client error: {error}: {reason}");
        }
    }
}

/// For a metadata-only consumer (no group) whose `poll` serves the error callbacks.
impl rdkafka::consumer::ConsumerContext for WatchContext {}

/// Routes one librdkafka log line: an error-level line about security goes to `watch` (logged
/// once), other error-level lines are logged at warn, the rest at debug/trace. For contexts that
/// implement `ClientContext::log` themselves.
pub fn log_through(watch: &SecurityWatch, level: RDKafkaLogLevel, fac: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
            if !watch.observe(None, message) {
                tracing::warn!(client = %watch.client, fac, "librdkafka: {message}");
            }
        }
        RDKafkaLogLevel::Warning | RDKafkaLogLevel::Notice => tracing::debug!(fac, "librdkafka: {message}"),
        _ => tracing::trace!(fac, "librdkafka: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::config::load;

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Conf {
        kafka: Kafka,
    }
    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Kafka {
        security: KafkaSecurity,
    }
    impl Validate for Conf {
        fn validate(&self, p: &mut Problems) {
            p.prefix_push("kafka");
            p.section("security", &self.kafka.security);
            p.prefix_pop();
        }
    }

    fn problems(sets: &[&str], env: &[(&str, &str)]) -> Vec<String> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        match load::<Conf>(None, env, &sets) {
            Ok(_) => Vec::new(),
            Err(e) => e.problems(),
        }
    }

    fn file(content: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(content.as_bytes()).unwrap();
        f
    }

    #[test]
    fn default_is_plaintext_with_verification_on() {
        let s = KafkaSecurity::default();
        assert_eq!(s.protocol, SecurityProtocol::Plaintext);
        assert!(s.tls.verify);
        let mut c = ClientConfig::new();
        s.apply(&mut c).unwrap();
        assert_eq!(c.get("security.protocol"), Some("plaintext"));
        assert!(s.warnings().is_empty());
    }

    #[test]
    fn sasl_ssl_with_files_and_env() {
        let (ca, pw, user) = (file("ca"), file("from-file\n"), file("shipper\n"));
        let ca_set = format!("kafka.security.tls.ca_file={}", ca.path().display());
        let pw_set = format!("kafka.security.sasl.password_file={}", pw.path().display());
        let user_set = format!("kafka.security.sasl.username_file={}", user.path().display());
        let sets = ["kafka.security.protocol=SASL_SSL", &ca_set, &pw_set, &user_set];
        let loaded = load::<Conf>(None, Vec::new(), &sets.map(String::from)).unwrap().config;
        let mut c = ClientConfig::new();
        loaded.kafka.security.apply(&mut c).unwrap();
        assert_eq!(c.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(c.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(c.get("sasl.username"), Some("shipper"));
        assert_eq!(c.get("sasl.password"), Some("from-file"));
        assert_eq!(c.get("ssl.ca.location").map(str::to_owned), Some(ca.path().display().to_string()));
        assert_eq!(c.get("enable.ssl.certificate.verification"), Some("true"));
        assert_eq!(c.get("ssl.endpoint.identification.algorithm"), Some("https"));
        assert_eq!(loaded.kafka.security.principal(), "shipper");

        let env = [
            ("SLUICE_KAFKA__SECURITY__PROTOCOL", "sasl_plaintext"),
            ("SLUICE_KAFKA__SECURITY__SASL__MECHANISM", "plain"),
            ("SLUICE_KAFKA__SECURITY__SASL__USERNAME", "u"),
            ("SLUICE_KAFKA__SECURITY__SASL__PASSWORD", "from-env"),
        ];
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let conf = load::<Conf>(None, env, &[]).unwrap().config;
        assert!(!format!("{conf:?}").contains("from-env"));
        let mut c = ClientConfig::new();
        conf.kafka.security.apply(&mut c).unwrap();
        assert_eq!(c.get("sasl.password"), Some("from-env"));
        assert_eq!(c.get("sasl.mechanism"), Some("PLAIN"));
        assert!(c.get("ssl.ca.location").is_none());
        assert_eq!(conf.kafka.security.warnings().len(), 1, "sasl_plaintext is warned about");
    }

    #[test]
    fn contradictions_are_named() {
        let p = problems(&["kafka.security.tls.ca_file=/x", "kafka.security.sasl.username=u"], &[]);
        assert_eq!(
            p,
            vec![
                "kafka.security.tls.ca_file: needs protocol ssl or sasl_ssl (protocol is plaintext)",
                "kafka.security.sasl.username: needs protocol sasl_ssl or sasl_plaintext (protocol is plaintext)",
            ]
        );
        let p = problems(&["kafka.security.protocol=sasl_ssl", "kafka.security.sasl.password=x"], &[]);
        assert!(p.iter().any(|p| p.starts_with("kafka.security.sasl.username: is required")), "{p:?}");
        let p = problems(
            &[
                "kafka.security.protocol=ssl",
                "kafka.security.tls.cert_file=/nonexistent/c",
                "kafka.security.tls.verify=false",
            ],
            &[],
        );
        assert!(p.iter().any(|p| p.starts_with("kafka.security.tls.key_file: is required")), "{p:?}");
        let pw = file("x");
        let both = format!("kafka.security.sasl.password_file={}", pw.path().display());
        let p = problems(
            &[
                "kafka.security.protocol=sasl_ssl",
                "kafka.security.sasl.username=u",
                "kafka.security.sasl.password=y",
                &both,
            ],
            &[],
        );
        assert_eq!(p, vec!["kafka.security.sasl.password: set either `password` or `password_file`, not both"]);
        let p = problems(&["kafka.security.protocol=tls"], &[]);
        assert!(p[0].starts_with("kafka.security.protocol: unknown variant `tls`"), "{p:?}");
    }

    #[test]
    fn verification_off_is_warned_about() {
        let s = KafkaSecurity {
            protocol: SecurityProtocol::Ssl,
            tls: KafkaTls { verify: false, ..Default::default() },
            ..Default::default()
        };
        let mut c = ClientConfig::new();
        s.apply(&mut c).unwrap();
        assert_eq!(c.get("enable.ssl.certificate.verification"), Some("false"));
        assert!(s.warnings()[0].contains("NOT verified"));
    }

    #[test]
    fn security_properties_are_refused() {
        let mut p = Problems::default();
        KafkaSecurity::validate_properties(&mut p, &["sasl.password".to_owned(), "client.id".to_owned()]);
        let p: Vec<String> = p.into_vec().iter().map(ToString::to_string).collect();
        assert_eq!(p, vec!["properties.sasl.password: refused: set kafka.security.* instead"]);
    }

    #[test]
    fn librdkafka_errors_are_classified() {
        use RDKafkaErrorCode as C;
        let wrong = "SASL authentication error: Authentication failed during authentication due to invalid \
                     credentials with SASL mechanism SCRAM-SHA-512";
        assert_eq!(classify(Some(C::Authentication), wrong), Some(SecurityCause::Authentication));
        assert_eq!(
            classify(Some(C::BrokerTransportFailure), "SSL handshake failed: certificate verify failed"),
            Some(SecurityCause::Tls)
        );
        assert_eq!(classify(Some(C::TopicAuthorizationFailed), ""), Some(SecurityCause::Authorization));
        assert_eq!(
            classify(None, "FindCoordinator response error: Group authorization failed."),
            Some(SecurityCause::Authorization)
        );
        assert_eq!(classify(Some(C::MessageTimedOut), "Message timed out"), None);

        let watch = SecurityWatch::new("test client", &KafkaSecurity::default()).with_health(Health::new());
        assert!(watch.observe(Some(C::Authentication), wrong));
        assert!(watch.observe(Some(C::Authentication), wrong), "still a security failure, logged once");
        let failure = watch.failure().unwrap();
        assert!(failure.contains("authentication failed") && failure.contains("invalid credentials"), "{failure}");
        assert_eq!(watch.health.as_ref().unwrap().not_ready_reason(), Some(failure));
        watch.clear();
        assert!(watch.failure().is_none());
        assert_eq!(watch.health.as_ref().unwrap().not_ready_reason(), None);
    }
}

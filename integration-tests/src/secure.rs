//! Services with security on, for the tests of `docs/security.md`:
//! - [`SecureKafka`]: a private KRaft broker whose only client listener is `SASL_SSL`
//!   (SCRAM-SHA-512) with **mutual TLS required**, certificates made by the test with `openssl`,
//!   SCRAM users created at format time (`StorageTool format -S`), and `StandardAuthorizer` with
//!   `allow.everyone.if.no.acl.found=false` (nothing is allowed without an ACL; `admin` is the super
//!   user). ACLs are added with [`SecureKafka::acl`] (`org.apache.kafka.tools.AclCommand`).
//! - [`Pki`]: the CA, the broker's and the client's certificates, and an unrelated CA.
//! - [`add_search_users`]: file-realm roles and users in a [`search_secured`](crate::search_secured)
//!   Elasticsearch.
//!
//! The broker runs in the `sluice/kafka` image with its own start script (mounted with the
//! certificates), so the image needs no security-specific code.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use testcontainers::core::{ExecCommand, Mount, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

use crate::{HOW_TO_START, KAFKA_STARTED, Search, docker_available, free_port, kafka_image};

/// Where the [`Pki`] directory is mounted in the broker container.
const MOUNT: &str = "/sluice-secure";

/// Certificates made with `openssl` for one test: a CA, the broker's certificate (for `localhost`
/// and `127.0.0.1`), a client certificate (mutual TLS), and an unrelated CA (the "unknown CA").
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// Makes the certificates (RSA 2048, valid 2 days) in a new directory readable by the broker
    /// container's user.
    pub fn new() -> Pki {
        let dir = tempfile::Builder::new().prefix("sluice-pki-").tempdir().expect("temp dir");
        let d = dir.path();
        std::fs::write(d.join("san.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").expect("write san.ext");
        openssl(
            d,
            &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt"],
            "sluice-test-ca",
        );
        openssl(
            d,
            &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "other-ca.key", "-out", "other-ca.crt"],
            "unrelated-ca",
        );
        for (name, cn) in [("broker", "localhost"), ("client", "sluice-client")] {
            openssl(
                d,
                &[
                    "req",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                ],
                cn,
            );
            let mut sign = vec!["x509", "-req", "-in"];
            let csr = format!("{name}.csr");
            let crt = format!("{name}.crt");
            sign.extend([csr.as_str(), "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", crt.as_str()]);
            sign.extend(["-days", "2", "-extfile", "san.ext"]);
            run_openssl(d, &sign);
        }
        // Kafka's PEM key store: the private key (PKCS#8, unencrypted) and the certificate in one file.
        let pem = [std::fs::read(d.join("broker.key")).unwrap(), std::fs::read(d.join("broker.crt")).unwrap()].concat();
        std::fs::write(d.join("broker.pem"), pem).expect("write broker.pem");
        make_readable(d);
        Pki { dir }
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A file of the directory: `ca.crt`, `client.crt`, `client.key`, `other-ca.crt`, …
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}

fn openssl(dir: &Path, args: &[&str], cn: &str) {
    let subject = format!("/CN={cn}");
    let mut all = args.to_vec();
    if args[1] == "-x509" {
        all.extend(["-days", "2"]);
    }
    all.extend(["-subj", subject.as_str()]);
    run_openssl(dir, &all);
}

fn run_openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl (apt-get install openssl)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// World-readable files in a world-listable directory: the broker runs as uid 1000.
fn make_readable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o644)).expect("chmod file");
    }
}

/// A private KRaft broker with security on (see the module documentation).
pub struct SecureKafka {
    /// Bootstrap servers of the `SASL_SSL` listener, `127.0.0.1:<port>`.
    pub bootstrap: String,
    /// The certificates (the client's are accepted by the broker, `other-ca.crt` is not its CA).
    pub pki: Pki,
    container: ContainerAsync<GenericImage>,
}

/// The super user's name (its password is [`ADMIN_PASSWORD`]).
pub const ADMIN_USER: &str = "admin";
/// The super user's password (test only).
pub const ADMIN_PASSWORD: &str = "admin-secret-0";

impl SecureKafka {
    /// Starts the broker with these SCRAM-SHA-512 users (`(name, password)`; [`ADMIN_USER`] is
    /// added) and waits until it serves.
    pub async fn start(users: &[(&str, &str)]) -> SecureKafka {
        assert!(docker_available(), "{HOW_TO_START}");
        let pki = Pki::new();
        let (port, controller) = (free_port(), free_port());
        let jaas_scram = format!(
            "org.apache.kafka.common.security.scram.ScramLoginModule required username=\"{ADMIN_USER}\" password=\"{ADMIN_PASSWORD}\";"
        );
        let jaas_plain = format!(
            "org.apache.kafka.common.security.plain.PlainLoginModule required username=\"{ADMIN_USER}\" \
             password=\"{ADMIN_PASSWORD}\" user_{ADMIN_USER}=\"{ADMIN_PASSWORD}\";"
        );
        let properties = [
            ("process.roles", "broker,controller".to_owned()),
            ("node.id", "1".to_owned()),
            ("controller.quorum.bootstrap.servers", format!("127.0.0.1:{controller}")),
            ("listeners", format!("SASL_SSL://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}")),
            ("advertised.listeners", format!("SASL_SSL://127.0.0.1:{port}")),
            ("controller.listener.names", "CONTROLLER".to_owned()),
            ("inter.broker.listener.name", "SASL_SSL".to_owned()),
            ("listener.security.protocol.map", "SASL_SSL:SASL_SSL,CONTROLLER:SASL_PLAINTEXT".to_owned()),
            ("sasl.enabled.mechanisms", "SCRAM-SHA-512".to_owned()),
            ("sasl.mechanism.inter.broker.protocol", "SCRAM-SHA-512".to_owned()),
            ("listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config", jaas_scram.clone()),
            ("sasl.mechanism.controller.protocol", "PLAIN".to_owned()),
            ("listener.name.controller.sasl.enabled.mechanisms", "PLAIN".to_owned()),
            ("listener.name.controller.plain.sasl.jaas.config", jaas_plain),
            ("ssl.keystore.type", "PEM".to_owned()),
            ("ssl.keystore.location", format!("{MOUNT}/broker.pem")),
            ("ssl.truststore.type", "PEM".to_owned()),
            ("ssl.truststore.location", format!("{MOUNT}/ca.crt")),
            ("listener.name.sasl_ssl.ssl.client.auth", "required".to_owned()),
            ("authorizer.class.name", "org.apache.kafka.metadata.authorizer.StandardAuthorizer".to_owned()),
            ("super.users", format!("User:{ADMIN_USER}")),
            ("allow.everyone.if.no.acl.found", "false".to_owned()),
            ("log.dirs", "/tmp/kafka-data".to_owned()),
            ("num.partitions", "1".to_owned()),
            ("auto.create.topics.enable", "false".to_owned()),
            ("group.initial.rebalance.delay.ms", "0".to_owned()),
            ("offsets.topic.replication.factor", "1".to_owned()),
            ("offsets.topic.num.partitions", "1".to_owned()),
            ("transaction.state.log.replication.factor", "1".to_owned()),
            ("transaction.state.log.min.isr", "1".to_owned()),
            ("share.coordinator.state.topic.replication.factor", "1".to_owned()),
            ("share.coordinator.state.topic.min.isr", "1".to_owned()),
        ];
        let text: String = properties.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        std::fs::write(pki.path("server.properties"), text).expect("write server.properties");
        let admin = format!(
            "security.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\nsasl.jaas.config={jaas_scram}\n\
             ssl.truststore.type=PEM\nssl.truststore.location={MOUNT}/ca.crt\n\
             ssl.keystore.type=PEM\nssl.keystore.location={MOUNT}/broker.pem\n"
        );
        std::fs::write(pki.path("admin.properties"), admin).expect("write admin.properties");
        let mut scram = format!("-S 'SCRAM-SHA-512=[name={ADMIN_USER},password={ADMIN_PASSWORD}]'");
        for (name, password) in users {
            scram.push_str(&format!(" -S 'SCRAM-SHA-512=[name={name},password={password}]'"));
        }
        let script = format!(
            r#"#!/bin/bash
set -euo pipefail
cat > /tmp/log4j2.properties <<'EOF'
status = warn
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = INFO
EOF
KAFKA_HEAP_OPTS=-Xmx256m /opt/kafka/bin/kafka-run-class.sh kafka.tools.StorageTool format --standalone \
  -t 5L6g3nShT-eMCtK--X86sw -c {MOUNT}/server.properties {scram} >/dev/null
exec java -Xmx512m -Xms256m -Dlog4j2.configurationFile=/tmp/log4j2.properties -cp '/opt/kafka/libs/*' \
  kafka.Kafka {MOUNT}/server.properties
"#
        );
        std::fs::write(pki.path("run.sh"), script).expect("write run.sh");
        make_readable(pki.dir());
        let (name, tag) = kafka_image();
        let container = GenericImage::new(name, tag)
            .with_wait_for(WaitFor::message_on_stdout(KAFKA_STARTED))
            .with_network("host")
            .with_label("sluice.test", "1")
            .with_mount(Mount::bind_mount(pki.dir().to_string_lossy(), MOUNT))
            .with_cmd(["bash", &format!("{MOUNT}/run.sh")])
            .with_startup_timeout(Duration::from_secs(180))
            .start()
            .await
            .unwrap_or_else(|err| panic!("cannot start the secured Kafka container: {err}\n{HOW_TO_START}"));
        SecureKafka { bootstrap: format!("127.0.0.1:{port}"), pki, container }
    }

    /// Runs `kafka-acls.sh --add` as the super user for each argument list (one JVM for all),
    /// e.g. `["--allow-principal", "User:shipper", "--operation", "Write", "--topic", "t"]`.
    pub async fn acl(&self, grants: &[Vec<String>]) {
        self.acl_command("--add", grants).await;
    }

    /// Removes ACLs (same arguments as [`SecureKafka::acl`]).
    pub async fn remove_acl(&self, grants: &[Vec<String>]) {
        self.acl_command("--remove --force", grants).await;
    }

    async fn acl_command(&self, action: &str, grants: &[Vec<String>]) {
        let commands: Vec<String> = grants
            .iter()
            .map(|args| {
                let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
                format!(
                    "KAFKA_HEAP_OPTS=-Xmx192m /opt/kafka/bin/kafka-acls.sh --bootstrap-server {} --command-config \
                     {MOUNT}/admin.properties {action} {}",
                    self.bootstrap,
                    quoted.join(" ")
                )
            })
            .collect();
        self.exec(&commands.join(" && ")).await;
    }

    /// Runs a bash command in the broker container; panics with its output when it fails.
    pub async fn exec(&self, command: &str) -> String {
        exec(&self.container, command).await
    }
}

async fn exec(container: &ContainerAsync<GenericImage>, command: &str) -> String {
    let mut result = container
        .exec(ExecCommand::new(["bash", "-c", command]))
        .await
        .unwrap_or_else(|e| panic!("exec {command}: {e}"));
    let stdout = String::from_utf8_lossy(&result.stdout_to_vec().await.unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&result.stderr_to_vec().await.unwrap_or_default()).into_owned();
    let mut code = result.exit_code().await.ok().flatten();
    for _ in 0..50 {
        if code.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        code = result.exit_code().await.ok().flatten();
    }
    assert_eq!(code, Some(0), "`{command}` failed:\n{stdout}\n{stderr}");
    stdout
}

/// Adds file-realm roles (YAML appended to `config/roles.yml`) and users (`name`, `password`,
/// comma-separated roles) to a [`search_secured`](crate::search_secured) node, and waits until
/// each user authenticates (the file realm reloads its files within ~5 s).
pub async fn add_search_users(search: &Search, roles_yaml: &str, users: &[(&str, &str, &str)]) {
    let container = search.container.as_ref().expect("a secured search container");
    let mut command = format!(
        "set -e; cd /usr/share/elasticsearch; cat >> config/roles.yml <<'EOF'\n{roles_yaml}\nEOF\n\
         export ES_JAVA_HOME=${{ES_JAVA_HOME:-/usr/lib/jvm/java-17}}; unset JAVA_HOME; "
    );
    for (name, password, roles) in users {
        command.push_str(&format!("bin/elasticsearch-users useradd '{name}' -p '{password}' -r '{roles}'; "));
    }
    exec(container, &command).await;
    for (name, password, _) in users {
        let client =
            crate::client(&search.url, Some(&(name.to_string(), password.to_string())), search.ca_pem.as_deref());
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let me = crate::get_json(&client, "/_security/_authenticate").await;
            if me.as_ref().and_then(|m| m["username"].as_str()) == Some(name) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "user {name} cannot authenticate: {me:?}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

// The `--check-config` suite both binaries run (included by `<binary>/tests/check_config.rs`, which
// defines `BIN`, the path of the binary under test): exit codes and the report, as operators see them.

use std::process::{Command, Output};

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BIN);
    command.args(args).env_remove("RUST_LOG");
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("SLUICE_")) {
        command.env_remove(key);
    }
    command.envs(env.iter().copied()).output().expect("run binary")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn defaults_are_valid() {
    let output = run(&["--check-config"], &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("configuration is valid"));
}

#[test]
fn unknown_key_names_the_key_and_the_nearest_valid_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.yaml");
    std::fs::write(&file, "kafka:\n  brokerz: [\"127.0.0.1:9092\"]\n").unwrap();
    let output = run(&["--check-config", "--config", file.to_str().unwrap()], &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("kafka.brokerz: unknown key `brokerz`; did you mean `brokers`?"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn invalid_values_from_env_and_flags_are_all_reported_with_paths() {
    let output = run(
        &["--check-config", "--set", "metrics.listen=nowhere"],
        &[("SLUICE_KAFKA__BROKERS", "no-port"), ("SLUICE_KAFKA__TOPIC", "")],
    );
    assert_eq!(output.status.code(), Some(1));
    let report = stderr(&output);
    for expected in [
        "kafka.brokers[0]: `no-port` is not host:port",
        "kafka.topic: must not be empty",
        "metrics.listen: `nowhere` is not an address like 0.0.0.0:9464",
    ] {
        assert!(report.contains(expected), "missing {expected:?} in:\n{report}");
    }
}

#[test]
fn invalid_config_refuses_to_run() {
    let output = run(&["--set", "kafka.topic="], &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("kafka.topic: must not be empty"));
}

/// Settings that let `run` start without services: `output: stdout` and temp directories for the
/// shipper; Kafka and Elasticsearch nowhere for the indexer (which then waits for them, alive).
fn runnable(dir: &std::path::Path) -> Vec<String> {
    let mut set = vec!["metrics.listen=127.0.0.1:0".to_owned()];
    if BIN.ends_with("sluice-shipper") {
        set.push("output=stdout".into());
        set.push("kubernetes.enabled=false".into());
        set.push(format!("paths.root={}", dir.join("pods").display()));
        set.push(format!("checkpoint.dir={}", dir.join("ckpt").display()));
    } else {
        set.push("kafka.brokers=127.0.0.1:1".into());
        set.push("elasticsearch.urls=http://127.0.0.1:1".into());
    }
    set
}

fn with_sets<'a>(first: &[&'a str], sets: &'a [String]) -> Vec<&'a str> {
    let mut args = first.to_vec();
    for s in sets {
        args.extend(["--set", s.as_str()]);
    }
    args
}

/// `--check-config` and `run` judge a configuration alike: what the check refuses, `run` refuses
/// with the same problems (exit 1, nothing started); what it accepts, `run` starts with.
#[test]
fn check_config_and_run_agree_on_the_same_configuration() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("pods")).unwrap();
    let base = runnable(dir.path());
    // The shipper validates `kafka.*` values only when it publishes to Kafka (an unused section's
    // files, e.g. a CA, need not exist): its Kafka cases switch the output back to Kafka. `run`
    // refuses them at validation, before any connection.
    let to_kafka: &[&str] = if BIN.ends_with("sluice-shipper") { &["output=kafka"] } else { &[] };
    let broken: Vec<Vec<&str>> = vec![
        [to_kafka, &["kafka.topic="]].concat(),
        vec!["metrics.listen=nowhere"],
        [to_kafka, &["kafka.brokers=no-port", "kafka.topic="]].concat(),
        vec!["kafka.brokerz=x"],
    ];
    for case in &broken {
        let mut sets = base.clone();
        sets.extend(case.iter().map(|s| s.to_string()));
        let check = run(&with_sets(&["--check-config"], &sets), &[]);
        assert_eq!(check.status.code(), Some(1), "{case:?}: {}", stderr(&check));
        let problems: Vec<String> =
            stderr(&check).lines().filter(|l| l.contains(": ")).map(|l| l.trim().to_owned()).collect();
        assert!(!problems.is_empty(), "{case:?}: no problem reported:\n{}", stderr(&check));
        let started = run(&with_sets(&[], &sets), &[]);
        assert_eq!(started.status.code(), Some(1), "{case:?}: `run` did not refuse:\n{}", stderr(&started));
        for problem in &problems {
            assert!(stderr(&started).contains(problem.as_str()), "{case:?}: `run` misses {problem:?}:\n{}", stderr(&started));
        }
    }

    let check = run(&with_sets(&["--check-config"], &base), &[]);
    assert!(check.status.success(), "{}", stderr(&check));
    let log = dir.path().join("run.log");
    let mut command = Command::new(BIN);
    command.args(with_sets(&[], &base)).env_remove("RUST_LOG").env("RUST_LOG", "info");
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("SLUICE_")) {
        command.env_remove(key);
    }
    let mut child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn run");
    // Started: the metrics server is listening (its address is logged).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let addr = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(at) = text.find("addr=") {
            let addr: String = text[at + 5..].chars().take_while(|c| !c.is_whitespace()).collect();
            break addr;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("`run` exited with {status} on a configuration --check-config accepts:\n{text}");
        }
        assert!(std::time::Instant::now() < deadline, "`run` did not start within 30 s:\n{text}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stream = std::net::TcpStream::connect(addr.trim_matches('"')).expect("metrics server");
    use std::io::{Read, Write};
    write!(stream, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap().success());
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status {status} after SIGTERM:\n{}", std::fs::read_to_string(&log).unwrap());
}

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

//! The Helm chart (`deploy/helm/sluice` with its Kafka dependency `deploy/helm/kafka`) driven by
//! the real `helm` and `kubectl` that `./dev k8s build` puts in the machine-wide cache, against a
//! real kube-apiserver ([`crate::kube::ControlPlane`]).
//!
//! [`Chart::prepare`] copies both charts into a temp dir and runs `helm dependency build` there
//! (offline: the dependency is `file://../kafka`), so tests never write into the repository and
//! can run in parallel. Helm's cache/config/data homes are inside that temp dir too.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::kube::bin_dir;

/// `deploy/helm` of the repository.
pub fn charts_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/helm")
}

/// The CRDs `./dev k8s build` copies from the KEDA and prometheus-operator Go modules
/// (`<cache>/<k8s version>/crds`).
pub fn crd_dir() -> PathBuf {
    bin_dir().parent().expect("bin dir has a parent").join("crds")
}

/// Path of a cached tool (`helm`, `kubectl`), with a clear panic when it was not built.
pub fn tool(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run ./dev k8s build (builds helm, kubectl and the control plane from the Go module proxy)",
        path.display()
    );
    path
}

/// The result of a command: status, stdout and stderr as text.
#[derive(Debug)]
pub struct Run {
    /// The command line, for messages.
    pub command: String,
    /// Exit status success.
    pub success: bool,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    fn from_output(command: String, output: Output) -> Run {
        Run {
            command,
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Panics with the command and its output unless it succeeded; returns stdout.
    pub fn ok(self) -> String {
        assert!(
            self.success,
            "`{}` failed\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command, self.stdout, self.stderr
        );
        self.stdout
    }

    /// Panics unless it failed; returns stdout + stderr (to match the reason).
    pub fn fails(self) -> String {
        assert!(!self.success, "`{}` should have failed\n--- stdout ---\n{}", self.command, self.stdout);
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `program args…` with `envs`, optional stdin, and a timeout (killed after it).
pub fn run(program: &Path, args: &[&str], envs: &[(&str, &str)], stdin: Option<&str>, timeout: Duration) -> Run {
    let command = format!(
        "{} {}",
        program.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        args.join(" ")
    );
    let dir = tempfile::tempdir().expect("temp dir");
    // Output through files: no pipe can fill up while we wait.
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(envs.iter().copied())
        .stdout(fs::File::create(&out_path).expect("stdout file"))
        .stderr(fs::File::create(&err_path).expect("stderr file"));
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {command}: {e}"));
    if let Some(input) = stdin {
        use std::io::Write;
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(input.as_bytes()).expect("write stdin");
    }
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`{command}` did not finish within {timeout:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                fs::read_to_string(&out_path).unwrap_or_default(),
                fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = Output {
        status,
        stdout: fs::read(&out_path).unwrap_or_default(),
        stderr: fs::read(&err_path).unwrap_or_default(),
    };
    Run::from_output(command, output)
}

/// A prepared copy of the chart (dependencies built) and the helm/kubectl environment.
pub struct Chart {
    dir: tempfile::TempDir,
    kubeconfig: Option<PathBuf>,
}

/// Timeout of one helm or kubectl call (a loaded 2-core machine is slow, but not this slow).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(180);

impl Chart {
    /// Copies `deploy/helm/{sluice,kafka}` into a temp dir and runs `helm dependency build`.
    pub fn prepare() -> Chart {
        let dir = tempfile::Builder::new().prefix("sluice-helm-").tempdir().expect("temp dir");
        for chart in ["sluice", "kafka"] {
            copy_dir(&charts_root().join(chart), &dir.path().join("charts-src").join(chart));
        }
        // Build artefacts a developer may have made in the repository are not part of the test.
        let _ = fs::remove_dir_all(dir.path().join("charts-src/sluice/charts"));
        let chart = Chart { dir, kubeconfig: None };
        chart.helm(&["dependency", "build", chart.path().to_str().unwrap()]).ok();
        assert!(
            chart.path().join("charts/kafka-0.1.0.tgz").is_file(),
            "helm dependency build did not package the Kafka chart"
        );
        chart
    }

    /// Uses this kubeconfig for helm and kubectl.
    pub fn with_kubeconfig(mut self, kubeconfig: PathBuf) -> Chart {
        self.kubeconfig = Some(kubeconfig);
        self
    }

    /// The chart folder (`…/charts-src/sluice`).
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("charts-src/sluice")
    }

    /// A values file of the repository's `deploy/helm/sluice/ci/`.
    pub fn ci_values(name: &str) -> PathBuf {
        charts_root().join("sluice/ci").join(name)
    }

    /// Writes a values file into the temp dir; returns its path.
    pub fn values_file(&self, name: &str, yaml: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        fs::write(&path, yaml).expect("write values");
        path
    }

    fn env(&self) -> Vec<(String, String)> {
        let root = self.dir.path();
        let mut env = vec![
            ("HELM_CACHE_HOME".to_owned(), root.join("helm/cache").display().to_string()),
            ("HELM_CONFIG_HOME".to_owned(), root.join("helm/config").display().to_string()),
            ("HELM_DATA_HOME".to_owned(), root.join("helm/data").display().to_string()),
        ];
        if let Some(kubeconfig) = &self.kubeconfig {
            env.push(("KUBECONFIG".to_owned(), kubeconfig.display().to_string()));
        }
        env
    }

    /// Runs `helm args…`.
    pub fn helm(&self, args: &[&str]) -> Run {
        let env = self.env();
        let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run(&tool("helm"), args, &envs, None, CALL_TIMEOUT)
    }

    /// Runs `kubectl args…` (with the kubeconfig), optionally feeding `stdin`.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Run {
        let env = self.env();
        let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run(&tool("kubectl"), args, &envs, stdin, CALL_TIMEOUT)
    }

    /// `helm template <release> <chart> -n <namespace> [-f values]… [extra]…`.
    pub fn template(&self, release: &str, namespace: &str, values: &[&Path], extra: &[&str]) -> Run {
        let chart = self.path();
        let mut args: Vec<String> =
            vec!["template".into(), release.into(), chart.display().to_string(), "-n".into(), namespace.into()];
        for v in values {
            args.push("-f".into());
            args.push(v.display().to_string());
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.helm(&args)
    }
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create dir");
    for entry in fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display())) {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

/// The YAML documents of a multi-document stream (`helm template` output), as JSON values,
/// without the empty ones.
pub fn documents(yaml: &str) -> Vec<serde_json::Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|d| serde::Deserialize::deserialize(d).expect("valid YAML document"))
        .filter(|v: &serde_json::Value| !v.is_null())
        .collect()
}

/// The document of `kind` named `name`.
pub fn find<'a>(docs: &'a [serde_json::Value], kind: &str, name: &str) -> &'a serde_json::Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} among {:?}", kinds(docs)))
}

/// `Kind/name` of every document.
pub fn kinds(docs: &[serde_json::Value]) -> Vec<String> {
    docs.iter()
        .map(|d| format!("{}/{}", d["kind"].as_str().unwrap_or("?"), d["metadata"]["name"].as_str().unwrap_or("?")))
        .collect()
}

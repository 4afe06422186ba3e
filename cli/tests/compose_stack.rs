//! The docker-compose stack for real (`docker-compose.yml`, `./dev up` / `./dev down`):
//!
//! 1. `./dev up` on ports and a project name of its own (the shared test services keep 9092/9200);
//! 2. a loadgen burst of 50,000 records at full speed with rotation, gzip, partials and stack
//!    traces → `sluice verify --wait --strict`: 0 lost, 0 duplicated, partials and traces joined;
//! 3. loadgen writing at a steady rate while `docker-compose restart` hits the shipper and one
//!    indexer → verify again: 0 lost, 0 duplicated;
//! 4. `./dev down` (volumes kept) + `./dev up`: both runs verify again (nothing re-sent);
//! 5. `./dev down -v` leaves no container and no volume behind.
//!
//! Needs a Docker engine and docker-compose (`./dev up` installs them as root) and the debug
//! binaries of the workspace (`cargo build --workspace --bins`, which `./dev test` does first):
//! `./dev up` is told to use them (`SLUICE_UP_BINARIES`) because cargo holds the target-dir lock
//! while tests run. Takes a few minutes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const PORT_BASE: u16 = 29000;

struct Stack {
    root: PathBuf,
    project: String,
    env: Vec<(String, String)>,
}

impl Stack {
    fn new() -> Stack {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned();
        let project = format!("sluice-ci-{}", std::process::id());
        let bins = Path::new(env!("CARGO_BIN_EXE_sluice")).parent().unwrap().to_owned();
        for b in ["sluice-shipper", "sluice-indexer"] {
            assert!(
                bins.join(b).exists(),
                "{} missing: run `cargo build --workspace --bins` first (./dev test does)",
                bins.join(b).display()
            );
        }
        let p = |off: u16| (PORT_BASE + off).to_string();
        let env = vec![
            ("COMPOSE_PROJECT_NAME".into(), project.clone()),
            ("SLUICE_UP_BINARIES".into(), bins.display().to_string()),
            ("SLUICE_UP_KAFKA_PORT".into(), p(92)),
            ("SLUICE_UP_KAFKA_CONTROLLER_PORT".into(), p(93)),
            ("SLUICE_UP_ES_PORT".into(), p(200)),
            ("SLUICE_UP_ES_TRANSPORT_PORT".into(), p(300)),
            ("SLUICE_UP_SHIPPER_METRICS_PORT".into(), p(464)),
            ("SLUICE_UP_INDEXER_1_METRICS_PORT".into(), p(465)),
            ("SLUICE_UP_INDEXER_2_METRICS_PORT".into(), p(466)),
            ("SLUICE_UP_FLOW_SECONDS".into(), "4".into()),
            ("SLUICE_UP_DEMO_RATE".into(), "20".into()),
            // What `./dev up` sets for its own docker-compose calls; the test's calls need them too.
            ("SLUICE_IMAGE".into(), "sluice/sluice:dev".into()),
            ("KAFKA_IMAGE".into(), "sluice/kafka:4.1.1".into()),
            ("ES_IMAGE".into(), "sluice/elasticsearch:8.19.21".into()),
        ];
        Stack { root, project, env }
    }

    fn cmd(&self, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new(program);
        c.args(args).current_dir(&self.root);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        let start = Instant::now();
        let out = self.cmd(program, args).stderr(Stdio::inherit()).output().unwrap();
        eprintln!("[compose_stack] {program} {} → {} in {:.0?}", args.join(" "), out.status, start.elapsed());
        assert!(out.status.success(), "{program} {args:?} failed: {}", String::from_utf8_lossy(&out.stdout));
        out
    }

    fn dev(&self, args: &[&str]) -> Output {
        self.run("./dev", args)
    }

    fn compose(&self, args: &[&str]) -> Output {
        let mut a = vec!["-f", "docker-compose.yml", "-p", &self.project];
        a.extend_from_slice(args);
        self.run("docker-compose", &a)
    }

    /// `sluice <args>` inside the stack's loadgen container (its volume, host network). `exec`,
    /// not `run`: compose 1.29's `run` adds links to the dependencies, refused with host networking.
    fn sluice(&self, args: &[&str]) -> Output {
        let mut a = vec!["exec", "-T", "loadgen", "sluice"];
        a.extend_from_slice(args);
        self.compose(&a)
    }

    fn loadgen(&self, run_id: &str, extra: &[&str]) -> Value {
        let manifest = format!("--manifest=/var/log/pods/.loadgen/{run_id}.json");
        let run = format!("--run-id={run_id}");
        let mut args = vec!["loadgen", "--root=/var/log/pods", &run, &manifest, "--progress=never"];
        args.extend_from_slice(extra);
        let out = self.sluice(&args);
        serde_json::from_slice(&out.stdout).expect("loadgen prints its summary as JSON")
    }

    fn verify(&self, run_id: &str) -> Value {
        let manifest = format!("--manifest=/var/log/pods/.loadgen/{run_id}.json");
        let es = format!("--es-url=http://127.0.0.1:{}", PORT_BASE + 200);
        let out = self
            .cmd("docker-compose", &[])
            .args(["-f", "docker-compose.yml", "-p", &self.project, "exec", "-T", "loadgen"])
            .args(["sluice", "verify", &manifest, &es, "--wait", "--timeout=300s", "--stable-for=60s", "--json"])
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        let report: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("verify printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
        eprintln!(
            "[compose_stack] verify {run_id}: expected {} found {} lost {} dup(token) {} dup(_id) {} partials unmerged {} multiline split {}",
            report["expected"],
            report["found"],
            report["lost"],
            report["duplicated_tokens"],
            report["duplicated_ids"],
            report["partials_unmerged"],
            report["multiline_split"]
        );
        report
    }

    fn containers(&self) -> String {
        let out = Command::new("docker")
            .args(["ps", "-aq", "--filter", &format!("label=com.docker.compose.project={}", self.project)])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Whatever happened: no container and no volume left behind.
        let _ = self.cmd("./dev", &["down", "-v"]).stdout(Stdio::null()).status();
    }
}

fn assert_exactly_once(r: &Value, expected: u64) {
    assert_eq!(r["expected"], expected, "{r:#}");
    assert_eq!(r["lost"], 0, "lost records: {r:#}");
    assert_eq!(r["duplicated_tokens"], 0, "duplicates by token: {r:#}");
    assert_eq!(r["duplicated_ids"], 0, "duplicates by _id: {r:#}");
    assert_eq!(r["found"], expected, "{r:#}");
}

#[test]
fn compose_stack_delivers_every_line_once() {
    let stack = Stack::new();
    let start = Instant::now();
    stack.dev(&["up"]);
    eprintln!("[compose_stack] ./dev up: {:.0?}", start.elapsed());
    // A second `./dev up` only reports.
    let again = Instant::now();
    stack.dev(&["up"]);
    assert!(again.elapsed() < Duration::from_secs(60), "a second ./dev up should only report");

    // 2. A burst: 50 k records as fast as possible, rotation at 256 KiB with gzip, long lines
    // split into 16 KiB partials, stack traces.
    let burst = stack.loadgen(
        "burst",
        &[
            "--lines=50000",
            "--rate=0",
            "--pods=4",
            "--containers=2",
            "--format=mixed",
            "--rotate-bytes=262144",
            "--keep-files=20",
            "--partial-every=250",
            "--multiline-every=100",
        ],
    );
    let totals = &burst["totals"];
    assert_eq!(totals["records"], 50_000);
    assert!(totals["rotations"].as_u64().unwrap() >= 8, "{totals}");
    assert!(totals["partial_split"].as_u64().unwrap() >= 100, "{totals}");
    let r = stack.verify("burst");
    assert_exactly_once(&r, 50_000);
    assert_eq!(r["partials_unmerged"], 0, "{r:#}");
    assert_eq!(r["multiline_split"], 0, "{r:#}");

    // 3. Restarts of the shipper and of one indexer while loadgen writes (~20 s at 1,500/s).
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            stack.loadgen(
                "restarts",
                &["--lines=30000", "--rate=1500", "--rotate-bytes=262144", "--keep-files=20", "--restart-every=2000"],
            )
        });
        std::thread::sleep(Duration::from_secs(5));
        stack.compose(&["restart", "shipper"]);
        std::thread::sleep(Duration::from_secs(3));
        stack.compose(&["restart", "indexer-1"]);
        let summary = writer.join().unwrap();
        assert_eq!(summary["totals"]["records"], 30_000);
        assert!(summary["totals"]["restarts"].as_u64().unwrap() > 0);
    });
    let r = stack.verify("restarts");
    assert_exactly_once(&r, 30_000);

    // 4. down (data kept) + up: the shipper resumes from its checkpoint, nothing is sent twice.
    stack.dev(&["down"]);
    assert!(stack.containers().is_empty(), "containers left after ./dev down: {}", stack.containers());
    stack.dev(&["up"]);
    // Anything re-read and re-sent would reach Elasticsearch within a few seconds.
    std::thread::sleep(Duration::from_secs(10));
    assert_exactly_once(&stack.verify("burst"), 50_000);
    assert_exactly_once(&stack.verify("restarts"), 30_000);

    // 5. Nothing left behind.
    stack.dev(&["down", "-v"]);
    assert!(stack.containers().is_empty(), "containers left after ./dev down -v: {}", stack.containers());
    let volumes = Command::new("docker")
        .args(["volume", "ls", "-q", "--filter", &format!("label=com.docker.compose.project={}", stack.project)])
        .output()
        .unwrap();
    assert!(volumes.stdout.is_empty(), "volumes left: {}", String::from_utf8_lossy(&volumes.stdout));
    eprintln!("[compose_stack] total {:.0?}", start.elapsed());
}

//! Files → `sluice-shipper` → a real Kafka broker, side by side **in the same run** with `kcat -P`
//! producing the same lines to the same broker with the same compression and `acks=all`.
//!
//! ```text
//! KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 cargo bench -p sluice-shipper --bench kafka
//! ```
//! Settings (environment): `LINES` (1,000,000), `FILES` (500 containers), `LINE_BYTES` (200, CRI line
//! length), `ROUNDS` (3), `COMPRESSION` (zstd), `MESSAGE_FORMAT` (`v2`: the shipper's
//! `kafka.message_format`; with `v1` the run also has kcat produce the shipper's own messages). Prints per round and the median: lines/s, MB/s of log
//! read, CPU seconds (user + system) and CPU seconds per 100 MB, peak RSS.
//!
//! The shipper is the release binary with its production configuration (idempotent producer,
//! `acks=all`, checkpointing); its CPU and peak RSS (`VmHWM`) are read from `/proc/<pid>` once Kafka
//! acknowledged every record; its time runs from start to the last acknowledgement. `kcat` runs
//! under `/usr/bin/time` and its time is from start to exit (it exits after its final flush).

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_sluice-shipper");

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[derive(Debug, Clone, Copy)]
struct Figures {
    secs: f64,
    cpu: f64,
    rss_kib: u64,
}

struct Bench {
    bootstrap: String,
    kubeconfig: Option<PathBuf>,
    lines: u64,
    bytes: u64,
    root: PathBuf,
    flat: PathBuf,
    work: PathBuf,
    compression: String,
    format: String,
}

/// Pods the files belong to: `(namespace, name, uid)`; with a control plane their uids are the
/// server's, so the shipper's pod store enriches every record.
type PodRef = (String, String, String);

/// Writes `files` kubelet-style CRI logs (containers `c0`, `c1`, … spread over `pods`) and one flat
/// file with the same lines (for kcat).
fn generate(dir: &Path, lines: u64, files: u64, line_bytes: usize, pods: &[PodRef]) -> (PathBuf, PathBuf, u64) {
    let root = dir.join("pods");
    let flat = dir.join("flat.log");
    let mut flat_out = BufWriter::with_capacity(1 << 20, File::create(&flat).unwrap());
    let mut outs: Vec<BufWriter<File>> = (0..files)
        .map(|i| {
            let (ns, pod, uid) = &pods[i as usize % pods.len()];
            let container = format!("c{}", i as usize / pods.len());
            let d = root.join(format!("{ns}_{pod}_{uid}")).join(container);
            fs::create_dir_all(&d).unwrap();
            BufWriter::with_capacity(16 << 10, File::create(d.join("0.log")).unwrap())
        })
        .collect();
    let mut total = 0u64;
    let mut line = String::with_capacity(line_bytes + 1);
    for n in 0..lines {
        line.clear();
        let stream = if n % 5 == 0 { "stderr" } else { "stdout" };
        use std::fmt::Write as _;
        let _ = write!(
            line,
            "2026-12-02T07:{:02}:{:02}.{:09}Z {stream} F level=info seq={n} msg=\"request served\" path=/api/v1/items/{} ",
            (n / 60_000_000) % 60,
            (n / 1_000_000) % 60,
            n % 1_000_000_000,
            n % 977
        );
        while line.len() < line_bytes - 1 {
            line.push((b'a' + (line.len() % 26) as u8) as char);
        }
        line.push('\n');
        total += line.len() as u64;
        outs[(n % files) as usize].write_all(line.as_bytes()).unwrap();
        flat_out.write_all(line.as_bytes()).unwrap();
    }
    for mut o in outs {
        o.flush().unwrap();
    }
    flat_out.flush().unwrap();
    (root, flat, total)
}

fn create_topic(topic: &str) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let kafka = sluice_integration_tests::kafka().await;
        kafka.create_topic(topic, 3).await;
    });
}

fn proc_cpu_secs(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// CPU seconds per thread name (`read-path`, `kafka-poll`, `rdk:broker…`, …).
fn thread_cpu(pid: u32) -> String {
    let mut by_name: std::collections::BTreeMap<String, f64> = Default::default();
    for t in fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let tid: u32 = t.file_name().to_string_lossy().parse().unwrap_or(0);
        let name = fs::read_to_string(t.path().join("comm")).unwrap_or_default().trim().to_owned();
        let stat = fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
            + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        let _ = tid;
        *by_name.entry(name).or_default() += ticks / 100.0;
    }
    by_name.iter().filter(|(_, v)| **v > 0.0).map(|(k, v)| format!("{k} {v:.2}")).collect::<Vec<_>>().join(", ")
}

fn proc_hwm_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmHWM:")
}

/// A `kB` field of `/proc/<pid>/status` (`VmHWM:`, `RssAnon:`, `RssFile:`), 0 when absent.
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn metric(port: u16, series: &str) -> Option<f64> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(s, "GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
}

impl Bench {
    fn kcat(&self, round: usize) -> Figures {
        self.kcat_file(&format!("bench-kcat-{}-{round}", std::process::id()), &self.flat, &[])
    }

    /// kcat producing `file` (one message per line) to a new topic; `extra` are more kcat arguments.
    fn kcat_file(&self, topic: &str, file: &Path, extra: &[&str]) -> Figures {
        create_topic(topic);
        let start = Instant::now();
        let out = Command::new("/usr/bin/time")
            .args(["-f", "%e %U %S %M", "kcat", "-P", "-b", &self.bootstrap, "-t", topic])
            .args(["-X", &format!("compression.type={}", self.compression), "-X", "acks=all"])
            .args(["-X", "enable.idempotence=true", "-X", "linger.ms=10", "-X", "batch.size=1048576"])
            .args(["-X", "queue.buffering.max.messages=1000000"])
            .args(extra)
            .arg("-l")
            .arg(file)
            .stderr(Stdio::piped())
            .output()
            .expect("kcat (apt-get install kcat)");
        let secs = start.elapsed().as_secs_f64();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "kcat failed: {err}");
        let last = err.lines().last().unwrap_or_default();
        let v: Vec<f64> = last.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        assert_eq!(v.len(), 4, "unexpected /usr/bin/time output: {err}");
        Figures { secs, cpu: v[1] + v[2], rss_kib: v[3] as u64 }
    }

    /// kcat producing the shipper's own messages: the documents the shipper published in `round`
    /// (read back with `kcat -C`), with their keys and four headers of the contract's sizes. What
    /// librdkafka and the codec cost for the Kafka message contract's bytes and message count, with
    /// no reading, parsing or enrichment: the bound a one-document-per-message shipper works under.
    fn kcat_documents(&self, round: usize) -> Figures {
        let docs = self.work.join("documents.tsv");
        if !docs.exists() {
            let from = format!("bench-shipper-{}-{round}", std::process::id());
            let out = File::create(&docs).unwrap();
            let status = Command::new("kcat")
                .args(["-C", "-b", &self.bootstrap, "-t", &from, "-e", "-q", "-f", "%k\t%s\n"])
                .stdout(out)
                .status()
                .expect("kcat -C");
            assert!(status.success(), "kcat -C of {from} failed");
        }
        let topic = format!("bench-kcat-docs-{}-{round}", std::process::id());
        let headers = [
            "-K",
            "\t",
            "-H",
            "sluice.id=0f3c9a1e2b4d5f60718293a4b5c6d7e8-104857600",
            "-H",
            "sluice.ts=2026-12-03T12:00:00.123456789Z",
            "-H",
            "sluice.ns=bench-ns1",
            "-H",
            "sluice.v=1",
        ];
        self.kcat_file(&topic, &docs, &headers)
    }

    fn shipper(&self, round: usize) -> Figures {
        let topic = format!("bench-shipper-{}-{round}", std::process::id());
        create_topic(&topic);
        let ckpt = self.work.join(format!("ckpt-{round}"));
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let start = Instant::now();
        let mut child = Command::new(BIN)
            .args(["--log-level", "warn"])
            .env("SLUICE_NODE_NAME", "bench-node")
            .env("SLUICE_OUTPUT", "kafka")
            .env("SLUICE_KAFKA__BROKERS", &self.bootstrap)
            .env("SLUICE_KAFKA__TOPIC", &topic)
            .env("SLUICE_KAFKA__COMPRESSION", &self.compression)
            .env("SLUICE_KAFKA__MESSAGE_FORMAT", &self.format)
            .env("SLUICE_KUBERNETES__ENABLED", self.kubeconfig.is_some().to_string())
            .env("SLUICE_KUBERNETES__KUBECONFIG", self.kubeconfig.clone().unwrap_or_default())
            .env("SLUICE_PATHS__ROOT", &self.root)
            .env("SLUICE_PATHS__SYMLINK_DIRS", "")
            .env("SLUICE_CHECKPOINT__DIR", &ckpt)
            .env("SLUICE_METRICS__LISTEN", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .spawn()
            .expect("sluice-shipper");
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(600);
        // Peak resident memory split into heap and other anonymous memory (`RssAnon`) and mapped
        // files, mostly the binary's code (`RssFile`), sampled with each poll: what the allocator and
        // the in-flight records cost apart from code pages.
        let (mut anon_kib, mut file_kib) = (0, 0);
        let (secs, cpu, rss_kib) = loop {
            anon_kib = anon_kib.max(proc_status_kib(pid, "RssAnon:"));
            file_kib = file_kib.max(proc_status_kib(pid, "RssFile:"));
            let delivered = metric(port, "sluice_shipper_kafka_delivered_records_total").unwrap_or(0.0);
            if delivered as u64 >= self.lines {
                println!("  shipper threads (CPU s): {}", thread_cpu(pid));
                println!(
                    "  shipper peak RssAnon {:.1} MiB, peak RssFile {:.1} MiB (sampled every 20 ms)",
                    anon_kib as f64 / 1024.0,
                    file_kib as f64 / 1024.0
                );
                if self.kubeconfig.is_some() {
                    let hits = metric(port, "sluice_shipper_enrich_hits_total").unwrap_or(0.0);
                    println!("  records enriched from the pod watch: {hits}");
                }
                break (start.elapsed().as_secs_f64(), proc_cpu_secs(pid), proc_hwm_kib(pid));
            }
            assert!(Instant::now() < deadline, "shipper did not deliver {} lines in 600 s", self.lines);
            assert!(child.try_wait().unwrap().is_none(), "shipper exited early");
            std::thread::sleep(Duration::from_millis(20));
        };
        let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        let _ = child.wait();
        let _ = fs::remove_dir_all(&ckpt);
        Figures { secs, cpu, rss_kib }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let Ok(bootstrap) = std::env::var("KAFKA_BOOTSTRAP_SERVERS") else {
        eprintln!("set KAFKA_BOOTSTRAP_SERVERS (./dev services up prints it) to run this benchmark");
        std::process::exit(2);
    };
    // The comparison needs kcat and GNU time; say so before minutes of setup rather than panic later.
    for (tool, package) in [("kcat", "kcat"), ("/usr/bin/time", "time")] {
        if Command::new(tool).arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
            eprintln!(
                "`{tool}` is not installed (apt-get install {package}); this benchmark runs it beside the shipper"
            );
            std::process::exit(2);
        }
    }
    let lines: u64 = env_or("LINES", 1_000_000);
    let files: u64 = env_or("FILES", 500);
    let line_bytes: usize = env_or("LINE_BYTES", 200);
    let rounds: usize = env_or("ROUNDS", 3);
    let compression: String = env_or("COMPRESSION", "zstd".to_owned());
    let format: String = env_or("MESSAGE_FORMAT", "v2".to_owned());
    let pod_count: usize = env_or("PODS", 110);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    // Enrichment on: a real kube-apiserver with `PODS` pods on the shipper's node (kubelet's default
    // maximum is 110), when `./dev k8s build` has cached the binaries; `ENRICH=0` turns it off.
    let plane = if env_or("ENRICH", 1) == 1 && sluice_integration_tests::kube::bin_dir().join("kube-apiserver").exists()
    {
        Some(rt.block_on(sluice_integration_tests::kube::ControlPlane::start()))
    } else {
        println!("enrichment off (ENRICH=0, or no control plane: ./dev k8s build)");
        None
    };
    let pods: Vec<PodRef> = match &plane {
        Some(plane) => rt.block_on(async {
            use sluice_integration_tests::kube::TestPod;
            for n in 0..10 {
                plane.create_namespace(&format!("bench-ns{n}")).await;
            }
            let mut out = Vec::new();
            let per_pod = files.div_ceil(pod_count as u64) as usize;
            for i in 0..pod_count {
                let ns = format!("bench-ns{}", i % 10);
                let name = format!("web-{i}");
                let mut p = TestPod::new(&ns, &name, "bench-node")
                    .label("app.kubernetes.io/name", "web")
                    .label("tier", "frontend")
                    .owner("ReplicaSet", "web-7d4b9c8f6d");
                for c in 0..per_pod {
                    p = p.container(&format!("c{c}"), "registry.example/web:1.2.3");
                }
                let pod = plane.create_pod(&p).await;
                out.push((ns, name, pod.metadata.uid.unwrap_or_default()));
            }
            out
        }),
        None => {
            (0..pod_count).map(|i| (format!("bench-ns{}", i % 10), format!("web-{i}"), format!("uid-{i:08}"))).collect()
        }
    };
    let kubeconfig = plane.as_ref().map(|p| p.kubeconfig(sluice_integration_tests::kube::KubeUser::Shipper));
    let work = tempfile::tempdir().unwrap();
    let (root, flat, bytes) = generate(work.path(), lines, files, line_bytes, &pods);
    println!(
        "{lines} CRI lines of {line_bytes} B in {files} files ({:.1} MB), compression {compression}, acks=all",
        bytes as f64 / 1e6
    );
    println!("{} pods in the pod store: enrichment {}", pods.len(), if kubeconfig.is_some() { "on" } else { "off" });
    let bench =
        Bench { bootstrap, kubeconfig, lines, bytes, root, flat, work: work.path().to_owned(), compression, format };
    // kcat reads one message per line: only v1 messages (one document each) can be replayed by it.
    let replay = bench.format == "v1";
    let (mut k, mut s, mut d) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternate the order so neither always runs on a warmer broker.
        let (a, b) = if round % 2 == 0 {
            let a = bench.kcat(round);
            (a, bench.shipper(round))
        } else {
            let b = bench.shipper(round);
            (bench.kcat(round), b)
        };
        let c = replay.then(|| bench.kcat_documents(round));
        let rows = [("kcat -P", Some(a)), ("sluice-shipper", Some(b)), ("kcat -P documents", c)];
        for (name, f) in rows.into_iter().filter_map(|(n, f)| Some((n, f?))) {
            println!(
                "round {round} {name:>17}: {:>9.0} lines/s {:>6.1} MB/s  cpu {:>5.2} s ({:.2} s/100 MB)  peak RSS {:>6.1} MiB",
                bench.lines as f64 / f.secs,
                bench.bytes as f64 / 1e6 / f.secs,
                f.cpu,
                f.cpu / (bench.bytes as f64 / 1e8),
                f.rss_kib as f64 / 1024.0
            );
        }
        k.push(a);
        s.push(b);
        d.extend(c);
    }
    let rate = |v: &[Figures]| median(v.iter().map(|f| bench.lines as f64 / f.secs).collect());
    let cpu = |v: &[Figures]| median(v.iter().map(|f| f.cpu / (bench.bytes as f64 / 1e8)).collect());
    let rss = |v: &[Figures]| median(v.iter().map(|f| f.rss_kib as f64 / 1024.0).collect());
    println!(
        "median: kcat {:.0} lines/s, shipper {:.0} lines/s = {:.0} % of kcat; CPU s/100 MB kcat {:.2}, shipper {:.2}; peak RSS kcat {:.1} MiB, shipper {:.1} MiB",
        rate(&k),
        rate(&s),
        100.0 * rate(&s) / rate(&k),
        cpu(&k),
        cpu(&s),
        rss(&k),
        rss(&s)
    );
    if d.is_empty() {
        return;
    }
    println!(
        "median: kcat producing the shipper's documents (keys, 4 headers) {:.0} lines/s = {:.0} % of kcat, CPU s/100 MB {:.2}, peak RSS {:.1} MiB",
        rate(&d),
        100.0 * rate(&d) / rate(&k),
        cpu(&d),
        rss(&d)
    );
}

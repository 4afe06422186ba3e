//! Parse + reassemble + serialise throughput on one core: 200-byte CRI lines (some split into P/F
//! partials) turned into schema v1 JSON records with ids, in a reused output buffer.
//!
//! `cargo bench -p sluice-shipper --bench parse`
//!
//! Besides the headline (`parse_reassemble_serialise`, path metadata, the issue #16 figure) the
//! bench runs the same input stopped after each stage, so that differences give the cost per stage:
//! - `stage/split_parse`: line splitting (memchr) + the CRI parser only;
//! - `stage/reassemble`: + partial-line reassembly and timestamp checks ([`LineProcessor`]), no record;
//! - `stage/encode_path_metadata`: + the record (id, document) with path metadata (= the headline);
//! - `stage/encode_enriched`: + the record with pod-watch metadata (labels, owner, container image).
//!
//! For instruction counts (stable on a shared machine, wall time is not), `PARSE_ITERS=N` skips
//! criterion and runs one stage `N` times (`PARSE_STAGE`, default `encode_path_metadata`) inside
//! `measured`, which callgrind can count alone:
//!
//! ```sh
//! PARSE_ITERS=20 PARSE_STAGE=encode_path_metadata valgrind --tool=callgrind \
//!   --toggle-collect='*measured*' target/release/deps/parse-<hash>
//! ```
//! Instructions per line = the total `Ir` / (20 × 10,000).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use memchr::memchr;
use sluice_shipper::config::Format;
use sluice_shipper::enrich::{ContainerInfo, OwnerInfo, PodInfo};
use sluice_shipper::lines::{Budgets, LineProcessor, Output};
use sluice_shipper::parse::{ParseError, parse_line};
use sluice_shipper::reassemble::Message;
use sluice_shipper::record::{FileMeta, GenerationId, RecordBuilder};

const LINES: usize = 10_000;

/// 200-byte CRI lines; every 20th line is split into a P and an F fragment.
fn input() -> Vec<u8> {
    let mut out = Vec::with_capacity(LINES * 210);
    for i in 0..LINES {
        let ts = format!("2026-11-27T00:17:{:02}.{:09}Z", i % 60, i * 1000);
        let stream = if i % 5 == 0 { "stderr" } else { "stdout" };
        let head = format!("{ts} {stream} F ");
        let mut content = format!("GET /api/v1/items/{i} HTTP/1.1 200 user=\"alice\" took=12ms ");
        while head.len() + content.len() < 199 {
            content.push((b'a' + (content.len() % 26) as u8) as char);
        }
        if i % 20 == 0 {
            let (a, b) = content.split_at(60);
            out.extend_from_slice(format!("{ts} {stream} P {a}\n{ts} {stream} F {b}\n").as_bytes());
        } else {
            out.extend_from_slice(head.as_bytes());
            out.extend_from_slice(content.as_bytes());
            out.push(b'\n');
        }
    }
    out
}

/// The stage a run stops after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    SplitParse,
    Reassemble,
    EncodePathMetadata,
    EncodeEnriched,
}

impl Stage {
    const ALL: [Stage; 4] = [Stage::SplitParse, Stage::Reassemble, Stage::EncodePathMetadata, Stage::EncodeEnriched];

    fn name(self) -> &'static str {
        match self {
            Stage::SplitParse => "split_parse",
            Stage::Reassemble => "reassemble",
            Stage::EncodePathMetadata => "encode_path_metadata",
            Stage::EncodeEnriched => "encode_enriched",
        }
    }
}

struct Serialise<'a> {
    builder: Option<&'a mut RecordBuilder>,
    meta: &'a FileMeta,
    generation: GenerationId,
    bytes: usize,
    records: usize,
}

impl Output for Serialise<'_> {
    fn message(&mut self, m: Message<'_>) {
        match self.builder.as_deref_mut() {
            Some(b) => {
                let rec = b.build(self.meta, self.generation, &m);
                self.bytes += rec.value.len() + rec.id.len();
            }
            None => self.bytes += black_box(&m).content.len(),
        }
        self.records += 1;
    }
    fn line_done(&mut self, _: u64) {}
    fn parse_error(&mut self, _: ParseError) {}
}

fn split_parse(data: &[u8]) -> usize {
    let (mut i, mut n) = (0, 0);
    while let Some(nl) = memchr(b'\n', &data[i..]) {
        let f = parse_line(Format::Cri, &data[i..i + nl]).expect("bench lines parse");
        n += black_box(&f).content.len();
        i += nl + 1;
    }
    n
}

fn run(data: &[u8], builder: Option<&mut RecordBuilder>, meta: &FileMeta) -> usize {
    let generation = GenerationId::derive(&meta.source, b"first line\n");
    let mut p = LineProcessor::new(Format::Auto, 1 << 20, Duration::from_secs(5), None);
    let mut budgets = Budgets::new(8 << 20);
    let mut out = Serialise { builder, meta, generation, bytes: 0, records: 0 };
    let used = p.chunk(data, 0, false, Instant::now(), &mut budgets, &mut out);
    assert_eq!(used, data.len());
    assert_eq!(out.records, LINES);
    out.bytes
}

fn meta(enriched: bool) -> FileMeta {
    let mut meta =
        FileMeta::new(Path::new("/var/log/pods/shop_web-0_0d6c3f5e-1b2a-4c1d-9e8f-2a3b4c5d6e7f/nginx/0.log"), "node-1");
    if enriched {
        let labels: BTreeMap<String, String> = [
            ("app", "web"),
            ("app_kubernetes_io/name", "shop"),
            ("app_kubernetes_io/instance", "shop-prod"),
            ("pod-template-hash", "7d9f8c6b5"),
            ("team", "payments"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        meta.pod_info = Some(Arc::new(PodInfo {
            namespace: "shop".into(),
            name: "web-0".into(),
            uid: "0d6c3f5e-1b2a-4c1d-9e8f-2a3b4c5d6e7f".into(),
            api_uid: "0d6c3f5e-1b2a-4c1d-9e8f-2a3b4c5d6e7f".into(),
            node: "node-1".into(),
            labels,
            owner: Some(OwnerInfo { kind: "Deployment".into(), name: "web".into() }),
            containers: vec![ContainerInfo {
                name: "nginx".into(),
                image: Some("nginx:1.27".into()),
                image_id: Some("docker.io/library/nginx@sha256:4f2a9c0d1e2f3a4b5c6d7e8f9a0b1c2d".into()),
                container_id: Some("containerd://4f2a9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f".into()),
                last_container_id: None,
                restart_count: Some(0),
            }],
            ..Default::default()
        }));
    }
    meta
}

/// One run of `stage` over `data` (the function callgrind counts with `--toggle-collect`).
#[inline(never)]
fn measured(stage: Stage, data: &[u8], builder: &mut RecordBuilder, plain: &FileMeta, enriched: &FileMeta) -> usize {
    match stage {
        Stage::SplitParse => split_parse(data),
        Stage::Reassemble => run(data, None, plain),
        Stage::EncodePathMetadata => run(data, Some(builder), plain),
        Stage::EncodeEnriched => run(data, Some(builder), enriched),
    }
}

fn bench(c: &mut Criterion) {
    let data = input();
    let (plain, enriched) = (meta(false), meta(true));
    let mut builder = RecordBuilder::default();
    let mut g = c.benchmark_group("cri_200B");
    g.throughput(Throughput::Elements(LINES as u64));
    g.bench_function("parse_reassemble_serialise/lines", |b| {
        b.iter(|| black_box(run(&data, Some(&mut builder), &plain)))
    });
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("parse_reassemble_serialise/bytes", |b| {
        b.iter(|| black_box(run(&data, Some(&mut builder), &plain)))
    });
    for stage in Stage::ALL {
        g.bench_function(format!("stage/{}", stage.name()), |b| {
            b.iter(|| black_box(measured(stage, &data, &mut builder, &plain, &enriched)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);

fn main() {
    if let Some(iters) = std::env::var("PARSE_ITERS").ok().and_then(|v| v.parse::<usize>().ok()) {
        let name = std::env::var("PARSE_STAGE").unwrap_or_else(|_| "encode_path_metadata".into());
        let stage = Stage::ALL.into_iter().find(|s| s.name() == name).expect("PARSE_STAGE names a stage");
        let data = input();
        let (plain, enriched) = (meta(false), meta(true));
        let mut builder = RecordBuilder::default();
        let start = Instant::now();
        let mut sum = 0;
        for _ in 0..iters {
            sum += measured(stage, black_box(&data), &mut builder, &plain, &enriched);
        }
        let el = start.elapsed();
        let per_line = el.as_nanos() as f64 / (iters * LINES) as f64;
        println!(
            "{}: {iters} × {LINES} lines in {el:?}: {per_line:.1} ns/line, {:.0} MiB/s ({sum} bytes out)",
            stage.name(),
            (iters * data.len()) as f64 / el.as_secs_f64() / (1 << 20) as f64
        );
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

//! Parse + reassemble + serialise throughput on one core: 200-byte CRI lines (some split into P/F
//! partials) turned into schema v1 JSON records with ids, in a reused output buffer.
//!
//! `cargo bench -p sluice-shipper --bench parse`

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice_shipper::config::Format;
use sluice_shipper::lines::{Budgets, LineProcessor, Output};
use sluice_shipper::parse::ParseError;
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

struct Serialise<'a> {
    builder: &'a mut RecordBuilder,
    meta: &'a FileMeta,
    generation: GenerationId,
    bytes: usize,
    records: usize,
}

impl Output for Serialise<'_> {
    fn message(&mut self, m: Message<'_>) {
        let rec = self.builder.build(self.meta, self.generation, &m);
        self.bytes += rec.value.len() + rec.id.len();
        self.records += 1;
    }
    fn line_done(&mut self, _: u64) {}
    fn parse_error(&mut self, _: ParseError) {}
}

fn run(data: &[u8], builder: &mut RecordBuilder, meta: &FileMeta) -> usize {
    let generation = GenerationId::derive(&meta.source, b"first line\n");
    let mut p = LineProcessor::new(Format::Auto, 1 << 20, Duration::from_secs(5), None);
    let mut budgets = Budgets::new(8 << 20);
    let mut out = Serialise { builder, meta, generation, bytes: 0, records: 0 };
    let used = p.chunk(data, 0, false, Instant::now(), &mut budgets, &mut out);
    assert_eq!(used, data.len());
    assert_eq!(out.records, LINES);
    out.bytes
}

fn bench(c: &mut Criterion) {
    let data = input();
    let meta =
        FileMeta::new(Path::new("/var/log/pods/shop_web-0_0d6c3f5e-1b2a-4c1d-9e8f-2a3b4c5d6e7f/nginx/0.log"), "node-1");
    let mut builder = RecordBuilder::default();
    let mut g = c.benchmark_group("cri_200B");
    g.throughput(Throughput::Elements(LINES as u64));
    g.bench_function("parse_reassemble_serialise/lines", |b| b.iter(|| black_box(run(&data, &mut builder, &meta))));
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("parse_reassemble_serialise/bytes", |b| b.iter(|| black_box(run(&data, &mut builder, &meta))));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

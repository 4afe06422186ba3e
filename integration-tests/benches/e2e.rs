//! End-to-end performance of Sluice (issue 11), written to BENCHMARKS.md:
//!
//! 1. **Maximum sustained rate**: `sluice loadgen` → `sluice-shipper` → Kafka → `sluice-indexer` →
//!    Elasticsearch at increasing rates, `BENCH_STEP_SECS` each; a step is sustained when loadgen
//!    kept its rate and the backlog (written − searchable) did not grow over the second half of it.
//! 2. **Latency** write → searchable at 25 %, 50 % and 75 % of that rate: loadgen stamps every line
//!    with its write time (the CRI / docker timestamp, `@timestamp`); a probe polls Elasticsearch
//!    every 100 ms for sampled sequence tokens (`#sl/<run>/<stream>/<seq>`, every 25th of each
//!    stdout stream) and takes `found − @timestamp`. p50 / p90 / p99 / max.
//! 3. **Scaling**: a backlog of `BENCH_SCALE_DOCS` records in a 6-partition topic, drained by 1, 2
//!    and 3 indexer replicas (fresh group and index each), docs/s from 5 % to 95 % settled; and the
//!    raw `_bulk` ceiling on the same documents in the same run (a plain loader, same action lines,
//!    same bulk size, concurrency 4 — the indexer issue's method).
//! 4. **A fault**: a private Elasticsearch stopped for 30 s under half the maximum rate: documents
//!    indexed per second and Kafka lag over time.
//!
//! PNG plots (plotters, bitmap backend, DejaVu Sans through ab_glyph; without that font they are
//! drawn without text) go to `BENCH_OUT` (default `docs/img/`); the figures are printed as Markdown.
//!
//! ```sh
//! cargo build --release --workspace --bins
//! KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 ELASTICSEARCH_URL=http://127.0.0.1:9200 \
//!   cargo bench -p sluice-integration-tests --bench e2e
//! ```

#[path = "../tests/indexer_support/mod.rs"]
mod indexer_support;
#[path = "../tests/matrix/mod.rs"]
mod matrix;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use matrix::Pipeline;
use plotters::prelude::*;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use serde_json::{Value, json};
use sluice_integration_tests::{Flavor, elasticsearch, kafka, search_dedicated, unique_name};

fn env_u64(key: &str, default: u64) -> u64 {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Tunes a pipeline for speed rather than for fault tests: bigger batches, refresh 1 s.
fn bench_pipeline(row: &'static str, brokers: &str, search: &sluice_integration_tests::Search) -> Pipeline {
    let mut p = Pipeline::new(row, brokers, search, &[], "limits:\n  inflight_bytes: 8MiB\n");
    p.indexer_set("SLUICE_BATCH__MAX_DOCS", "10000");
    p.indexer_set("SLUICE_BATCH__LINGER", "200ms");
    p.indexer_set("SLUICE_ELASTICSEARCH__TEMPLATE__REFRESH_INTERVAL", "1s");
    p.indexer_set("SLUICE_ELASTICSEARCH__REQUEST_TIMEOUT", "60s");
    p
}

/// Counts the documents of one loadgen run (its pods) in the pipeline's indices.
async fn run_count(p: &Pipeline, manifest: &Path) -> Option<u64> {
    let m: Value = serde_json::from_slice(&std::fs::read(manifest).ok()?).ok()?;
    let uids: Vec<Value> = m["containers"].as_array()?.iter().map(|c| c["uid"].clone()).collect();
    let body = json!({"query": {"terms": {"kubernetes.pod.uid": uids}}});
    let client = reqwest::Client::new();
    let _ = client.post(format!("{}/{}/_refresh", p.search.url, p.names.indices())).send().await;
    let r = client.post(format!("{}/{}/_count", p.search.url, p.names.indices())).json(&body).send().await.ok()?;
    r.json::<Value>().await.ok()?["count"].as_u64()
}

struct Step {
    rate: u64,
    achieved: f64,
    backlog_mid: i64,
    backlog_end: i64,
    sustained: bool,
}

/// Phase 1: rates doubling from `BENCH_RAMP_START` until a step is not sustained.
async fn ramp(p: &Pipeline) -> Vec<Step> {
    let step = Duration::from_secs(env_u64("BENCH_STEP_SECS", 20));
    let mut rate = env_u64("BENCH_RAMP_START", 1000);
    let mut steps = Vec::new();
    loop {
        let manifest = p.tmp.path().join(format!("ramp-{rate}.json"));
        let mut lg = p.loadgen_with_manifest(rate as u32, 1 << 20, &manifest, &[]);
        let start = Instant::now();
        tokio::time::sleep(step / 2).await;
        let mid_written = written(&manifest);
        let backlog_mid = mid_written as i64 - run_count(p, &manifest).await.unwrap_or(0) as i64;
        tokio::time::sleep(step.saturating_sub(start.elapsed())).await;
        let end_written = written(&manifest);
        let backlog_end = end_written as i64 - run_count(p, &manifest).await.unwrap_or(0) as i64;
        let achieved = end_written as f64 / start.elapsed().as_secs_f64();
        lg.stop();
        // Not growing: at most one second of the rate more backlog at the end than mid-step.
        let sustained = achieved >= 0.9 * rate as f64 && backlog_end - backlog_mid <= rate as i64;
        eprintln!(
            "[e2e] ramp {rate}/s: achieved {achieved:.0}/s, backlog mid {backlog_mid} end {backlog_end}, sustained {sustained} (load {})",
            load()
        );
        steps.push(Step { rate, achieved, backlog_mid, backlog_end, sustained });
        // Drain before the next step.
        let deadline = Instant::now() + Duration::from_secs(300);
        while run_count(p, &manifest).await.unwrap_or(0) < written(&manifest) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if !sustained || rate >= env_u64("BENCH_RAMP_MAX", 64_000) {
            return steps;
        }
        rate *= 2;
    }
}

fn written(manifest: &Path) -> u64 {
    std::fs::read(manifest)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|m| m["totals"]["records"].as_u64())
        .unwrap_or(0)
}

/// Phase 2: latency samples (seconds) at `rate` for `secs`.
async fn latency(p: &Pipeline, rate: u64, secs: u64) -> Vec<f64> {
    let manifest = p.tmp.path().join(format!("latency-{rate}.json"));
    let mut lg = p.loadgen_with_manifest(rate as u32, 1 << 20, &manifest, &[]);
    // The manifest lists every stream id from the start.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (run, streams) = loop {
        if let Some(m) = std::fs::read(&manifest).ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok()) {
            let streams: Vec<u64> = m["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|c| c["logs"].as_array().cloned().unwrap_or_default())
                .filter_map(|l| l["streams"]["stdout"]["id"].as_u64())
                .collect();
            if !streams.is_empty() {
                break (m["run_id"].as_str().unwrap_or_default().to_owned(), streams);
            }
        }
        assert!(Instant::now() < deadline, "no loadgen manifest at {}", manifest.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Every `every`-th line of each stdout stream is a sample, ~10 per second per stream. Each poll
    // asks for the next `WINDOW` unseen samples of every stream at once, so a sample is timed at the
    // first poll that can see it even when the pipeline runs ahead of the probe (an earlier probe
    // asked for one sample per stream per poll and fell behind above ~250 lines/s per stream,
    // timing its own lag).
    const WINDOW: u64 = 48;
    let every = (rate / streams.len().max(1) as u64 / 10).max(25);
    let mut next: Vec<u64> = vec![every; streams.len()];
    let mut seen: Vec<std::collections::BTreeSet<u64>> = vec![Default::default(); streams.len()];
    let mut samples = Vec::new();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    while Instant::now() < end + Duration::from_secs(5) {
        let mut should = Vec::new();
        for (i, s) in streams.iter().enumerate() {
            let wanted = (0..).map(|k| next[i] + k * every).filter(|q| !seen[i].contains(q)).take(WINDOW as usize);
            should.extend(wanted.map(|seq| json!({"match_phrase": {"message": format!("sl {run} {s} {seq}")}})));
        }
        let body =
            json!({"size": should.len(), "_source": ["@timestamp", "message"], "query": {"bool": {"should": should}}});
        let found_at = time::OffsetDateTime::now_utc();
        let answer = client.post(format!("{}/{}/_search", p.search.url, p.names.indices())).json(&body).send().await;
        if let Ok(answer) = answer
            && let Ok(v) = answer.json::<Value>().await
        {
            for hit in v["hits"]["hits"].as_array().into_iter().flatten() {
                let message = hit["_source"]["message"].as_str().unwrap_or_default();
                let Some(ts) = hit["_source"]["@timestamp"].as_str() else { continue };
                let Ok(written) = time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
                else {
                    continue;
                };
                for (i, s) in streams.iter().enumerate() {
                    let prefix = format!("#sl/{run}/{s}/");
                    let Some(at) = message.find(&prefix) else { continue };
                    let digits: String =
                        message[at + prefix.len()..].chars().take_while(|c| c.is_ascii_digit()).collect();
                    let Ok(seq) = digits.parse::<u64>() else { continue };
                    if seq >= next[i] && seq % every == 0 && seen[i].insert(seq) {
                        samples.push((found_at - written).as_seconds_f64());
                    }
                }
            }
        }
        for i in 0..streams.len() {
            while seen[i].remove(&next[i]) {
                next[i] += every;
            }
        }
        if Instant::now() > end && lg.running() {
            lg.stop();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if lg.running() {
        lg.stop();
    }
    samples
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Phase 3: indexer docs/s with `replicas` replicas on the backlog of `p`'s topic.
async fn drain_with(p: &Pipeline, replicas: usize, total: u64) -> (f64, f64) {
    let names = indexer_support::Names::new(&format!("e2e-scale{replicas}"));
    let mut env = p.indexer_env.clone();
    indexer_support::set(&mut env, "SLUICE_KAFKA__GROUP_ID", &names.group);
    indexer_support::set(&mut env, "SLUICE_ELASTICSEARCH__INDEX", &format!("{}-%Y.%m.%d", names.index));
    indexer_support::set(&mut env, "SLUICE_ELASTICSEARCH__TEMPLATE__NAME", &names.template);
    indexer_support::set(&mut env, "SLUICE_ELASTICSEARCH__TEMPLATE__REFRESH_INTERVAL", "30s");
    indexer_support::setup(&env);
    let indexers: Vec<_> =
        (0..replicas).map(|i| indexer_support::Indexer::spawn(&env, &format!("e2e-scale{replicas}-{i}"))).collect();
    let mut marks: Vec<(Instant, f64)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let n: f64 = indexers
            .iter()
            .map(|i| {
                i.metric_sum("sluice_indexer_docs_total{outcome=\"indexed\"}")
                    + i.metric_sum("sluice_indexer_docs_total{outcome=\"duplicate\"}")
            })
            .sum();
        marks.push((Instant::now(), n));
        if n >= total as f64 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rate = window_rate(&marks, total as f64);
    let cpu: f64 = indexers.iter().map(|i| cpu_seconds(i.pid())).sum();
    drop(indexers);
    let client = reqwest::Client::new();
    let _ = client.delete(format!("{}/{}", p.search.url, names.indices())).send().await;
    (rate, cpu)
}

/// Docs/s between 5 % and 95 % of `total` settled.
fn window_rate(marks: &[(Instant, f64)], total: f64) -> f64 {
    let at = |q: f64| marks.iter().find(|(_, n)| *n >= q * total).map(|m| m.0);
    match (at(0.05), at(0.95)) {
        (Some(a), Some(b)) if b > a => 0.9 * total / (b - a).as_secs_f64(),
        _ => f64::NAN,
    }
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(") ").next().unwrap_or_default().split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// The raw `_bulk` ceiling: the topic's documents as pre-built `create` bodies, concurrency 4.
async fn bulk_ceiling(p: &Pipeline, total: u64) -> f64 {
    let config = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &p.brokers)
        .set("group.id", unique_name("e2e-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .clone();
    let topic = p.names.topic.clone();
    // Matches the pipeline's template (`<index>-*.*.*`): the same mapping as the indexer's indices.
    let index = format!("{}-bulk.0.0", p.names.index);
    let target = index.clone();
    let bodies = tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create().expect("consumer");
        consumer.subscribe(&[&topic]).expect("subscribe");
        let (mut bodies, mut body, mut docs, mut seen) = (Vec::new(), String::new(), 0, 0u64);
        let deadline = Instant::now() + Duration::from_secs(300);
        while seen < total && Instant::now() < deadline {
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(500)) else { continue };
            let id = m
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == "sluice.id").and_then(|h| h.value))
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            body.push_str(&format!("{{\"create\":{{\"_index\":\"{target}\",\"_id\":\"{id}\"}}}}\n"));
            body.push_str(&String::from_utf8_lossy(m.payload().unwrap_or_default()).replace('\n', " "));
            body.push('\n');
            docs += 1;
            seen += 1;
            if docs == 10_000 || body.len() >= 5 << 20 {
                bodies.push((std::mem::take(&mut body), docs));
                docs = 0;
            }
        }
        if docs > 0 {
            bodies.push((body, docs));
        }
        bodies
    })
    .await
    .unwrap();
    let total: u64 = bodies.iter().map(|b| b.1).sum();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap();
    let queue = std::sync::Arc::new(std::sync::Mutex::new(bodies.into_iter()));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let url = format!("{}/_bulk?filter_path=errors,items.*.error", p.search.url);
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (client, queue, done, url) = (client.clone(), queue.clone(), done.clone(), url.clone());
            tokio::spawn(async move {
                loop {
                    let next = queue.lock().unwrap().next();
                    let Some((body, docs)) = next else { return };
                    let _ = client.post(&url).header("content-type", "application/x-ndjson").body(body).send().await;
                    done.fetch_add(docs, std::sync::atomic::Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut marks = Vec::new();
    while !workers.iter().all(|w| w.is_finished()) {
        marks.push((Instant::now(), done.load(std::sync::atomic::Ordering::Relaxed) as f64));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    marks.push((Instant::now(), done.load(std::sync::atomic::Ordering::Relaxed) as f64));
    let _ = client.delete(format!("{}/{index}", p.search.url)).send().await;
    window_rate(&marks, total as f64)
}

/// Phase 4: (seconds since start, docs/s, lag) every second around a 30 s Elasticsearch outage.
async fn fault_timeline(brokers: &str, rate: u64) -> (Vec<(f64, f64, f64)>, (f64, f64)) {
    let search = search_dedicated(Flavor::Elasticsearch, &[]).await;
    let p = bench_pipeline("e2e-fault", brokers, &search);
    p.setup();
    let indexer = p.indexer("a");
    let shipper = p.shipper();
    let mut lg = p.loadgen(rate as u32, 1 << 20, &[]);
    let start = Instant::now();
    let mut points = Vec::new();
    let mut last = (0.0, 0u64);
    let (mut down_at, mut up_at) = (f64::NAN, f64::NAN);
    let mut stopped_writing = None;
    loop {
        let t = start.elapsed().as_secs_f64();
        if down_at.is_nan() && t >= 20.0 {
            search.stop().await;
            down_at = start.elapsed().as_secs_f64();
        }
        if !down_at.is_nan() && up_at.is_nan() && start.elapsed().as_secs_f64() >= down_at + 30.0 {
            search.start().await;
            up_at = start.elapsed().as_secs_f64();
        }
        let count = p.es_count().await;
        let lag = p.kafka_state().await.map_or(f64::NAN, |s| s.1 as f64);
        let t = start.elapsed().as_secs_f64();
        let rate_now = match count {
            Some(c) if t > last.0 => (c.saturating_sub(last.1)) as f64 / (t - last.0),
            _ => 0.0,
        };
        if let Some(c) = count {
            last = (t, c);
        }
        points.push((t, rate_now, lag));
        if !up_at.is_nan() && t > up_at + 20.0 && lag < rate as f64 && stopped_writing.is_none() {
            stopped_writing = Some(t);
        }
        if stopped_writing.is_some_and(|s| t > s + 10.0) || t > 400.0 {
            break;
        }
        tokio::time::sleep(
            Duration::from_secs(1).saturating_sub(Duration::from_secs_f64(start.elapsed().as_secs_f64() - t)),
        )
        .await;
    }
    lg.stop();
    drop((indexer, shipper));
    (points, (down_at, up_at))
}

fn register_font() -> bool {
    let path = std::env::var("BENCH_FONT").unwrap_or_else(|_| "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf".into());
    match std::fs::read(&path) {
        Ok(bytes) => {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
        }
        Err(_) => {
            eprintln!("[e2e] no font at {path} (BENCH_FONT): plots are drawn without text");
            false
        }
    }
}

type PlotResult = Result<(), Box<dyn std::error::Error>>;

fn plot_latency(out: &Path, text: bool, rows: &[(u64, [f64; 4])]) -> PlotResult {
    let root = BitMapBackend::new(out, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let xmax = rows.iter().map(|r| r.0).max().unwrap_or(1) as f64 * 1.1;
    let ymax = rows.iter().flat_map(|r| r.1).fold(0.5f64, f64::max) * 1.15;
    let mut b = ChartBuilder::on(&root);
    b.margin(20).x_label_area_size(45).y_label_area_size(60);
    if text {
        b.caption("write → searchable latency over offered load", ("sans-serif", 22));
    }
    let mut chart = b.build_cartesian_2d(0f64..xmax, 0f64..ymax)?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("offered load (lines/s)").y_desc("latency (s)");
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw()?;
    let colors = [BLUE, GREEN, RED, BLACK];
    for (k, name) in ["p50", "p90", "p99", "max"].iter().enumerate() {
        let color = colors[k];
        let series =
            chart.draw_series(LineSeries::new(rows.iter().map(|r| (r.0 as f64, r.1[k])), color.stroke_width(2)))?;
        if text {
            series
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        chart.draw_series(rows.iter().map(|r| Circle::new((r.0 as f64, r.1[k]), 4, color.filled())))?;
    }
    if text {
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    }
    root.present()?;
    Ok(())
}

fn plot_scaling(out: &Path, text: bool, bars: &[(&str, f64)]) -> PlotResult {
    let root = BitMapBackend::new(out, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let ymax = bars.iter().map(|b| b.1).filter(|v| v.is_finite()).fold(1.0f64, f64::max) * 1.15;
    let mut b = ChartBuilder::on(&root);
    b.margin(20).x_label_area_size(45).y_label_area_size(70);
    if text {
        b.caption("indexer docs/s by replicas vs raw _bulk (same run)", ("sans-serif", 22));
    }
    let mut chart = b.build_cartesian_2d(0f64..bars.len() as f64, 0f64..ymax)?;
    let names: Vec<String> = bars.iter().map(|b| b.0.to_owned()).collect();
    // Bars sit at i + 0.5; only those ticks get a name.
    let label = |x: &f64| {
        let i = (x - 0.5).round();
        if (x - 0.5 - i).abs() < 0.01 && i >= 0.0 {
            names.get(i as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    let mut mesh = chart.configure_mesh();
    mesh.disable_x_mesh();
    if text {
        mesh.y_desc("docs/s").x_labels(bars.len() * 2 + 1).x_label_formatter(&label);
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw()?;
    chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
        let color = if b.0.contains("bulk") { RED.mix(0.7) } else { BLUE.mix(0.7) };
        Rectangle::new(
            [(i as f64 + 0.15, 0.0), (i as f64 + 0.85, if b.1.is_finite() { b.1 } else { 0.0 })],
            color.filled(),
        )
    }))?;
    root.present()?;
    Ok(())
}

fn plot_fault(out: &Path, text: bool, points: &[(f64, f64, f64)], window: (f64, f64)) -> PlotResult {
    let root = BitMapBackend::new(out, (900, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(350);
    let tmax = points.last().map_or(1.0, |p| p.0);
    for (area, k, title, color) in
        [(&top, 1, "documents indexed per second", BLUE), (&bottom, 2, "Kafka consumer lag (records)", RED)]
    {
        let value = |p: &(f64, f64, f64)| if k == 1 { p.1 } else { p.2 };
        let ymax = points.iter().map(value).filter(|v| v.is_finite()).fold(1.0f64, f64::max) * 1.1;
        let mut b = ChartBuilder::on(area);
        b.margin(15).x_label_area_size(35).y_label_area_size(70);
        if text {
            b.caption(format!("{title}; Elasticsearch down {:.0}–{:.0} s", window.0, window.1), ("sans-serif", 18));
        }
        let mut chart = b.build_cartesian_2d(0f64..tmax, 0f64..ymax)?;
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc("seconds");
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw()?;
        chart.draw_series(std::iter::once(Rectangle::new(
            [(window.0, 0.0), (window.1, ymax)],
            RGBColor(255, 220, 220).filled(),
        )))?;
        chart.draw_series(LineSeries::new(
            points.iter().filter(|p| value(p).is_finite()).map(|p| (p.0, value(p))),
            color.stroke_width(2),
        ))?;
    }
    root.present()?;
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let started = Instant::now();
    let out = PathBuf::from(std::env::var("BENCH_OUT").unwrap_or_else(|_| {
        Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("docs/img").display().to_string()
    }));
    std::fs::create_dir_all(&out).expect("output dir");
    let text = register_font();
    let kafka = kafka().await;
    let search = elasticsearch().await;
    eprintln!("[e2e] start, load {}", load());
    let mut md = String::new();
    md.push_str(&format!("load average at start: {}\n\n", load()));

    // 1 + 2: ramp, then latency at 25/50/75 % of the maximum sustained rate.
    let p = bench_pipeline("e2e-ramp", &kafka.bootstrap, &search);
    p.setup();
    let indexer = p.indexer("a");
    let shipper = p.shipper();
    let steps = ramp(&p).await;
    let max = steps.iter().filter(|s| s.sustained).map(|s| s.rate).max().unwrap_or(steps[0].rate / 2);
    md.push_str("| offered lines/s | achieved | backlog mid-step | backlog end | sustained |\n|---|---|---|---|---|\n");
    for s in &steps {
        md.push_str(&format!(
            "| {} | {:.0} | {} | {} | {} |\n",
            s.rate,
            s.achieved,
            s.backlog_mid,
            s.backlog_end,
            if s.sustained { "yes" } else { "**no**" }
        ));
    }
    md.push_str(&format!("\n**maximum sustained rate: {max} lines/s** (load {})\n\n", load()));
    let secs = env_u64("BENCH_LATENCY_SECS", 30);
    let mut rows = Vec::new();
    md.push_str("| load | lines/s | samples | p50 | p90 | p99 | max |\n|---|---|---|---|---|---|---|\n");
    for pct in [25u64, 50, 75] {
        let rate = (max * pct / 100).max(1);
        let mut s = latency(&p, rate, secs).await;
        s.sort_by(f64::total_cmp);
        let q = [percentile(&s, 0.5), percentile(&s, 0.9), percentile(&s, 0.99), s.last().copied().unwrap_or(f64::NAN)];
        eprintln!(
            "[e2e] latency at {pct} % ({rate}/s): {} samples, p50 {:.3} p90 {:.3} p99 {:.3} max {:.3}",
            s.len(),
            q[0],
            q[1],
            q[2],
            q[3]
        );
        md.push_str(&format!(
            "| {pct} % | {rate} | {} | {:.2} s | {:.2} s | {:.2} s | {:.2} s |\n",
            s.len(),
            q[0],
            q[1],
            q[2],
            q[3]
        ));
        rows.push((rate, q));
    }
    plot_latency(&out.join("e2e-latency.png"), text, &rows).expect("latency plot");
    // Each phase's figures as soon as they exist: a later phase failing keeps them.
    println!("{md}");
    md.clear();
    drop((indexer, shipper));
    p.cleanup().await;

    // 3: scaling on a backlog.
    let total = env_u64("BENCH_SCALE_DOCS", 200_000);
    let mut s = bench_pipeline("e2e-scale", &kafka.bootstrap, &search);
    s.indexer_set("SLUICE_KAFKA__PARTITIONS", "6");
    s.setup();
    let shipper = s.shipper();
    let mut lg = s.loadgen(0, 1 << 20, &[&format!("--lines={total}")]);
    let deadline = Instant::now() + Duration::from_secs(600);
    while s.kafka_state().await.map_or(0, |k| k.0) < total as i64 {
        assert!(Instant::now() < deadline, "the backlog did not reach Kafka: {:?}", s.kafka_state().await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = lg.running();
    drop(lg);
    drop(shipper);
    let ceiling = bulk_ceiling(&s, total).await;
    let mut bars = Vec::new();
    md.push_str(&format!("\n| drained by | docs/s (5–95 %) | of raw _bulk | indexer CPU s |\n|---|---|---|---|\n| raw `_bulk`, concurrency 4 | {ceiling:.0} | 100 % | – |\n"));
    for replicas in 1..=3 {
        let (rate, cpu) = drain_with(&s, replicas, total).await;
        eprintln!(
            "[e2e] {replicas} replica(s): {rate:.0} docs/s, ceiling {ceiling:.0}, cpu {cpu:.1} s (load {})",
            load()
        );
        md.push_str(&format!(
            "| {replicas} indexer replica(s) | {rate:.0} | {:.0} % | {cpu:.1} |\n",
            100.0 * rate / ceiling
        ));
        bars.push((["1 replica", "2 replicas", "3 replicas"][replicas - 1], rate));
    }
    bars.push(("raw _bulk", ceiling));
    plot_scaling(&out.join("e2e-scaling.png"), text, &bars).expect("scaling plot");
    println!("{md}");
    md.clear();
    s.cleanup().await;

    // 4: Elasticsearch down for 30 s at half the maximum rate.
    let (points, window) = fault_timeline(&kafka.bootstrap, (max / 2).max(1)).await;
    plot_fault(&out.join("e2e-fault.png"), text, &points, window).expect("fault plot");
    let peak_lag = points.iter().map(|p| p.2).filter(|v| v.is_finite()).fold(0.0f64, f64::max);
    md.push_str(&format!(
        "\nES down {:.0}–{:.0} s at {} lines/s: peak lag {peak_lag:.0} records, run {:.0} s\n",
        window.0,
        window.1,
        max / 2,
        points.last().map_or(0.0, |p| p.0)
    ));
    md.push_str(&format!(
        "\nload average at end: {}; bench wall time {:.0} s\n",
        load(),
        started.elapsed().as_secs_f64()
    ));
    println!("{md}");
}

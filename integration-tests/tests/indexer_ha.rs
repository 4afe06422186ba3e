//! HA and security features of the indexer against real services: a dead node in
//! `elasticsearch.urls`, a node of a two-node cluster killed mid-stream, a read-only (flood-stage)
//! index block, HTTPS + basic auth, retention, `setup` idempotency and a Kafka broker restart.
//! Every test asserts exact document counts: nothing lost, nothing duplicated.
//!
//! Needs Docker with the local images (`./dev services build`) for the private containers, the
//! shared services (`KAFKA_BOOTSTRAP_SERVERS`, `ELASTICSEARCH_URL`) or Docker for them, and the
//! `sluice-indexer` binary (`cargo build -p sluice-indexer`).

mod indexer_support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use elasticsearch::http::Method;
use indexer_support::{
    Indexer, Names, count, env, metric_sum, offsets, produce, producer, records, series_value, set, setup,
    setup_output, wait_committed_to_end, wait_count,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde_json::json;
use sluice_integration_tests::{
    Kafka, elasticsearch, free_port, kafka, kafka_dedicated, search_cluster, search_secured,
};

const INDEXED: &str = "sluice_indexer_docs_total{outcome=\"indexed\"}";
const DUPLICATE: &str = "sluice_indexer_docs_total{outcome=\"duplicate\"}";
const DEAD_LETTERED: &str = "sluice_indexer_docs_total{outcome=\"dead_lettered\"}";

/// Waits until at least `n` documents are searchable.
async fn wait_at_least(search: &sluice_integration_tests::Search, indices: &str, n: u64, indexer: &Indexer) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while count(search, indices).await.unwrap_or(0) < n {
        assert!(Instant::now() < deadline, "indexing did not start:\n{}", indexer.log_tail());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts that the count stays exactly `expected` for a moment (no late duplicates).
async fn assert_stays(search: &sluice_integration_tests::Search, indices: &str, expected: u64) {
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(count(search, indices).await, Some(expected), "document count moved: duplicates?");
}

#[tokio::test]
async fn a_dead_node_in_the_url_list_is_skipped_by_its_breaker_and_nothing_is_lost() {
    let kafka = kafka().await;
    let search = elasticsearch().await;
    let names = Names::new("it-ha-deadnode");
    let mut env = env(&kafka, &search, &names);
    // Nothing listens there; it comes first, so every start (and setup) meets it first.
    let dead = format!("http://127.0.0.1:{}", free_port());
    set(&mut env, "SLUICE_ELASTICSEARCH__URLS", &format!("{dead},{}", search.url));
    set(&mut env, "SLUICE_BATCH__MAX_DOCS", "250");
    setup(&env);
    let total = 8000;
    let records = records(total, 2, 16, "deadnode");
    let producer = producer(&kafka);
    produce(&producer, &names.topic, &records[..4000]).await;

    let mut indexer = Indexer::spawn(&env, "it-ha-deadnode");
    produce(&producer, &names.topic, &records[4000..]).await;
    wait_count(&search, &names.indices(), total as u64, Duration::from_secs(120), &[&indexer]).await;
    wait_committed_to_end(&kafka, &names.group, &names.topic, Duration::from_secs(60)).await;
    assert_stays(&search, &names.indices(), total as u64).await;

    // The node gauge is refreshed every 2 s.
    indexer
        .wait_metric(&format!("sluice_indexer_node_up{{url=\"{}\"}}", search.url), Duration::from_secs(10), |v| {
            v == 1.0
        })
        .await;
    let metrics = indexer.metrics();
    // The series must exist (a gauge of 0, not a missing series read as 0).
    let dead_up = series_value(&metrics, &format!("sluice_indexer_node_up{{url=\"{dead}\"}}"));
    assert_eq!(dead_up, Some(0.0), "{metrics}");
    let failed = metric_sum(&metrics, "sluice_indexer_bulk_requests_total{result=\"transport\"}");
    let ok = metric_sum(&metrics, "sluice_indexer_bulk_requests_total{result=\"ok\"}");
    // The breaker opens after 3 failures; afterwards only its probes (1 s, 2 s, 4 s, … apart) go there.
    assert!(ok >= 32.0, "{ok} successful requests for {total} records in batches of 250:\n{metrics}");
    assert!(failed <= 10.0, "{failed} requests went to the dead node: its breaker did not skip it:\n{metrics}");
    assert_eq!(metric_sum(&metrics, DEAD_LETTERED), 0.0);
    assert_eq!(metric_sum(&metrics, INDEXED), total as f64, "each record created once");
    let log = indexer.log_text();
    assert!(
        log.lines().any(|l| l.contains("circuit breaker opened") && l.contains(&dead)),
        "no breaker log for {dead}:\n{}",
        indexer.log_tail()
    );
    assert!(indexer.terminate(Duration::from_secs(30)).success(), "{}", indexer.log_tail());
}

#[tokio::test]
async fn a_cluster_node_killed_mid_stream_loses_and_duplicates_nothing() {
    let kafka = kafka().await;
    let nodes = search_cluster(2).await;
    let (survivor, victim) = (&nodes[0], &nodes[1]);
    let names = Names::new("it-ha-cluster");
    let mut env = env(&kafka, survivor, &names);
    set(&mut env, "SLUICE_ELASTICSEARCH__URLS", &format!("{},{}", victim.url, survivor.url));
    // One replica per shard and two shards: each node holds primaries and replicas.
    set(&mut env, "SLUICE_ELASTICSEARCH__TEMPLATE__REPLICAS", "1");
    set(&mut env, "SLUICE_ELASTICSEARCH__TEMPLATE__SHARDS", "2");
    set(&mut env, "SLUICE_ELASTICSEARCH__REQUEST_TIMEOUT", "10s");
    set(&mut env, "SLUICE_BATCH__MAX_DOCS", "500");
    setup(&env);
    let total = 20_000;
    let records = records(total, 1, 32, "cluster");
    let producer = producer(&kafka);
    produce(&producer, &names.topic, &records[..8000]).await;

    let indexer = Indexer::spawn(&env, "it-ha-cluster");
    wait_at_least(survivor, &names.indices(), 2000, &indexer).await;
    // Replicas allocated: the victim's primaries have copies on the survivor.
    let (status, health) = survivor
        .request(Method::Get, &format!("/_cluster/health/{}?wait_for_status=green&timeout=60s", names.indices()), None)
        .await;
    assert_eq!((status, health["status"].as_str()), (200, Some("green")), "{health}");
    let shards = survivor.get_json(&format!("/_cat/shards/{}?format=json&h=prirep,node", names.indices())).await;
    let nodes_with_primaries: std::collections::BTreeSet<&str> =
        shards.as_array().unwrap().iter().filter(|s| s["prirep"] == "p").filter_map(|s| s["node"].as_str()).collect();
    assert_eq!(nodes_with_primaries.len(), 2, "primaries on both nodes: {shards}");

    victim.kill().await;
    let at_kill = count(survivor, &names.indices()).await.unwrap_or(0);
    assert!(at_kill < total as u64, "all {at_kill} records were indexed before the kill: not mid-stream");
    produce(&producer, &names.topic, &records[8000..]).await;
    wait_count(survivor, &names.indices(), total as u64, Duration::from_secs(180), &[&indexer]).await;
    wait_committed_to_end(&kafka, &names.group, &names.topic, Duration::from_secs(60)).await;
    assert_stays(survivor, &names.indices(), total as u64).await;
    let metrics = indexer.metrics();
    assert_eq!(metric_sum(&metrics, DEAD_LETTERED), 0.0, "{metrics}");
    // A document created by the killed node whose answer was lost comes back as a 409 on retry.
    let (indexed, duplicate) = (metric_sum(&metrics, INDEXED), metric_sum(&metrics, DUPLICATE));
    assert!(indexed <= total as f64 && indexed + duplicate >= total as f64, "{metrics}");
    indexer
        .wait_metric(&format!("sluice_indexer_node_up{{url=\"{}\"}}", victim.url), Duration::from_secs(10), |v| {
            v == 0.0
        })
        .await;
    // The kill landed on requests: some went to the dead node and failed, so their batches were
    // sent again (re-delivery), and the exact count above is the proof that it duplicated nothing.
    let metrics = indexer.metrics();
    let failed = metric_sum(&metrics, "sluice_indexer_bulk_requests_total{result=\"transport\"}")
        + metric_sum(&metrics, "sluice_indexer_bulk_requests_total{result=\"timeout\"}");
    assert!(failed >= 1.0, "no request met the killed node: the kill proved nothing:\n{metrics}");
    let mut indexer = indexer;
    assert!(indexer.terminate(Duration::from_secs(30)).success(), "{}", indexer.log_tail());
}

#[tokio::test]
async fn a_read_only_index_block_stops_writing_until_cleared() {
    let kafka = kafka().await;
    let search = elasticsearch().await;
    let names = Names::new("it-ha-flood");
    let mut env = env(&kafka, &search, &names);
    set(&mut env, "SLUICE_ELASTICSEARCH__BLOCKED_PROBE_INTERVAL", "2s");
    set(&mut env, "SLUICE_BATCH__MAX_DOCS", "500");
    setup(&env);
    // One UTC date: every record goes to the one index that gets blocked.
    let records = records(6000, 1, 16, "flood");
    let index = format!("{}-2026.11.25", names.index);
    let producer = producer(&kafka);
    produce(&producer, &names.topic, &records[..2000]).await;

    let mut indexer = Indexer::spawn(&env, "it-ha-flood");
    wait_count(&search, &names.indices(), 2000, Duration::from_secs(60), &[&indexer]).await;
    wait_committed_to_end(&kafka, &names.group, &names.topic, Duration::from_secs(30)).await;

    // What the disk flood-stage watermark puts on every index.
    let block = json!({"index.blocks.read_only_allow_delete": true});
    let (status, answer) = search.request(Method::Put, &format!("/{index}/_settings"), Some(block)).await;
    assert_eq!(status, 200, "{answer}");
    produce(&producer, &names.topic, &records[2000..]).await;
    indexer.wait_metric("sluice_indexer_write_blocked", Duration::from_secs(30), |v| v == 1.0).await;
    // Blocked for a while: nothing written, nothing dead-lettered, offsets stay behind.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(count(&search, &names.indices()).await, Some(2000));
    let metrics = indexer.metrics();
    assert_eq!(metric_sum(&metrics, DEAD_LETTERED), 0.0, "{metrics}");
    assert!(metric_sum(&metrics, "sluice_indexer_retried_items_total{reason=\"blocked\"}") > 0.0, "{metrics}");
    assert_eq!(metric_sum(&metrics, "sluice_indexer_write_blocked"), 1.0);
    let (committed, ends) = offsets(&kafka, &names.group, &names.topic).await;
    let behind: i64 = ends.iter().zip(&committed).map(|(e, c)| e - (*c).max(0)).sum();
    assert!(behind > 0, "offsets must not pass blocked records: committed {committed:?}, end {ends:?}");
    let log = indexer.log_text();
    assert!(log.contains("Elasticsearch refuses writes"), "{}", indexer.log_tail());

    let clear = json!({"index.blocks.read_only_allow_delete": null});
    let (status, answer) = search.request(Method::Put, &format!("/{index}/_settings"), Some(clear)).await;
    assert_eq!(status, 200, "{answer}");
    wait_count(&search, &names.indices(), 6000, Duration::from_secs(60), &[&indexer]).await;
    wait_committed_to_end(&kafka, &names.group, &names.topic, Duration::from_secs(30)).await;
    indexer.wait_metric("sluice_indexer_write_blocked", Duration::from_secs(10), |v| v == 0.0).await;
    assert_stays(&search, &names.indices(), 6000).await;
    assert_eq!(indexer.metric_sum(DEAD_LETTERED), 0.0);
    assert_eq!(indexer.metric_sum(INDEXED), 6000.0, "each record created once");
    // A block is not overload: the concurrency limit was left alone.
    let decreases = indexer.metric_sum("sluice_indexer_concurrency_changes_total{direction=\"decrease_overload\"}");
    assert_eq!(decreases, 0.0, "{}", indexer.metrics());
    assert!(indexer.terminate(Duration::from_secs(30)).success(), "{}", indexer.log_tail());
}

#[tokio::test]
async fn https_with_basic_auth_indexes_and_a_wrong_password_commits_nothing() {
    const USER: &str = "sluice-writer";
    const PASSWORD: &str = "Pw-4c1d7e9b-right";
    const WRONG: &str = "Pw-0a2b3c4d-wrong";
    let kafka = kafka().await;
    let search = search_secured(USER, PASSWORD).await;
    assert!(search.url.starts_with("https://"));
    let ca_file = std::env::current_exe().unwrap().parent().unwrap().join(format!("{}.crt", names_ca()));
    std::fs::write(&ca_file, search.ca_pem.as_ref().unwrap()).unwrap();
    let names = Names::new("it-ha-tls");
    let mut good = env(&kafka, &search, &names);
    set(&mut good, "SLUICE_ELASTICSEARCH__AUTH__USERNAME", USER);
    set(&mut good, "SLUICE_ELASTICSEARCH__AUTH__PASSWORD", PASSWORD);
    set(&mut good, "SLUICE_ELASTICSEARCH__TLS__CA_FILE", ca_file.to_str().unwrap());

    // Without the CA the server certificate is not trusted: setup fails and says why.
    let mut untrusted = good.clone();
    untrusted.retain(|(k, _)| k != "SLUICE_ELASTICSEARCH__TLS__CA_FILE");
    let output = setup_output(&untrusted);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "setup must fail without the CA: {stderr}");
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");
    assert!(!stderr.contains(PASSWORD), "password in the output: {stderr}");

    // A wrong password: setup fails with a clear error, and never prints the password.
    let mut wrong = good.clone();
    set(&mut wrong, "SLUICE_ELASTICSEARCH__AUTH__PASSWORD", WRONG);
    let output = setup_output(&wrong);
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(!output.status.success(), "setup must fail with a wrong password: {text}");
    assert!(text.contains("refused the credentials (HTTP 401): unable to authenticate user"), "{text}");
    assert!(!text.contains(WRONG), "password in the output: {text}");

    setup(&good);
    let records = records(3000, 2, 16, "tls");
    let producer = producer(&kafka);
    produce(&producer, &names.topic, &records).await;

    // The wrong password, this time in the URL (moved to the Authorization header): no commit.
    let mut wrong_run = good.clone();
    wrong_run.retain(|(k, _)| !k.starts_with("SLUICE_ELASTICSEARCH__AUTH__"));
    let in_url = search.url.replacen("https://", &format!("https://{USER}:{WRONG}@"), 1);
    set(&mut wrong_run, "SLUICE_ELASTICSEARCH__URLS", &in_url);
    set(&mut wrong_run, "SLUICE_KAFKA__GROUP_ID", &format!("{}-wrong", names.group));
    let mut refused = Indexer::spawn(&wrong_run, "it-ha-tls-wrong");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !refused.log_text().contains("refused the credentials (HTTP 401)") {
        assert!(Instant::now() < deadline, "no authentication error reported:\n{}", refused.log_tail());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (committed, _) = offsets(&kafka, &format!("{}-wrong", names.group), &names.topic).await;
    assert!(committed.iter().all(|&c| c < 0), "nothing may be committed without Elasticsearch: {committed:?}");
    assert_eq!(refused.metric_sum(INDEXED), 0.0);
    let log = refused.log_text();
    assert!(!log.contains(WRONG), "the password is in the log:\n{log}");
    assert!(!refused.metrics().contains(WRONG), "the password is in the metrics");
    let status = refused.terminate(Duration::from_secs(30));
    assert!(status.success(), "exit status {status:?}\n{}", refused.log_tail());

    let mut indexer = Indexer::spawn(&good, "it-ha-tls");
    wait_count(&search, &names.indices(), 3000, Duration::from_secs(120), &[&indexer]).await;
    wait_committed_to_end(&kafka, &names.group, &names.topic, Duration::from_secs(30)).await;
    assert_stays(&search, &names.indices(), 3000).await;
    assert_eq!(indexer.metric_sum(INDEXED), 3000.0);
    assert!(indexer.terminate(Duration::from_secs(30)).success(), "{}", indexer.log_tail());
    let log = indexer.log_text();
    assert!(!log.contains(PASSWORD), "the password is in the log:\n{log}");
    let _ = std::fs::remove_file(&ca_file);
}

fn names_ca() -> String {
    sluice_integration_tests::unique_name("it-ha-ca")
}

/// The UTC date `days_ago` days before today, as `YYYY.MM.DD` (civil-from-days, proleptic Gregorian).
fn utc_date(days_ago: i64) -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let z = secs.div_euclid(86_400) - days_ago + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}.{m:02}.{d:02}")
}

/// If midnight UTC is less than `margin` away, waits until it has passed: the test and the
/// indexer compute "today" separately, and a test crossing midnight would expect yesterday's cutoff.
async fn away_from_utc_midnight(margin: Duration) {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let to_midnight = 86_400 - secs % 86_400;
    if to_midnight < margin.as_secs() {
        eprintln!("waiting {to_midnight} s for midnight UTC to pass");
        tokio::time::sleep(Duration::from_secs(to_midnight + 2)).await;
    }
}

#[tokio::test]
async fn retention_deletes_only_expired_indices_of_the_pattern() {
    // The whole test (sweeps included) takes well under 3 minutes.
    away_from_utc_midnight(Duration::from_secs(180)).await;
    let started_day = utc_date(0);
    let kafka = kafka().await;
    let search = elasticsearch().await;
    let names = Names::new("it-ha-retention");
    let mut env = env(&kafka, &search, &names);
    set(&mut env, "SLUICE_RETENTION__DAYS", "7");
    set(&mut env, "SLUICE_RETENTION__CHECK_INTERVAL", "1s");
    setup(&env);
    let p = &names.index;
    let expired = [format!("{p}-{}", utc_date(8)), format!("{p}-{}", utc_date(40)), format!("{p}-2020.01.01")];
    let kept = [
        format!("{p}-{}", utc_date(7)), // the cutoff day itself is kept
        format!("{p}-{}", utc_date(1)),
        format!("{p}-{}", utc_date(0)),
        format!("{p}-2020.01.01-restored"), // matches the wildcard, not the pattern
        format!("{p}-archive"),
        format!("{p}x-2020.01.01"), // another prefix
    ];
    for index in expired.iter().chain(&kept) {
        let settings = json!({"settings": {"number_of_shards": 1, "number_of_replicas": 0}});
        let (status, answer) = search.request(Method::Put, &format!("/{index}"), Some(settings)).await;
        assert_eq!(status, 200, "create {index}: {answer}");
    }
    // A closed index is deleted too.
    let (status, answer) = search.request(Method::Post, &format!("/{}/_close", expired[2]), None).await;
    assert_eq!(status, 200, "{answer}");

    let mut indexer = Indexer::spawn(&env, "it-ha-retention");
    indexer.wait_metric("sluice_indexer_retention_deleted_indices_total", Duration::from_secs(60), |v| v >= 3.0).await;
    // A few more sweeps: nothing else goes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(indexer.metric_sum("sluice_indexer_retention_deleted_indices_total"), 3.0);
    let listed = search.get_json(&format!("/_cat/indices/{p}*?format=json&h=index&expand_wildcards=all")).await;
    let mut left: Vec<String> =
        listed.as_array().unwrap().iter().map(|i| i["index"].as_str().unwrap().to_owned()).collect();
    left.sort();
    let mut want = kept.to_vec();
    want.sort();
    assert_eq!(left, want);
    assert_eq!(utc_date(0), started_day, "midnight UTC passed during the test: the margin is too small");
    assert!(indexer.terminate(Duration::from_secs(30)).success(), "{}", indexer.log_tail());
    for index in &kept {
        search.request(Method::Delete, &format!("/{index}"), None).await;
    }
}

/// Partition counts of `topics` (0 when missing).
async fn partitions(kafka: &Kafka, topics: &[&str]) -> Vec<usize> {
    let config = kafka.client_config();
    let topics: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create().expect("consumer");
        topics
            .iter()
            .map(|t| {
                let metadata = consumer.fetch_metadata(Some(t), Duration::from_secs(10)).expect("metadata");
                metadata.topics().first().map_or(0, |m| if m.error().is_some() { 0 } else { m.partitions().len() })
            })
            .collect()
    })
    .await
    .expect("metadata task")
}

#[tokio::test]
async fn setup_creates_topics_and_template_and_is_idempotent() {
    let kafka = kafka().await;
    let search = elasticsearch().await;
    let names = Names::new("it-ha-setup");
    let mut env = env(&kafka, &search, &names);
    set(&mut env, "SLUICE_KAFKA__PARTITIONS", "5");
    set(&mut env, "SLUICE_DEAD_LETTER__PARTITIONS", "2");
    set(&mut env, "SLUICE_ELASTICSEARCH__TEMPLATE__SHARDS", "2");
    set(&mut env, "RUST_LOG", "info");
    assert_eq!(partitions(&kafka, &[&names.topic, &names.dlq]).await, vec![0, 0]);

    let first = setup_output(&env);
    let first_log = String::from_utf8_lossy(&first.stderr).into_owned();
    assert!(first.status.success(), "{first_log}");
    assert_eq!(first_log.matches("topic created").count(), 2, "{first_log}");
    assert_eq!(partitions(&kafka, &[&names.topic, &names.dlq]).await, vec![5, 2]);
    let template = search.get_json(&format!("/_index_template/{}", names.template)).await;
    let t = &template["index_templates"][0]["index_template"];
    assert_eq!(t["index_patterns"], json!([format!("{}-*.*.*", names.index)]), "{template}");
    assert_eq!(t["_meta"]["managed_by"], "sluice-indexer");
    assert_eq!(t["template"]["settings"]["index"]["number_of_shards"], "2");

    // Again, with other partition counts: exit 0, topics left as they are, template unchanged.
    set(&mut env, "SLUICE_KAFKA__PARTITIONS", "9");
    let second = setup_output(&env);
    let second_log = String::from_utf8_lossy(&second.stderr).into_owned();
    assert!(second.status.success(), "{second_log}");
    assert_eq!(second_log.matches("topic exists; left unchanged").count(), 2, "{second_log}");
    assert_eq!(partitions(&kafka, &[&names.topic, &names.dlq]).await, vec![5, 2]);
    let again = search.get_json(&format!("/_index_template/{}", names.template)).await;
    assert_eq!(again, template);

    // The template applies to a new index of the pattern.
    let index = format!("{}-2026.01.01", names.index);
    let (status, answer) = search.request(Method::Put, &format!("/{index}"), None).await;
    assert_eq!(status, 200, "{answer}");
    let mapping = search.get_json(&format!("/{index}/_mapping")).await;
    assert_eq!(mapping[&index]["mappings"]["properties"]["@timestamp"]["type"], "date_nanos", "{mapping}");
    search.request(Method::Delete, &format!("/{index}"), None).await;
}

#[tokio::test]
async fn a_kafka_broker_restart_mid_stream_loses_and_duplicates_nothing() {
    let kafka = kafka_dedicated().await;
    let search = elasticsearch().await;
    let names = Names::new("it-ha-broker");
    let mut env = env(&kafka, &search, &names);
    // One `_bulk` of 200 at a time: the first 60 000 records take seconds to index, so the outage
    // lands among them. (With 20 000 records and four concurrent 500-document `_bulk`s all of them
    // were indexed within one refresh interval of the first 2 000 being counted, in a CI run.)
    set(&mut env, "SLUICE_BATCH__MAX_DOCS", "200");
    set(&mut env, "SLUICE_CONCURRENCY__MIN", "1");
    set(&mut env, "SLUICE_CONCURRENCY__INITIAL", "1");
    set(&mut env, "SLUICE_CONCURRENCY__MAX", "1");
    setup(&env);
    let (total, first) = (70_000, 60_000);
    let records = records(total, 2, 32, "broker");
    produce(&producer(&kafka), &names.topic, &records[..first]).await;

    let mut indexer = Indexer::spawn(&env, "it-ha-broker");
    wait_at_least(&search, &names.indices(), 2000, &indexer).await;
    // The outage hits mid-stream: most records are still to be indexed (and nothing is committed
    // while the broker is away, although prefetched records may still be indexed).
    let before = count(&search, &names.indices()).await.unwrap_or(0);
    assert!(before < first as u64, "all {before} records were indexed before the broker stopped: not mid-stream");
    kafka.stop().await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert!(indexer.is_running(), "the indexer must ride out a broker outage:\n{}", indexer.log_tail());
    // The outage landed: the consumer saw it (errors logged or commits failed).
    let noticed = indexer.log_text().contains("Kafka consumer error")
        || indexer.metric_sum("sluice_indexer_commits_total{result=\"error\"}") > 0.0;
    assert!(noticed, "the indexer did not notice the broker outage:\n{}", indexer.log_tail());
    kafka.start().await;
    produce(&producer(&kafka), &names.topic, &records[first..]).await;
    wait_count(&search, &names.indices(), total as u64, Duration::from_secs(180), &[&indexer]).await;
    wait_committed_to_end(&kafka, &names.group, &names.topic, Duration::from_secs(90)).await;
    assert_stays(&search, &names.indices(), total as u64).await;
    let metrics = indexer.metrics();
    assert_eq!(metric_sum(&metrics, DEAD_LETTERED), 0.0, "{metrics}");
    // Each document was created once; re-deliveries after the outage were 409s (`duplicate`).
    assert_eq!(metric_sum(&metrics, INDEXED), total as f64, "{metrics}");
    assert!(indexer.terminate(Duration::from_secs(30)).success(), "{}", indexer.log_tail());
}

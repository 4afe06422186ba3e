//! The indexer against a real Kafka and a real Elasticsearch / OpenSearch: records land exactly
//! once with the right index, `_id` and mapping; poison records go to the dead-letter topic; a
//! SIGKILLed replica loses and duplicates nothing.
//!
//! Needs the `sluice-indexer` binary built (`cargo build -p sluice-indexer`).

mod indexer_support;

use std::time::Duration;

use indexer_support::{
    Indexer, Names, env, metric_sum, offsets, produce, producer, read_all, records, set, setup, wait_committed_to_end,
    wait_count,
};
use rdkafka::Message;
use rdkafka::message::Headers as _;
use rdkafka::producer::FutureRecord;
use serde_json::json;
use sluice_common::schema::header;
use sluice_integration_tests::{Flavor, Kafka, Search, elasticsearch, kafka, search_dedicated};

const INDEXED: &str = "sluice_indexer_docs_total{outcome=\"indexed\"}";
const DUPLICATE: &str = "sluice_indexer_docs_total{outcome=\"duplicate\"}";

async fn records_land_once(kafka: &Kafka, search: &Search, test: &str) {
    let names = Names::new(test);
    let env = env(kafka, search, &names);
    setup(&env);
    setup(&env); // idempotent
    let records = records(3000, 2, 16, test);
    let producer = producer(kafka);
    produce(&producer, &names.topic, &records[..2000]).await;

    let mut indexer = Indexer::spawn(&env, test);
    // Records produced while it runs are picked up too.
    produce(&producer, &names.topic, &records[2000..]).await;
    wait_count(search, &names.indices(), 3000, Duration::from_secs(120), &[&indexer]).await;
    wait_committed_to_end(kafka, &names.group, &names.topic, Duration::from_secs(30)).await;

    // One index per UTC date of sluice.ts, with the templated mapping.
    let indices = search.get_json(&format!("/_cat/indices/{}?format=json&h=index,docs.count", names.indices())).await;
    let mut found: Vec<(String, String)> = indices
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["index"].as_str().unwrap().to_owned(), i["docs.count"].as_str().unwrap().to_owned()))
        .collect();
    found.sort();
    assert_eq!(
        found,
        vec![
            (format!("{}-2026.11.25", names.index), "1500".into()),
            (format!("{}-2026.11.26", names.index), "1500".into())
        ]
    );
    let first = &records[0];
    let doc = search.get_json(&format!("/{}-2026.11.25/_doc/{}", names.index, first.id)).await;
    assert_eq!(doc["found"], true, "{doc}");
    assert_eq!(
        doc["_source"],
        serde_json::from_str::<serde_json::Value>(&first.payload).unwrap(),
        "source is the payload"
    );
    let mapping = search.get_json(&format!("/{}-2026.11.25/_mapping", names.index)).await;
    let props = &mapping[format!("{}-2026.11.25", names.index)]["mappings"]["properties"];
    assert_eq!(props["@timestamp"]["type"], "date_nanos", "{mapping}");
    assert_eq!(props["message"]["type"], "text");
    assert_eq!(props["kubernetes"]["properties"]["namespace"]["type"], "keyword");
    assert_eq!(props["kubernetes"]["properties"]["pod"]["properties"]["name"]["type"], "keyword");
    let flat = if search.flavor == Flavor::OpenSearch { "flat_object" } else { "flattened" };
    assert_eq!(props["kubernetes"]["properties"]["labels"]["type"], flat);
    // Nanoseconds survive (date_nanos): the exact timestamp matches, one nanosecond off does not.
    let exact = &records[7].ts;
    let off_by_one = format!("{}8Z", &exact[..exact.len() - 2]);
    for (ts, expected) in [(exact.as_str(), 1), (off_by_one.as_str(), 0)] {
        let q = format!("_id:{}%20AND%20@timestamp:%22{}%22", records[7].id, ts.replace(':', "%3A"));
        let n = search.get_json(&format!("/{}-*/_count?q={q}", names.index)).await;
        assert_eq!(n["count"], expected, "{ts}: {n}");
    }

    assert!(indexer.metric_sum("sluice_indexer_docs_total{outcome=\"indexed\"}") >= 3000.0, "{}", indexer.metrics());
    let status = indexer.terminate(Duration::from_secs(30));
    assert!(status.success(), "exit status {status:?}\n{}", indexer.log_tail());

    // A second run re-reading everything (new group) creates nothing new: every item is a 409.
    let mut again = env.clone();
    set(&mut again, "SLUICE_KAFKA__GROUP_ID", &format!("{}-again", names.group));
    let mut second = Indexer::spawn(&again, test);
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while second.metric_sum("sluice_indexer_docs_total{outcome=\"duplicate\"}") < 3000.0 {
        assert!(std::time::Instant::now() < deadline, "re-delivery not settled as duplicates:\n{}", second.log_tail());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    wait_count(search, &names.indices(), 3000, Duration::from_secs(10), &[&second]).await;
    assert_eq!(second.metric_sum("sluice_indexer_docs_total{outcome=\"indexed\"}"), 0.0, "{}", second.metrics());
    let status = second.terminate(Duration::from_secs(30));
    assert!(status.success(), "exit status {status:?}\n{}", second.log_tail());
}

#[tokio::test]
async fn records_are_indexed_once_with_index_id_and_mapping() {
    let kafka = kafka().await;
    let search = elasticsearch().await;
    records_land_once(&kafka, &search, "it-idx-es").await;
}

#[tokio::test]
async fn records_are_indexed_once_on_opensearch() {
    let kafka = kafka().await;
    let search = search_dedicated(Flavor::OpenSearch, &[]).await;
    records_land_once(&kafka, &search, "it-idx-os").await;
}

#[tokio::test]
async fn poison_records_are_dead_lettered_and_offsets_advance() {
    let kafka = kafka().await;
    let search = elasticsearch().await;
    let names = Names::new("it-idx-dlq");
    let env = env(&kafka, &search, &names);
    setup(&env);
    let mut records = records(1000, 1, 8, "dlq");
    // Mapping conflicts: log.offset is a long, kubernetes.namespace a keyword (not an object).
    let mut poison = Vec::new();
    for (i, r) in records.iter_mut().enumerate() {
        if i % 100 == 7 {
            let mut doc: serde_json::Value = serde_json::from_str(&r.payload).unwrap();
            if i % 200 == 7 {
                doc["log"]["offset"] = json!("not a number");
            } else {
                doc["kubernetes"]["namespace"] = json!({"nested": "object"});
            }
            r.payload = doc.to_string();
            poison.push(r.id.clone());
        }
    }
    let producer = producer(&kafka);
    produce(&producer, &names.topic, &records).await;
    // A record without contract headers (not written by a shipper).
    producer
        .send(FutureRecord::to(&names.topic).key("x").payload("{\"message\":\"no headers\"}"), Duration::from_secs(30))
        .await
        .expect("produce");

    let mut indexer = Indexer::spawn(&env, "it-idx-dlq");
    wait_count(&search, &names.indices(), (1000 - poison.len()) as u64, Duration::from_secs(120), &[&indexer]).await;
    wait_committed_to_end(&kafka, &names.group, &names.topic, Duration::from_secs(60)).await;

    let letters = read_all(&kafka, &names.dlq, poison.len() + 1, Duration::from_secs(60)).await;
    assert_eq!(letters.len(), poison.len() + 1, "dead letters");
    let mut ids = Vec::new();
    for letter in &letters {
        let headers = letter.headers().expect("headers");
        let get = |name: &str| {
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let error_type = get(header::ERROR_TYPE).expect("error type");
        let reason = get(header::ERROR_REASON).expect("error reason");
        let source = get(header::SOURCE).expect("source");
        assert!(source.starts_with(&format!("{}/", names.topic)), "{source}");
        assert!(!reason.is_empty());
        match get(header::ID) {
            Some(id) => {
                assert!(
                    error_type.contains("parsing_exception") || error_type.contains("mapper"),
                    "{error_type}: {reason}"
                );
                // The original payload and headers travel with the letter.
                let original = records.iter().find(|r| r.id == id).unwrap();
                assert_eq!(letter.payload(), Some(original.payload.as_bytes()));
                assert_eq!(get(header::TS).as_deref(), Some(original.ts.as_str()));
                assert_eq!(letter.key(), Some(original.key.as_bytes()));
                ids.push(id);
            }
            None => {
                assert_eq!(error_type, "sluice_contract_violation");
                assert!(reason.contains("sluice.v"), "{reason}");
            }
        }
    }
    ids.sort();
    assert_eq!(ids, poison);
    assert_eq!(indexer.metric_sum("sluice_indexer_docs_total{outcome=\"dead_lettered\"}"), (poison.len() + 1) as f64);
    assert!(indexer.terminate(Duration::from_secs(30)).success());
}

#[tokio::test]
async fn sigkill_of_one_replica_loses_and_duplicates_nothing() {
    let kafka = kafka().await;
    let search = elasticsearch().await;
    let names = Names::new("it-idx-kill");
    let mut env = env(&kafka, &search, &names);
    set(&mut env, "SLUICE_KAFKA__PARTITIONS", "6");
    // Small batches so the kill lands mid-stream with many requests in flight.
    set(&mut env, "SLUICE_BATCH__MAX_DOCS", "500");
    setup(&env);
    let total = 60_000;
    let records = records(total, 1, 48, "kill");

    let mut a = Indexer::spawn(&env, "it-idx-kill-a");
    let mut b = Indexer::spawn(&env, "it-idx-kill-b");
    // Both replicas must own partitions before the records arrive; otherwise the first one to join
    // can drain everything before the group rebalances and the kill would prove nothing.
    for indexer in [&a, &b] {
        indexer.wait_metric("sluice_indexer_assigned_partitions", Duration::from_secs(90), |n| n > 0.0).await;
    }
    let producer = producer(&kafka);
    produce(&producer, &names.topic, &records).await;
    // Wait until both are busy, then kill one without warning.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (da, db) = (a.metric_sum(INDEXED), b.metric_sum(INDEXED));
        if da > 0.0 && db > 0.0 && da + db >= (total / 5) as f64 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "indexers did not both start:\n{}\n---\n{}",
            a.log_tail(),
            b.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The kill must land mid-stream: records are left to index when it hits.
    let indexed_by_b = b.metric_sum(INDEXED);
    b.kill();
    let at_kill = indexer_support::count(&search, &names.indices()).await.expect("count");
    assert!(at_kill < total as u64, "all {at_kill} records were indexed before the kill: it proved nothing");
    assert!(a.is_running());
    wait_count(&search, &names.indices(), total as u64, Duration::from_secs(180), &[&a]).await;
    wait_committed_to_end(&kafka, &names.group, &names.topic, Duration::from_secs(60)).await;
    // Stays exact: re-delivered records were 409s, not new documents.
    tokio::time::sleep(Duration::from_secs(2)).await;
    wait_count(&search, &names.indices(), total as u64, Duration::from_secs(5), &[&a]).await;
    let (committed, ends) = offsets(&kafka, &names.group, &names.topic).await;
    assert_eq!(committed, ends);
    assert!(ends.iter().all(|&e| e > 0), "records on every partition: {ends:?}");
    // Recovery was exercised: the survivor re-read what the killed replica had indexed but not
    // committed, and Elasticsearch answered 409 for those (without re-delivery, the exact count
    // above would only prove `_id` uniqueness).
    let metrics = a.metrics();
    let duplicates = metric_sum(&metrics, DUPLICATE);
    assert!(duplicates > 0.0, "no re-delivery after the kill (b had indexed {indexed_by_b}):\n{metrics}");
    assert!(a.terminate(Duration::from_secs(30)).success(), "{}", a.log_tail());
}

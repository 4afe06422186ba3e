//! Issue #14, hostile input (indexer part), against a real Kafka and a real Elasticsearch: records
//! that are not JSON, that break the header contract, or that are larger than Elasticsearch's
//! `http.max_content_length` each go to the dead-letter topic with their reason (original key,
//! headers and payload kept); every valid record around them is indexed once and the offsets reach
//! the partition ends. The matrix is in docs/hostile-input.md.
//!
//! Needs the `sluice-indexer` binary built and the shared services (`KAFKA_BOOTSTRAP_SERVERS`,
//! `ELASTICSEARCH_URL`) or Docker; the `http.max_content_length` case starts its own Elasticsearch.

mod indexer_support;

use std::collections::BTreeMap;
use std::time::Duration;

use indexer_support::{
    Indexer, Names, TestRecord, env, header_value, produce, producer, read_all, records, set, setup,
    wait_committed_to_end, wait_count,
};
use rdkafka::Message;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sluice_common::schema::header;
use sluice_integration_tests::{Flavor, elasticsearch, kafka, search_dedicated};

/// Produces one record with exactly these headers (`None` value: a header without value).
async fn produce_raw(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    payload: &[u8],
    headers: &[(&str, Option<&[u8]>)],
) {
    let mut h = OwnedHeaders::new();
    for (k, v) in headers {
        h = h.insert(Header { key: k, value: *v });
    }
    let record = FutureRecord::to(topic).key(key).payload(payload).headers(h);
    producer.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| e).expect("produce");
}

fn contract<'a>(id: &'a str, ts: &'a str) -> Vec<(&'static str, Option<&'a [u8]>)> {
    vec![
        (header::ID, Some(id.as_bytes())),
        (header::TS, Some(ts.as_bytes())),
        (header::NS, Some(b"default")),
        (header::V, Some(b"1")),
    ]
}

/// The dead letters by record key: (error type, reason, payload).
async fn letters_by_key(
    kafka: &sluice_integration_tests::Kafka,
    dlq: &str,
    expected: usize,
) -> BTreeMap<String, (String, String, Vec<u8>)> {
    let letters = read_all(kafka, dlq, expected + 1, Duration::from_secs(20)).await;
    let mut out = BTreeMap::new();
    for l in &letters {
        let key = String::from_utf8_lossy(l.key().unwrap_or_default()).into_owned();
        let kind = header_value(l, header::ERROR_TYPE).unwrap_or_default();
        let reason = header_value(l, header::ERROR_REASON).unwrap_or_default();
        let source = header_value(l, header::SOURCE).unwrap_or_default();
        assert!(
            !kind.is_empty() && !reason.is_empty() && !source.is_empty(),
            "letter {key}: {kind:?} {reason:?} {source:?}"
        );
        assert!(
            out.insert(key.clone(), (kind, reason, l.payload().unwrap_or_default().to_vec())).is_none(),
            "{key} twice"
        );
    }
    out
}

/// One bad record: (key, payload, headers, expected error type; `None`: any parsing error).
type Case<'a> = (&'a str, Vec<u8>, Vec<(&'a str, Option<&'a [u8]>)>, Option<&'a str>);
#[tokio::test]
async fn non_json_payloads_and_corrupt_headers_are_dead_lettered_with_their_reason() {
    let kafka = kafka().await;
    let search = elasticsearch().await;
    let names = Names::new("it-bad-input");
    let mut env = env(&kafka, &search, &names);
    set(&mut env, "SLUICE_KAFKA__PARTITIONS", "1");
    setup(&env);
    let good = records(100, 1, 4, "bad");
    let producer = producer(&kafka);
    produce(&producer, &names.topic, &good[..50]).await;
    let ts = good[0].ts.clone();
    let deep_object = format!("{}\"x\":1{}", "{\"a\":".repeat(60), "}".repeat(60));
    let deep_array = format!("{{\"message\":{}1{}}}", "[".repeat(5000), "]".repeat(5000));
    // (key, payload, headers, expected error type; `None`: any Elasticsearch parsing error)
    let long_id = "i".repeat(600);
    let cases: Vec<Case<'_>> = vec![
        ("not-json", b"this is not JSON".to_vec(), contract("bad-nj", &ts), None),
        (
            "truncated-json",
            br#"{"@timestamp":"2026-11-25T00:00:00Z","message":"cut he"#.to_vec(),
            contract("bad-tj", &ts),
            None,
        ),
        ("json-array", br#"["a","b"]"#.to_vec(), contract("bad-ja", &ts), None),
        ("binary", b"\xff\xfe\x00\x01garbage".to_vec(), contract("bad-bin", &ts), None),
        ("deep-object", deep_object.into_bytes(), contract("bad-do", &ts), None),
        ("deep-array", deep_array.into_bytes(), contract("bad-da", &ts), None),
        ("empty", Vec::new(), contract("bad-empty", &ts), Some("sluice_contract_violation")),
        ("no-headers", good[0].payload.clone().into_bytes(), vec![], Some("sluice_contract_violation")),
        (
            "no-ts",
            good[0].payload.clone().into_bytes(),
            vec![(header::ID, Some(b"bad-nots")), (header::V, Some(b"1"))],
            Some("sluice_contract_violation"),
        ),
        (
            "bad-ts",
            good[0].payload.clone().into_bytes(),
            contract("bad-ts", "2026-13-45T99:00:00Z"),
            Some("sluice_contract_violation"),
        ),
        (
            "ts-not-utf8",
            good[0].payload.clone().into_bytes(),
            vec![
                (header::ID, Some(b"bad-tsu")),
                (header::TS, Some(b"2026-11-25T00:00:00\xffZ")),
                (header::V, Some(b"1")),
            ],
            Some("sluice_contract_violation"),
        ),
        (
            // A v1 document under `sluice.v: 2`: its frame line does not decode.
            "version-2",
            good[0].payload.clone().into_bytes(),
            vec![(header::ID, Some(b"bad-v2")), (header::TS, Some(ts.as_bytes())), (header::V, Some(b"2"))],
            Some("sluice_contract_violation"),
        ),
        (
            "version-3",
            good[0].payload.clone().into_bytes(),
            vec![(header::ID, Some(b"bad-v3")), (header::TS, Some(ts.as_bytes())), (header::V, Some(b"3"))],
            Some("sluice_contract_violation"),
        ),
        (
            "no-version",
            good[0].payload.clone().into_bytes(),
            vec![(header::ID, Some(b"bad-nov")), (header::TS, Some(ts.as_bytes()))],
            Some("sluice_contract_violation"),
        ),
        ("empty-id", good[0].payload.clone().into_bytes(), contract("", &ts), Some("sluice_contract_violation")),
        (
            "id-without-value",
            good[0].payload.clone().into_bytes(),
            {
                let mut h = contract("x", &ts);
                h[0].1 = None;
                h
            },
            Some("sluice_contract_violation"),
        ),
        ("id-too-long", good[0].payload.clone().into_bytes(), contract(&long_id, &ts), None),
    ];
    for (key, payload, headers, _) in &cases {
        produce_raw(&producer, &names.topic, key, payload, headers).await;
    }
    produce(&producer, &names.topic, &good[50..]).await;

    let mut indexer = Indexer::spawn(&env, "it-bad-input");
    wait_count(&search, &names.indices(), 100, Duration::from_secs(90), &[&indexer]).await;
    wait_committed_to_end(&kafka, &names.group, &names.topic, Duration::from_secs(60)).await;
    let letters = letters_by_key(&kafka, &names.dlq, cases.len()).await;
    assert_eq!(letters.len(), cases.len(), "one letter per bad record: {:?}\n{}", letters.keys(), indexer.log_tail());
    for (key, payload, _, want) in &cases {
        let (kind, reason, kept) = letters.get(*key).unwrap_or_else(|| panic!("no dead letter for {key}"));
        eprintln!("{key}: {kind}: {reason}");
        match want {
            Some(t) => assert_eq!(kind, t, "{key}: {reason}"),
            None => assert_ne!(kind, "sluice_contract_violation", "{key}: Elasticsearch's verdict expected"),
        }
        assert_eq!(kept, payload, "{key}: the original payload is kept");
    }
    assert_eq!(indexer.metric_sum("sluice_indexer_docs_total{outcome=\"dead_lettered\"}"), cases.len() as f64);
    assert!(indexer.is_running());
    assert!(indexer.terminate(Duration::from_secs(30)).success());
}

#[tokio::test]
async fn a_record_over_http_max_content_length_is_dead_lettered_and_the_rest_indexed() {
    let kafka = kafka().await;
    // A dedicated Elasticsearch whose requests may be at most 100 KiB.
    let search = search_dedicated(Flavor::Elasticsearch, &[("http.max_content_length", "100kb")]).await;
    let names = Names::new("it-bad-size");
    let mut env = env(&kafka, &search, &names);
    set(&mut env, "SLUICE_KAFKA__PARTITIONS", "1");
    setup(&env);
    let mut all = records(200, 1, 4, "size");
    let mut doc: serde_json::Value = serde_json::from_str(&all[120].payload).unwrap();
    doc["message"] = serde_json::json!("z".repeat(300 * 1024));
    all[120].payload = doc.to_string();
    let big: TestRecord = all[120].clone();
    produce(&producer(&kafka), &names.topic, &all).await;

    let mut indexer = Indexer::spawn(&env, "it-bad-size");
    wait_count(&search, &names.indices(), 199, Duration::from_secs(120), &[&indexer]).await;
    wait_committed_to_end(&kafka, &names.group, &names.topic, Duration::from_secs(60)).await;
    let letters = read_all(&kafka, &names.dlq, 2, Duration::from_secs(20)).await;
    assert_eq!(letters.len(), 1, "{}", indexer.log_tail());
    let letter = &letters[0];
    assert_eq!(header_value(letter, header::ID).as_deref(), Some(big.id.as_str()));
    assert_eq!(header_value(letter, header::ERROR_TYPE).as_deref(), Some("http_413"));
    assert_eq!(letter.payload(), Some(big.payload.as_bytes()), "the whole record is kept");
    let reason = header_value(letter, header::ERROR_REASON).unwrap_or_default();
    assert!(reason.contains("413"), "the letter says why: {reason:?}");
    assert_eq!(indexer.metric_sum("sluice_indexer_docs_total{outcome=\"dead_lettered\"}"), 1.0);
    assert!(indexer.terminate(Duration::from_secs(30)).success());
}

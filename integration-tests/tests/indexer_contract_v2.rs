//! Kafka message contract v2 (several records per message, `docs/proposal-kafka-contract-v2.md`),
//! indexer part, against a real Kafka and a real Elasticsearch: v1 and v2 messages interleaved on
//! one partition (a rolling upgrade), one v2 message whose records fall on both sides of midnight
//! UTC, one v2 message with a record Elasticsearch rejects (its `@timestamp` is beyond what
//! `date_nanos` stores) and one v2 message that does not decode.
//!
//! Checked: every good record is indexed exactly once, in its own date's index, with a `_source`
//! byte for byte the v1 document of the same record (`DocumentFrame::write`); the rejected record
//! alone is dead-lettered as a v1 message (its document, v1 headers, `sluice.source.record`); the
//! undecodable message is dead-lettered whole; the committed offset reaches the partition's end;
//! a restart in the same group reads nothing again.
//!
//! Needs the `sluice-indexer` binary built and the shared services (`KAFKA_BOOTSTRAP_SERVERS`,
//! `ELASTICSEARCH_URL`) or Docker.

mod indexer_support;

use std::collections::BTreeMap;
use std::time::Duration;

use indexer_support::{
    Indexer, Names, env, header_value, offsets, read_all, set, setup, wait_committed_to_end, wait_count,
};
use rdkafka::Message;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sluice_common::message::{Encoder, write_record_line};
use sluice_common::schema::{Document, DocumentFrame, Headers, RecordFields, Stream, header, tag};
use sluice_integration_tests::{Search, elasticsearch, kafka};

const INDEXED: &str = "sluice_indexer_docs_total{outcome=\"indexed\"}";
const DUPLICATE: &str = "sluice_indexer_docs_total{outcome=\"duplicate\"}";
const DEAD_LETTERED: &str = "sluice_indexer_docs_total{outcome=\"dead_lettered\"}";

/// One record of a test message.
#[derive(Debug, Clone)]
struct Rec {
    id: String,
    ts: String,
    message: String,
    stream: Stream,
    offset: u64,
    tags: Vec<&'static str>,
}

impl Rec {
    fn fields(&self) -> RecordFields<'_> {
        RecordFields { timestamp: &self.ts, message: &self.message, stream: self.stream, offset: self.offset }
    }

    /// The document a v1 message of this record carries.
    fn document(&self, frame: &DocumentFrame) -> Vec<u8> {
        let mut doc = Vec::new();
        frame.write(&mut doc, &self.fields(), self.tags.iter().copied());
        doc
    }

    /// The index of this record (pattern `<prefix>-%Y.%m.%d`).
    fn index(&self, names: &Names) -> String {
        format!("{}-{}.{}.{}", names.index, &self.ts[..4], &self.ts[5..7], &self.ts[8..10])
    }
}

/// The frame of pod `pod`'s container log file.
fn frame(pod: usize) -> DocumentFrame {
    let json = serde_json::json!({
        "@timestamp": "2026-11-25T00:00:00Z",
        "message": "",
        "stream": "stdout",
        "log": {"file": {"path": format!("/var/log/pods/ns-v2_pod-{pod}_uid{pod}/app/0.log")}, "offset": 0},
        "kubernetes": {
            "namespace": "ns-v2",
            "pod": {"name": format!("pod-{pod}"), "uid": format!("uid{pod}")},
            "container": {"name": "app"},
            "node": {"name": "node-1"},
            "labels": {"app": "web", "app_kubernetes_io/name": format!("web-{pod}")}
        },
        "host": {"name": "node-1"},
        "agent": {"type": "sluice", "version": "0.1.0"},
        "tags": [tag::METADATA_FROM_PATH]
    })
    .to_string();
    DocumentFrame::new(&serde_json::from_str::<Document<'_>>(&json).expect("document"))
}

/// One Kafka message as produced.
struct Msg {
    key: String,
    frame: DocumentFrame,
    records: Vec<Rec>,
    /// Contract version; a v2 message may also carry a broken value (`corrupt`).
    v2: bool,
    corrupt: bool,
}

impl Msg {
    fn value(&self) -> Vec<u8> {
        if !self.v2 {
            return self.records[0].document(&self.frame);
        }
        let mut enc = Encoder::new(&self.frame);
        let mut line = Vec::new();
        for r in &self.records {
            line.clear();
            write_record_line(&mut line, &r.id, &r.fields(), r.tags.iter().copied());
            enc.push_line(&line);
        }
        let mut value = enc.finish();
        if self.corrupt {
            value.extend_from_slice(b"\n{\"id\":\"half a record\"");
        }
        value
    }

    fn headers(&self) -> OwnedHeaders {
        let first = &self.records[0];
        let mut headers = OwnedHeaders::new();
        if self.v2 {
            for (key, value) in [
                (header::V, "2"),
                (header::NS, "ns-v2"),
                (header::TS, first.ts.as_str()),
                ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            ] {
                headers = headers.insert(Header { key, value: Some(value) });
            }
        } else {
            let contract = Headers { id: first.id.as_str().into(), ts: first.ts.as_str().into(), ns: "ns-v2".into() };
            for (key, value) in contract.pairs() {
                headers = headers.insert(Header { key, value: Some(value) });
            }
        }
        headers
    }
}

fn msg(pod: usize, v2: bool, records: Vec<Rec>) -> Msg {
    Msg { key: format!("uid{pod}/app"), frame: frame(pod), records, v2, corrupt: false }
}

/// The test's messages, in production order, and the (message index, record index) of the record
/// Elasticsearch rejects.
fn messages() -> (Vec<Msg>, (usize, usize)) {
    let mut n = 0u64;
    let mut rec = |ts: String, tags: Vec<&'static str>| {
        n += 1;
        Rec {
            id: format!("v2rec-{n:05}"),
            ts,
            message: format!("line {n}: \"quoted\" \\ tab\t ünïcödé {}", "x".repeat((n % 7) as usize * 10)),
            stream: if n.is_multiple_of(3) { Stream::Stderr } else { Stream::Stdout },
            offset: n * 100,
            tags,
        }
    };
    let mut i = 0u64;
    let mut next = |d: u32| {
        i += 1;
        format!("2026-11-{d:02}T10:{:02}:{:02}.{:09}Z", i / 60 % 60, i % 60, i * 7)
    };
    let mut msgs = Vec::new();
    // v1, v2, v1, v2 … on one partition.
    for _ in 0..5 {
        msgs.push(msg(0, false, vec![rec(next(25), vec![])]));
    }
    let records = (0..20).map(|k| rec(next(25), if k % 4 == 1 { vec![tag::MULTILINE] } else { vec![] })).collect();
    msgs.push(msg(1, true, records));
    for _ in 0..3 {
        msgs.push(msg(2, false, vec![rec(next(26), vec![tag::TRUNCATED])]));
    }
    // Across midnight UTC: 2 records on the 25th, 3 on the 26th.
    let midnight = vec![
        rec("2026-11-25T23:59:59.999999998Z".into(), vec![]),
        rec("2026-11-25T23:59:59.999999999Z".into(), vec![]),
        rec("2026-11-26T00:00:00Z".into(), vec![]),
        rec("2026-11-26T00:00:00.000000001Z".into(), vec![]),
        rec("2026-11-26T00:00:01Z".into(), vec![]),
    ];
    msgs.push(msg(3, true, midnight));
    // One record beyond date_nanos (2262-04-11): Elasticsearch rejects it alone.
    let mut poisoned: Vec<Rec> = (0..6).map(|_| rec(next(26), vec![])).collect();
    poisoned[3].ts = "2300-01-01T00:00:00Z".into();
    msgs.push(msg(1, true, poisoned));
    let poison = (msgs.len() - 1, 3);
    for _ in 0..2 {
        msgs.push(msg(0, false, vec![rec(next(26), vec![])]));
    }
    // A v2 value that does not decode: dead-lettered whole.
    msgs.push(Msg { corrupt: true, ..msg(4, true, vec![rec(next(26), vec![])]) });
    let records = (0..7).map(|_| rec(next(26), vec![tag::PARTIAL_FLUSHED])).collect();
    msgs.push(msg(2, true, records));
    for _ in 0..2 {
        msgs.push(msg(3, false, vec![rec(next(25), vec![])]));
    }
    (msgs, poison)
}

fn producer(kafka: &sluice_integration_tests::Kafka) -> FutureProducer {
    kafka.client_config().set("acks", "all").set("enable.idempotence", "true").create().expect("producer")
}

/// The `_source` of a document exactly as Elasticsearch returns it (`GET /<index>/_source/<id>`).
async fn raw_source(search: &Search, index: &str, id: &str) -> Vec<u8> {
    let response = search
        .client()
        .send(
            elasticsearch::http::Method::Get,
            &format!("/{index}/_source/{id}"),
            Default::default(),
            Option::<&()>::None,
            None::<&str>,
            Some(Duration::from_secs(10)),
        )
        .await
        .expect("GET _source");
    assert_eq!(response.status_code().as_u16(), 200, "{index}/{id}");
    response.bytes().await.expect("body").to_vec()
}

#[tokio::test]
async fn v1_and_v2_messages_interleaved_are_indexed_once_and_a_rejected_record_is_dead_lettered_alone() {
    let kafka = kafka().await;
    let search = elasticsearch().await;
    let names = Names::new("it-v2");
    let mut env = env(&kafka, &search, &names);
    set(&mut env, "SLUICE_KAFKA__PARTITIONS", "1");
    // Small batches: messages straddle batch limits (a message is never split).
    set(&mut env, "SLUICE_BATCH__MAX_DOCS", "8");
    setup(&env);

    let (msgs, (poison_msg, poison_rec)) = messages();
    let producer = producer(&kafka);
    for m in &msgs {
        let value = m.value();
        let record = FutureRecord::to(&names.topic).partition(0).key(&m.key).payload(&value).headers(m.headers());
        producer.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| e).expect("produce");
    }
    let good: Vec<(&Msg, &Rec)> = msgs
        .iter()
        .enumerate()
        .filter(|(_, m)| !m.corrupt)
        .flat_map(|(i, m)| m.records.iter().enumerate().map(move |(j, r)| ((i, j), m, r)))
        .filter(|(at, _, _)| *at != (poison_msg, poison_rec))
        .map(|(_, m, r)| (m, r))
        .collect();
    let total_records: usize = msgs.iter().filter(|m| !m.corrupt).map(|m| m.records.len()).sum();
    assert_eq!(good.len(), total_records - 1);

    let mut indexer = Indexer::spawn(&env, "it-v2");
    wait_count(&search, &names.indices(), good.len() as u64, Duration::from_secs(120), &[&indexer]).await;
    wait_committed_to_end(&kafka, &names.group, &names.topic, Duration::from_secs(60)).await;
    let (committed, ends) = offsets(&kafka, &names.group, &names.topic).await;
    assert_eq!((committed[0], ends[0]), (msgs.len() as i64, msgs.len() as i64), "one offset per message");

    // Every good record once, in its own date's index, `_source` byte for byte its v1 document.
    for (m, r) in &good {
        let source = raw_source(&search, &r.index(&names), &r.id).await;
        let want = r.document(&m.frame);
        assert_eq!(
            String::from_utf8_lossy(&source),
            String::from_utf8_lossy(&want),
            "{} ({}): _source differs from the v1 document",
            r.id,
            r.ts
        );
    }
    let midnight = &msgs[msgs.iter().position(|m| m.records.len() == 5).unwrap()];
    let dates: Vec<String> = midnight.records.iter().map(|r| r.index(&names)).collect();
    assert_eq!(dates[..2], [format!("{}-2026.11.25", names.index), format!("{}-2026.11.25", names.index)]);
    assert!(dates[2..].iter().all(|d| *d == format!("{}-2026.11.26", names.index)), "{dates:?}");
    let per_index = search.get_json(&format!("/_cat/indices/{}?format=json&h=index,docs.count", names.indices())).await;
    let mut found: BTreeMap<String, u64> = BTreeMap::new();
    for i in per_index.as_array().unwrap() {
        found.insert(i["index"].as_str().unwrap().to_owned(), i["docs.count"].as_str().unwrap().parse().unwrap());
    }
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for (_, r) in &good {
        *want.entry(r.index(&names)).or_default() += 1;
    }
    // The rejected record's index may have been created (empty) by its failed write.
    found.retain(|_, n| *n > 0);
    assert_eq!(found, want, "documents per date index");

    // Dead letters: the rejected record alone as a v1 message, the undecodable message whole.
    let letters = read_all(&kafka, &names.dlq, 3, Duration::from_secs(20)).await;
    assert_eq!(letters.len(), 2, "two dead letters:\n{}", indexer.log_tail());
    let (record_letter, whole): (Vec<_>, Vec<_>) = letters.iter().partition(|l| header_value(l, header::ID).is_some());
    let (letter, whole) = (record_letter[0], whole[0]);
    let poison = &msgs[poison_msg].records[poison_rec];
    let poison_offset = poison_msg.to_string();
    assert_eq!(header_value(letter, header::ID).as_deref(), Some(poison.id.as_str()));
    assert_eq!(header_value(letter, header::TS).as_deref(), Some(poison.ts.as_str()));
    assert_eq!(header_value(letter, header::NS).as_deref(), Some("ns-v2"));
    assert_eq!(header_value(letter, header::V).as_deref(), Some("1"), "a v1 message");
    assert_eq!(header_value(letter, header::SOURCE_RECORD).as_deref(), Some(poison_rec.to_string().as_str()));
    assert_eq!(
        header_value(letter, header::SOURCE).as_deref(),
        Some(format!("{}/0/{poison_offset}", names.topic).as_str())
    );
    assert!(header_value(letter, "traceparent").is_some(), "other headers kept");
    let kind = header_value(letter, header::ERROR_TYPE).unwrap_or_default();
    assert!(kind.contains("parsing_exception"), "Elasticsearch's verdict: {kind}");
    assert_eq!(letter.key(), Some(msgs[poison_msg].key.as_bytes()));
    assert_eq!(letter.payload(), Some(&poison.document(&msgs[poison_msg].frame)[..]), "its v1 document");
    let headers = letter.headers().map(rdkafka::message::Headers::count).unwrap_or(0);
    assert_eq!(headers, 4 + 1 + 3 + 1, "v1 headers, traceparent, error/source, source.record: each once");

    let corrupt = msgs.iter().find(|m| m.corrupt).unwrap();
    assert_eq!(header_value(whole, header::ERROR_TYPE).as_deref(), Some("sluice_contract_violation"));
    assert!(header_value(whole, header::ERROR_REASON).unwrap_or_default().contains("contract v2"));
    assert_eq!(header_value(whole, header::V).as_deref(), Some("2"), "the original headers");
    assert_eq!(header_value(whole, header::SOURCE_RECORD), None, "a whole message has no record index");
    assert_eq!(whole.payload(), Some(&corrupt.value()[..]), "the original value");

    assert_eq!(indexer.metric_sum(INDEXED), good.len() as f64, "records, not messages");
    assert_eq!(indexer.metric_sum(DEAD_LETTERED), 2.0);
    assert!(indexer.terminate(Duration::from_secs(30)).success(), "{}", indexer.log_tail());

    // A restart in the same group reads nothing again: no document, no duplicate, no letter.
    let mut again = Indexer::spawn(&env, "it-v2-again");
    again.wait_metric("sluice_indexer_assigned_partitions", Duration::from_secs(60), |n| n >= 1.0).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(again.metric_sum(INDEXED) + again.metric_sum(DUPLICATE) + again.metric_sum(DEAD_LETTERED), 0.0);
    wait_count(&search, &names.indices(), good.len() as u64, Duration::from_secs(10), &[&again]).await;
    assert!(again.terminate(Duration::from_secs(30)).success(), "{}", again.log_tail());
    assert_eq!(read_all(&kafka, &names.dlq, 3, Duration::from_secs(5)).await.len(), 2, "no new dead letter");
}

//! The foundation's proof that the harness talks to the real services: a record goes through the
//! real Kafka broker, a document through the real Elasticsearch. Stopping either makes these fail.

use std::time::Duration;

use elasticsearch::{IndexParts, SearchParts};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use sluice_common::schema::{Headers, header};
use sluice_integration_tests::{elasticsearch, kafka, unique_name};

#[tokio::test]
async fn record_round_trips_through_real_kafka_with_contract_headers() {
    let kafka = kafka().await;
    let topic = unique_name("it-roundtrip");
    kafka.create_topic(&topic, 1).await;

    let producer: FutureProducer =
        kafka.client_config().set("acks", "all").set("enable.idempotence", "true").create().unwrap();
    let contract = Headers { id: "rec-1".into(), ts: "2026-11-27T00:00:00Z".into(), ns: "default".into() };
    let mut headers = OwnedHeaders::new();
    for (key, value) in contract.pairs() {
        headers = headers.insert(Header { key, value: Some(value) });
    }
    let payload = r#"{"message":"hello"}"#;
    producer
        .send(FutureRecord::to(&topic).key("uid/app").payload(payload).headers(headers), Duration::from_secs(30))
        .await
        .expect("broker acknowledged the record");

    let consumer: StreamConsumer = kafka
        .client_config()
        .set("group.id", unique_name("it-group"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv()).await.expect("timely").unwrap();
    assert_eq!(message.payload_view::<str>().unwrap().unwrap(), payload);
    assert_eq!(message.key(), Some(&b"uid/app"[..]));
    let headers = message.headers().expect("headers");
    let pairs: Vec<(&str, Option<&[u8]>)> = headers.iter().map(|h| (h.key, h.value)).collect();
    let back = Headers::from_pairs(pairs).unwrap();
    assert_eq!(back, contract);
    assert!(headers.iter().any(|h| h.key == header::V));
}

#[tokio::test]
async fn document_is_indexed_and_found_in_real_elasticsearch() {
    let search = elasticsearch().await;
    let client = search.client();
    let index = unique_name("it-doc");
    let response = client
        .index(IndexParts::IndexId(&index, "doc-1"))
        .refresh(elasticsearch::params::Refresh::True)
        .body(json!({"message": "needle in the haystack", "kubernetes": {"namespace": "default"}}))
        .send()
        .await
        .expect("index request");
    assert_eq!(response.status_code().as_u16(), 201, "{:?}", response.text().await);

    let found: serde_json::Value = client
        .search(SearchParts::Index(&[&index]))
        .body(json!({"query": {"match": {"message": "needle"}}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(found["hits"]["total"]["value"], 1, "{found}");
    assert_eq!(found["hits"]["hits"][0]["_id"], "doc-1");

    let _ = client.indices().delete(elasticsearch::indices::IndicesDeleteParts::Index(&[&index])).send().await;
}

//! The sweep of a long-lived stack (`sluice_integration_tests::sweep`) against the real services:
//! topics, indices and templates named for a finished test process are deleted; those of a live
//! process, young ones and production names are kept.

use std::time::Duration;

use elasticsearch::http::Method;
use serde_json::json;
use sluice_integration_tests::{elasticsearch, kafka, sweep, unique_name};

/// A process id that is not running: a child that has exited (and was reaped).
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().expect("spawn true");
    let pid = child.id();
    child.wait().expect("wait");
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    pid
}

/// A name as `unique_name` makes it, for `pid`, created `ago` before now.
fn name_for(prefix: &str, pid: u32, ago: Duration) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let created = (now % 100_000_000 + 100_000_000 - ago.as_millis() as u64) % 100_000_000;
    format!("{prefix}-{pid}-0-{created}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_left_by_finished_test_processes_are_swept_and_nothing_else() {
    let (kafka, search) = (kafka().await, elasticsearch().await);
    let dead = dead_pid();
    let hours = Duration::from_secs(2 * 3600);
    let litter = name_for("sweep-litter", dead, hours);
    let young = name_for("sweep-young", dead, Duration::from_secs(60));
    let live = unique_name("sweep-live");
    let production = format!("sweep-prod.logs.{}", std::process::id());
    for topic in [&litter, &young, &live, &production] {
        kafka.create_topic(topic, 1).await;
    }
    let litter_index = format!("{litter}-2026.12.02");
    for index in [&litter_index, &young, &live] {
        let (status, body) = search.request(Method::Put, &format!("/{index}"), None).await;
        assert_eq!(status, 200, "creating {index}: {body}");
    }
    let template =
        json!({"index_patterns": [format!("{litter}-*")], "template": {"settings": {"number_of_shards": 1}}});
    let (status, body) = search.request(Method::Put, &format!("/_index_template/{litter}"), Some(template)).await;
    assert_eq!(status, 200, "{body}");

    let mut topics = sweep::kafka_now(&kafka.bootstrap).await;
    topics.sort();
    assert_eq!(topics, vec![litter.clone()], "only the old topic of the finished process");
    let mut swept = sweep::search_now(&search.url).await;
    swept.sort();
    let mut expected = vec![litter_index.clone(), litter.clone()];
    expected.sort();
    assert_eq!(swept, expected, "the old index and template of the finished process");

    // What is left is really there, what was swept is really gone.
    let consumer: rdkafka::consumer::BaseConsumer = kafka.client_config().create().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let md = rdkafka::consumer::Consumer::fetch_metadata(&consumer, None, Duration::from_secs(10)).unwrap();
        let names: Vec<&str> = md.topics().iter().map(|t| t.name()).collect();
        for kept in [&young, &live, &production] {
            assert!(names.contains(&kept.as_str()), "{kept} was deleted");
        }
        if !names.contains(&litter.as_str()) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{litter} is still listed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (index, exists) in [(&litter_index, false), (&young, true), (&live, true)] {
        let (status, _) = search.request(Method::Head, &format!("/{index}"), None).await;
        assert_eq!(status == 200, exists, "{index}");
    }
    let (status, _) = search.request(Method::Get, &format!("/_index_template/{litter}"), None).await;
    assert_eq!(status, 404, "the template is gone");

    // Clean up what this test made.
    for index in [&young, &live] {
        search.request(Method::Delete, &format!("/{index}"), None).await;
    }
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        kafka.client_config().create().unwrap();
    let _ = admin
        .delete_topics(&[young.as_str(), live.as_str(), production.as_str()], &rdkafka::admin::AdminOptions::new())
        .await;
}

//! Leftovers of earlier test processes on a long-lived stack (`./dev services up`): topics, indices
//! and index templates named by [`crate::unique_name`] for a test process that is gone are deleted
//! the first time a test process connects to the shared services, so a dev stack used for weeks
//! does not fill up. What a live process named is never touched, nor anything created within the
//! last [`MIN_AGE`] (the name's clock), nor a name that does not parse as a test name.
//!
//! Why not a drop guard per test: a test that panics or is killed (the very runs that leave the
//! most behind) never runs its destructors. This is what testcontainers' reaper does for
//! containers, for the names inside the shared services.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;

/// Names younger than this are kept even when their process is gone (a test run's sibling
/// binaries, clock skew): only yesterday's litter is swept.
pub const MIN_AGE: Duration = Duration::from_secs(30 * 60);

/// The process id and creation time (milliseconds modulo 10⁸, as [`crate::unique_name`] writes
/// it) of a test name, or of a name derived from one (`<name>-2026.12.02`, `<name>.dlq`).
///
/// A test name ends in `-<pid>-<n>-<millis>`; the last such triple is taken. Derived names add a
/// date (`-2026.12.02`, whose digits are followed by `.` and a digit, so it is no `<millis>`) or a
/// suffix starting with `.` and a letter.
pub fn owner(name: &str) -> Option<(u32, u64)> {
    let parts: Vec<&str> = name.split('-').collect();
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let millis = |s: &str| -> Option<u64> {
        let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, rest) = s.split_at(end);
        let suffix_ok =
            rest.is_empty() || (rest.starts_with('.') && rest[1..].starts_with(|c: char| c.is_ascii_alphabetic()));
        (!num.is_empty() && num.len() <= 8 && suffix_ok).then(|| num.parse().ok()).flatten()
    };
    (0..parts.len().saturating_sub(2)).rev().find_map(|i| {
        let (pid, n, ms) = (parts[i], parts[i + 1], parts[i + 2]);
        if i == 0 || !digits(pid) || !digits(n) {
            return None; // a test name has a prefix before its pid
        }
        Some((pid.parse().ok()?, millis(ms)?))
    })
}

/// Whether a name made by a test process is litter: that process is gone and the name is older
/// than [`MIN_AGE`] (`now_millis` is the current time in milliseconds since the epoch).
pub fn is_stale(name: &str, now_millis: u128, alive: impl Fn(u32) -> bool) -> bool {
    let Some((pid, created)) = owner(name) else { return false };
    if alive(pid) {
        return false;
    }
    let now = (now_millis % 100_000_000) as u64;
    let age = (now + 100_000_000 - created) % 100_000_000;
    age >= MIN_AGE.as_millis() as u64
}

fn process_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn now_millis() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis()
}

/// [`kafka_now`], once per test process (called by [`crate::kafka`] for the shared broker).
pub async fn kafka(bootstrap: &str) {
    static DONE: AtomicBool = AtomicBool::new(false);
    if !DONE.swap(true, Ordering::SeqCst) {
        kafka_now(bootstrap).await;
    }
}

/// Deletes the stale topics of earlier test processes; returns their names.
pub async fn kafka_now(bootstrap: &str) -> Vec<String> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    let Ok(admin) = config.create::<AdminClient<DefaultClientContext>>() else { return Vec::new() };
    let Ok(metadata) = admin.inner().fetch_metadata(None, Duration::from_secs(10)) else { return Vec::new() };
    let now = now_millis();
    let stale: Vec<String> = metadata
        .topics()
        .iter()
        .map(|t| t.name().to_owned())
        .filter(|name| is_stale(name, now, process_alive))
        .collect();
    if stale.is_empty() {
        return stale;
    }
    let names: Vec<&str> = stale.iter().map(String::as_str).collect();
    match admin.delete_topics(&names, &AdminOptions::new()).await {
        Ok(_) => eprintln!("sweep: deleted {} topics left by earlier test processes", names.len()),
        Err(e) => eprintln!("sweep: deleting {} stale topics failed: {e}", names.len()),
    }
    stale
}

/// [`search_now`], once per test process (called by [`crate::elasticsearch`] for the shared node).
pub async fn search(url: &str) {
    static DONE: AtomicBool = AtomicBool::new(false);
    if !DONE.swap(true, Ordering::SeqCst) {
        search_now(url).await;
    }
}

/// Deletes the stale indices and index templates of earlier test processes; returns their names.
pub async fn search_now(url: &str) -> Vec<String> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("HTTP client");
    let now = now_millis();
    let get = |path: String| {
        let http = http.clone();
        async move { http.get(path).send().await.ok()?.json::<serde_json::Value>().await.ok() }
    };
    let mut indices = Vec::new();
    if let Some(list) = get(format!("{url}/_cat/indices?format=json&h=index&expand_wildcards=all")).await {
        for row in list.as_array().into_iter().flatten() {
            if let Some(name) = row["index"].as_str()
                && !name.starts_with('.')
                && is_stale(name, now, process_alive)
            {
                indices.push(name.to_owned());
            }
        }
    }
    // Comma-separated in batches: a URL stays short, one request deletes many.
    for chunk in indices.chunks(50) {
        let _ = http.delete(format!("{url}/{}", chunk.join(","))).send().await;
    }
    let mut templates = Vec::new();
    if let Some(body) = get(format!("{url}/_index_template")).await {
        for t in body["index_templates"].as_array().into_iter().flatten() {
            if let Some(name) = t["name"].as_str()
                && is_stale(name, now, process_alive)
                && http.delete(format!("{url}/_index_template/{name}")).send().await.is_ok()
            {
                templates.push(name.to_owned());
            }
        }
    }
    if !indices.is_empty() || !templates.is_empty() {
        eprintln!(
            "sweep: deleted {} indices and {} index templates left by earlier test processes",
            indices.len(),
            templates.len()
        );
    }
    indices.extend(templates);
    indices
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_of_test_names_and_names_derived_from_them() {
        let name = crate::unique_name("fm-row1");
        let (pid, _) = owner(&name).expect("a test name parses");
        assert_eq!(pid, std::process::id());
        assert_eq!(owner("sluice-view-4242-3-12345678"), Some((4242, 12_345_678)));
        assert_eq!(owner("sluice-view-4242-3-12345678-2026.12.02"), Some((4242, 12_345_678)));
        assert_eq!(owner("logs-shop-4242-0-99-2026.12.02"), Some((4242, 99)));
        assert_eq!(owner("t-4242-7-555.dlq"), Some((4242, 555)));
        // A numeric prefix segment does not hide the real triple (the last one counts).
        assert_eq!(owner("a-7-4242-1-777"), Some((4242, 777)));
        // Not test names: no prefix, no triple, the production names.
        for name in ["sluice.logs", "sluice-logs-2026.12.02", "4242-3-12345678", "sluice.logs.dlq", "x-1-2"] {
            assert_eq!(owner(name), None, "{name}");
        }
    }

    #[test]
    fn only_old_names_of_dead_processes_are_stale() {
        let now: u128 = 1_764_000_000_000; // ms since the epoch
        let at = |ago: u64| (now as u64 % 100_000_000 + 100_000_000 - ago) % 100_000_000;
        let old = format!("t-4242-0-{}", at(2 * 3_600_000));
        let young = format!("t-4242-0-{}", at(60_000));
        assert!(is_stale(&old, now, |_| false));
        assert!(!is_stale(&old, now, |pid| pid == 4242), "a live process keeps its names");
        assert!(!is_stale(&young, now, |_| false), "a name younger than MIN_AGE is kept");
        assert!(!is_stale("sluice-logs-2026.12.02", now, |_| false), "not a test name");
    }
}

//! Prometheus metrics of enrichment, registered as `shipper_enrich_*`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::filter::Excluded;

/// Why a record got path metadata only (the `reason` label of `shipper_enrich_misses`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Miss {
    /// The store answered [`super::Lookup::Unknown`] (pod collected, or the watch is disabled).
    Unknown,
    /// The store answered [`super::Lookup::Pending`] for longer than `kubernetes.wait_for_pod`.
    PendingTimeout,
    /// The store answered [`super::Lookup::Unavailable`] (API server down or refusing).
    ApiDown,
}

impl Miss {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Miss::Unknown => "unknown",
            Miss::PendingTimeout => "pending_timeout",
            Miss::ApiDown => "api_down",
        }
    }
}

/// A `reason` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// Why.
    pub reason: &'static str,
}

/// `resource` and `kind` labels of watch errors and restarts.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatchLabel {
    /// `pods` or `namespaces`.
    pub resource: &'static str,
    /// Error class (`forbidden`, `unauthorized`, `connect`, `gone`, `api`, `decode`, `config`,
    /// `other`), or `relist` for restarts.
    pub kind: &'static str,
}

/// Enrichment metrics. Clones share the same series.
#[derive(Debug, Clone, Default)]
pub struct EnrichMetrics {
    /// Records enriched from the pod watch.
    pub hits: Counter,
    /// Records with path metadata only (tag `metadata_from_path`), by [`Miss`] reason.
    pub misses: Family<Reason, Counter>,
    /// Records not shipped because a filter excluded them, by [`Excluded`] reason.
    pub filtered_records: Family<Reason, Counter>,
    /// Files not read because a filter excluded them, by [`Excluded`] reason.
    pub filtered_files: Family<Reason, Counter>,
    /// Watch (re)starts with a full list, by resource (`kind` = `relist`).
    pub relists: Family<WatchLabel, Counter>,
    /// Failed list/watch requests, by resource and error class.
    pub watch_errors: Family<WatchLabel, Counter>,
    /// Pods in the store (live and deleted within their grace).
    pub pods: Gauge,
    /// Deleted pods collected after `kubernetes.deleted_pod_grace`.
    pub pods_collected: Counter,
    /// 1 while the pod watch is current, 0 while starting or failing.
    pub synced: Gauge,
}

impl EnrichMetrics {
    /// New metrics registered in `registry` (under the registry's prefix, as `shipper_enrich_*`).
    pub fn register(registry: &mut Registry) -> Self {
        let m = EnrichMetrics::default();
        let r = registry;
        r.register("shipper_enrich_hits", "Records enriched from the pod watch", m.hits.clone());
        r.register(
            "shipper_enrich_misses",
            "Records with path metadata only (tag metadata_from_path), by reason",
            m.misses.clone(),
        );
        r.register(
            "shipper_enrich_filtered_records",
            "Records not shipped because a filter excluded them, by reason",
            m.filtered_records.clone(),
        );
        r.register(
            "shipper_enrich_filtered_files",
            "Files not read because a filter excluded them, by reason",
            m.filtered_files.clone(),
        );
        r.register("shipper_enrich_relists", "Watch (re)starts with a full list", m.relists.clone());
        r.register("shipper_enrich_watch_errors", "Failed list/watch requests by class", m.watch_errors.clone());
        r.register("shipper_enrich_pods", "Pods in the metadata store", m.pods.clone());
        r.register(
            "shipper_enrich_pods_collected",
            "Deleted pods removed after kubernetes.deleted_pod_grace",
            m.pods_collected.clone(),
        );
        r.register("shipper_enrich_synced", "1 while the pod watch is current", m.synced.clone());
        m
    }

    /// Counts a record that got path metadata only.
    pub fn miss(&self, reason: Miss) {
        self.misses.get_or_create(&Reason { reason: reason.as_str() }).inc();
    }

    /// The counter [`EnrichMetrics::miss`] increments for `reason` (kept per file, so records
    /// count without a lookup).
    pub fn miss_counter(&self, reason: Miss) -> Counter {
        self.misses.get_or_create(&Reason { reason: reason.as_str() }).clone()
    }

    /// Counts `n` records excluded by a filter.
    pub fn count_filtered_records(&self, reason: Excluded, n: u64) {
        self.filtered_records.get_or_create(&Reason { reason: reason.as_str() }).inc_by(n);
    }

    /// Counts a file excluded by a filter.
    pub fn count_filtered_file(&self, reason: Excluded) {
        self.filtered_files.get_or_create(&Reason { reason: reason.as_str() }).inc();
    }

    pub(crate) fn watch_error(&self, resource: &'static str, kind: &'static str) {
        self.watch_errors.get_or_create(&WatchLabel { resource, kind }).inc();
    }

    pub(crate) fn relist(&self, resource: &'static str) {
        self.relists.get_or_create(&WatchLabel { resource, kind: "relist" }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn registers_every_series_with_reasons() {
        let mut registry = Registry::with_prefix("sluice");
        let m = EnrichMetrics::register(&mut registry);
        m.hits.inc();
        m.miss(Miss::PendingTimeout);
        m.miss(Miss::ApiDown);
        m.count_filtered_records(Excluded::Annotation, 3);
        m.count_filtered_file(Excluded::OwnPod);
        m.watch_error("pods", "forbidden");
        m.relist("pods");
        m.pods.set(4);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        for line in [
            "sluice_shipper_enrich_hits_total 1",
            "sluice_shipper_enrich_misses_total{reason=\"pending_timeout\"} 1",
            "sluice_shipper_enrich_misses_total{reason=\"api_down\"} 1",
            "sluice_shipper_enrich_filtered_records_total{reason=\"annotation\"} 3",
            "sluice_shipper_enrich_filtered_files_total{reason=\"own_pod\"} 1",
            "sluice_shipper_enrich_watch_errors_total{resource=\"pods\",kind=\"forbidden\"} 1",
            "sluice_shipper_enrich_relists_total{resource=\"pods\",kind=\"relist\"} 1",
            "sluice_shipper_enrich_pods 4",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
    }
}

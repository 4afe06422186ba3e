//! Which records a `logs` or `top` command looks at, as one Elasticsearch `bool` query.
//!
//! Names may be globs (`web-*`, `?`): a `wildcard` query on the keyword field, otherwise a `term`.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use crate::selector::LabelSelector;

/// `@timestamp`: `date_nanos` in the template.
pub const TIMESTAMP: &str = "@timestamp";

/// A selection of records.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Namespaces (globs); empty = all.
    pub namespaces: Vec<String>,
    /// Pod names (globs); empty = all.
    pub pods: Vec<String>,
    /// Container names (globs); empty = all.
    pub containers: Vec<String>,
    /// Node names (globs); empty = all.
    pub nodes: Vec<String>,
    /// Pod label selector.
    pub labels: Option<LabelSelector>,
    /// `stdout` or `stderr`.
    pub stream: Option<String>,
    /// Free text matched on `message` (all words).
    pub text: Option<String>,
    /// Records at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Records before this time.
    pub until: Option<DateTime<Utc>>,
}

/// RFC 3339 with nanoseconds, the form `date_nanos` range queries take.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

fn names(field: &str, values: &[String]) -> Option<Value> {
    let one = |v: &String| {
        if v.contains(['*', '?']) { json!({"wildcard": {field: {"value": v}}}) } else { json!({"term": {field: v}}) }
    };
    match values {
        [] => None,
        [v] => Some(one(v)),
        vs => Some(json!({"bool": {"should": vs.iter().map(one).collect::<Vec<_>>(), "minimum_should_match": 1}})),
    }
}

impl Selection {
    /// The query; `from` (inclusive) narrows `since` further (follow windows).
    pub fn query(&self, from: Option<DateTime<Utc>>) -> Value {
        let mut filter = Vec::new();
        let mut must_not = Vec::new();
        filter.extend(names("kubernetes.namespace", &self.namespaces));
        filter.extend(names("kubernetes.pod.name", &self.pods));
        filter.extend(names("kubernetes.container.name", &self.containers));
        filter.extend(names("kubernetes.node.name", &self.nodes));
        if let Some(labels) = &self.labels {
            let (f, n) = labels.clauses();
            filter.extend(f);
            must_not.extend(n);
        }
        if let Some(s) = &self.stream {
            filter.push(json!({"term": {"stream": s}}));
        }
        let since = match (self.since, from) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        if since.is_some() || self.until.is_some() {
            let mut range = serde_json::Map::new();
            if let Some(t) = since {
                range.insert("gte".into(), json!(rfc3339(t)));
            }
            if let Some(t) = self.until {
                range.insert("lt".into(), json!(rfc3339(t)));
            }
            range.insert("format".into(), json!("strict_date_optional_time_nanos"));
            filter.push(json!({"range": {TIMESTAMP: range}}));
        }
        let mut bool_ = json!({"filter": filter});
        if !must_not.is_empty() {
            bool_["must_not"] = json!(must_not);
        }
        if let Some(t) = &self.text {
            bool_["must"] = json!([{"match": {"message": {"query": t, "operator": "and"}}}]);
        }
        json!({"bool": bool_})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_one_bool_query() {
        let s = Selection {
            namespaces: vec!["shop".into(), "team-*".into()],
            pods: vec!["web-*".into()],
            containers: vec!["app".into()],
            labels: Some("tier!=db".parse().unwrap()),
            stream: Some("stderr".into()),
            text: Some("timeout".into()),
            since: Some("2026-12-01T00:00:00Z".parse().unwrap()),
            ..Default::default()
        };
        let q = s.query(Some("2026-12-02T00:00:00.5Z".parse().unwrap()));
        let f = &q["bool"]["filter"];
        assert_eq!(f[0]["bool"]["should"][1], json!({"wildcard": {"kubernetes.namespace": {"value": "team-*"}}}));
        assert_eq!(f[1], json!({"wildcard": {"kubernetes.pod.name": {"value": "web-*"}}}));
        assert_eq!(f[2], json!({"term": {"kubernetes.container.name": "app"}}));
        assert_eq!(f[3], json!({"term": {"stream": "stderr"}}));
        assert_eq!(f[4]["range"]["@timestamp"]["gte"], "2026-12-02T00:00:00.500000000Z");
        assert_eq!(q["bool"]["must_not"][0], json!({"term": {"kubernetes.labels.tier": "db"}}));
        assert_eq!(q["bool"]["must"][0]["match"]["message"]["query"], "timeout");
    }
}

//! Classification of `_bulk` responses: the fate of every item and of whole requests. Pure
//! functions, no I/O.

use serde::Deserialize;

/// The fate of one bulk item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemOutcome {
    /// Created.
    Indexed,
    /// 409 `version_conflict_engine_exception`: a document with this `_id` exists (an earlier
    /// delivery).
    Duplicate,
    /// Temporary failure: send again.
    Retry {
        /// Metric label: the Elasticsearch error type, or `http_<status>`.
        reason: String,
        /// Whether this is back-pressure (429) that should lower the concurrency.
        overload: bool,
    },
    /// Writes are refused for a reason that is not the record's fault and not overload.
    Blocked {
        /// The error, for logs.
        reason: String,
    },
    /// Permanent failure of this record: dead-letter it.
    Reject {
        /// Error class.
        error_type: String,
        /// Error reason.
        reason: String,
    },
}

/// Error types that mean "writes are refused" rather than "this document is bad": an operator's
/// state of the cluster or index (blocks, privileges, a missing index with auto-create off, a
/// closed index), not the record's fault.
pub const BLOCKING_ERRORS: [&str; 4] =
    ["cluster_block_exception", "security_exception", "index_not_found_exception", "index_closed_exception"];

/// The only 409 that means "this `_id` exists already" for an `op_type=create`.
pub const VERSION_CONFLICT: &str = "version_conflict_engine_exception";

/// Classifies one item from its status and error.
pub fn classify_item(status: u16, error: Option<&ItemError>) -> ItemOutcome {
    let error_type = error.map_or("", |e| e.kind.as_str());
    match status {
        200..=299 => ItemOutcome::Indexed,
        409 if error_type == VERSION_CONFLICT => ItemOutcome::Duplicate,
        // Another conflict (e.g. a concurrent index creation): not proof that the document exists.
        409 => ItemOutcome::Retry { reason: reason_label(error_type, status), overload: false },
        _ if BLOCKING_ERRORS.contains(&error_type) => {
            ItemOutcome::Blocked { reason: error.map_or_else(String::new, ItemError::describe) }
        }
        429 => ItemOutcome::Retry { reason: reason_label(error_type, status), overload: true },
        500..=599 => ItemOutcome::Retry { reason: reason_label(error_type, status), overload: false },
        _ => ItemOutcome::Reject {
            error_type: if error_type.is_empty() { format!("http_{status}") } else { error_type.to_owned() },
            reason: error.map_or_else(|| format!("HTTP {status}"), ItemError::describe),
        },
    }
}

fn reason_label(error_type: &str, status: u16) -> String {
    if error_type.is_empty() { format!("http_{status}") } else { error_type.to_owned() }
}

/// The `error` object of a bulk item (as trimmed by [`BULK_FILTER_PATH`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ItemError {
    /// `type`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// `reason`.
    #[serde(default)]
    pub reason: Option<String>,
    /// `caused_by`.
    #[serde(default)]
    pub caused_by: Option<Cause>,
}

/// `caused_by` of an item error.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Cause {
    /// `type`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// `reason`.
    #[serde(default)]
    pub reason: Option<String>,
}

impl ItemError {
    /// `reason (caused by type: reason)`.
    pub fn describe(&self) -> String {
        let mut text = self.reason.clone().unwrap_or_else(|| self.kind.clone());
        if let Some(cause) = &self.caused_by {
            text.push_str(&format!(" (caused by {}: {})", cause.kind, cause.reason.as_deref().unwrap_or("")));
        }
        text
    }
}

#[derive(Deserialize)]
struct RawResponse {
    #[serde(default)]
    errors: bool,
    #[serde(default)]
    items: Vec<RawWrapper>,
}

#[derive(Deserialize)]
struct RawWrapper {
    #[serde(alias = "index", alias = "update", alias = "delete")]
    create: RawItem,
}

#[derive(Deserialize)]
struct RawItem {
    status: u16,
    #[serde(default)]
    error: Option<ItemError>,
}

/// What a whole `_bulk` response means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestOutcome {
    /// Per-item outcomes, in request order.
    Items(Vec<ItemOutcome>),
    /// Send the whole batch again.
    RetryAll {
        /// Metric label.
        reason: String,
        /// Back-pressure (429/503): lower the concurrency.
        overload: bool,
    },
    /// The request as a whole was refused by Elasticsearch itself (its JSON error), or was too
    /// large (413): split it to isolate the culprit.
    Split {
        /// Error type.
        error_type: String,
        /// Error reason.
        reason: String,
    },
    /// Writes refused (authentication, authorization, blocks), or a 4xx that is not
    /// Elasticsearch's verdict (a proxy's 404/400): probe slowly, dead-letter nothing.
    Blocked {
        /// The error.
        reason: String,
    },
}

/// Classifies a `_bulk` HTTP response for a request of `expected` items.
///
/// A 200 settles items only when it carries exactly one item per document (a proxy's or a
/// broken node's `200 {}` settles nothing). Only a 413 and Elasticsearch's own JSON error
/// (`{"error":{"type":…},"status":…}`) split a request (the record may be the cause); other 4xx
/// come from something in between (a proxy's 404, 400, 405) and say nothing about the records:
/// blocked, probed slowly. A 408 (a proxy's or Envoy's request timeout) is retried like a timeout.
pub fn classify_response(status: u16, body: &[u8], expected: usize) -> RequestOutcome {
    match status {
        200 => match serde_json::from_slice::<RawResponse>(body) {
            Ok(r) if r.items.len() == expected && !r.errors => {
                RequestOutcome::Items(vec![ItemOutcome::Indexed; expected])
            }
            Ok(r) if r.items.len() == expected => RequestOutcome::Items(
                r.items.iter().map(|w| classify_item(w.create.status, w.create.error.as_ref())).collect(),
            ),
            // Not one item per document (or not a bulk answer at all): nothing is known.
            Ok(_) | Err(_) => RequestOutcome::RetryAll { reason: "bad_response".into(), overload: false },
        },
        408 => RequestOutcome::RetryAll { reason: "http_408".into(), overload: true },
        429 => RequestOutcome::RetryAll { reason: "http_429".into(), overload: true },
        500..=599 => RequestOutcome::RetryAll { reason: format!("http_{status}"), overload: status == 503 },
        401 | 403 => RequestOutcome::Blocked { reason: format!("HTTP {status}: {}", error_text(body)) },
        413 => {
            let (error_type, reason) = top_error(body).unwrap_or_else(|| (String::new(), error_text(body)));
            let error_type = if error_type.is_empty() { "http_413".to_owned() } else { error_type };
            // Elasticsearch answers a request over `http.max_content_length` with an empty body:
            // the dead letter must still say why.
            let reason = if reason.trim().is_empty() {
                "HTTP 413 Request Entity Too Large: the request is larger than Elasticsearch's \
                 http.max_content_length (or a proxy's limit)"
                    .to_owned()
            } else {
                reason
            };
            RequestOutcome::Split { error_type, reason }
        }
        _ => match top_error(body) {
            Some((error_type, reason)) if BLOCKING_ERRORS.contains(&error_type.as_str()) => {
                RequestOutcome::Blocked { reason }
            }
            Some((error_type, reason)) => RequestOutcome::Split { error_type, reason },
            None => RequestOutcome::Blocked {
                reason: format!(
                    "HTTP {status} without an Elasticsearch error (a proxy or load balancer in between?): {}",
                    error_text(body)
                ),
            },
        },
    }
}

fn error_text(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    text.chars().take(512).collect()
}

/// Elasticsearch's own error body, `{"error":{"type":…,"reason":…},"status":…}`: its type and
/// description. `None` for anything else (HTML, text, other JSON).
fn top_error(body: &[u8]) -> Option<(String, String)> {
    #[derive(Deserialize)]
    struct Top {
        error: ItemError,
        #[serde(default)]
        status: Option<u16>,
    }
    let top = serde_json::from_slice::<Top>(body).ok()?;
    (!top.error.kind.is_empty() && top.status.is_some()).then(|| (top.error.kind.clone(), top.error.describe()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(kind: &str, reason: &str) -> ItemError {
        ItemError { kind: kind.into(), reason: Some(reason.into()), caused_by: None }
    }

    #[test]
    fn item_classification() {
        assert_eq!(classify_item(201, None), ItemOutcome::Indexed);
        assert_eq!(classify_item(200, None), ItemOutcome::Indexed);
        assert_eq!(
            classify_item(409, Some(&error("version_conflict_engine_exception", "exists"))),
            ItemOutcome::Duplicate
        );
        assert_eq!(
            classify_item(429, Some(&error("es_rejected_execution_exception", "queue full"))),
            ItemOutcome::Retry { reason: "es_rejected_execution_exception".into(), overload: true }
        );
        assert_eq!(
            classify_item(503, Some(&error("unavailable_shards_exception", "primary not active"))),
            ItemOutcome::Retry { reason: "unavailable_shards_exception".into(), overload: false }
        );
        assert_eq!(classify_item(500, None), ItemOutcome::Retry { reason: "http_500".into(), overload: false });
        let mapping = ItemError {
            kind: "document_parsing_exception".into(),
            reason: Some("[1:20] failed to parse field [log.offset] of type [long]".into()),
            caused_by: Some(Cause {
                kind: "illegal_argument_exception".into(),
                reason: Some("For input string".into()),
            }),
        };
        assert_eq!(
            classify_item(400, Some(&mapping)),
            ItemOutcome::Reject {
                error_type: "document_parsing_exception".into(),
                reason: "[1:20] failed to parse field [log.offset] of type [long] (caused by illegal_argument_exception: For input string)".into()
            }
        );
        assert!(matches!(classify_item(400, None), ItemOutcome::Reject { error_type, .. } if error_type == "http_400"));
    }

    #[test]
    fn blocks_are_not_overload_and_not_dead_letters() {
        let flood = error(
            "cluster_block_exception",
            "index [x] blocked by: [TOO_MANY_REQUESTS/12/disk usage exceeded flood-stage watermark, index has read-only-allow-delete block];",
        );
        assert!(matches!(classify_item(429, Some(&flood)), ItemOutcome::Blocked { .. }));
        let read_only = error("cluster_block_exception", "index [x] blocked by: [FORBIDDEN/8/index write (api)];");
        assert!(matches!(classify_item(403, Some(&read_only)), ItemOutcome::Blocked { .. }));
        let denied = error("security_exception", "action [indices:data/write/bulk[s]] is unauthorized");
        assert!(matches!(classify_item(403, Some(&denied)), ItemOutcome::Blocked { .. }));
    }

    #[test]
    fn response_without_errors_is_all_indexed() {
        let body = br#"{"errors":false,"items":[{"create":{"status":201}},{"create":{"status":201}}]}"#;
        assert_eq!(classify_response(200, body, 2), RequestOutcome::Items(vec![ItemOutcome::Indexed; 2]));
    }

    // Issue #9, scenario 16: a 200 that does not account for every document settles nothing.
    #[test]
    fn a_200_without_one_item_per_document_is_retried() {
        for body in [
            &br#"{"errors":false}"#[..],
            br#"{"errors":false,"items":[]}"#,
            br#"{"errors":false,"items":[{"create":{"status":201}},{"create":{"status":201}}]}"#,
            br#"{}"#,
        ] {
            let outcome = classify_response(200, body, 3);
            assert!(
                matches!(outcome, RequestOutcome::RetryAll { overload: false, .. }),
                "{}: {outcome:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    // Issue #9, scenario 18: only a version conflict means "already indexed".
    #[test]
    fn only_version_conflicts_are_duplicates_and_closed_indices_are_blocked() {
        let other_conflict = error("resource_already_exists_exception", "index [x] already exists");
        assert!(
            !matches!(classify_item(409, Some(&other_conflict)), ItemOutcome::Duplicate),
            "{:?}",
            classify_item(409, Some(&other_conflict))
        );
        assert!(!matches!(classify_item(409, None), ItemOutcome::Duplicate));
        let closed = error("index_closed_exception", "closed");
        assert!(
            matches!(classify_item(400, Some(&closed)), ItemOutcome::Blocked { .. }),
            "{:?}",
            classify_item(400, Some(&closed))
        );
        let top = br#"{"error":{"type":"index_closed_exception","reason":"closed"},"status":400}"#;
        assert!(matches!(classify_response(400, top, 2), RequestOutcome::Blocked { .. }));
    }

    // Issue #9, scenario 15: only Elasticsearch's own verdict on the request splits it.
    #[test]
    fn request_level_4xx_from_a_proxy_is_not_a_verdict_on_the_records() {
        // A proxy's 404, 400 and 405 (HTML or plain text): blocked, probed slowly, nothing dead-lettered.
        for (status, body) in [
            (404, &b"<html><body>404 Not Found</body></html>"[..]),
            (400, b"Bad Request"),
            (405, b""),
            (404, br#"{"message":"no route"}"#),
        ] {
            let outcome = classify_response(status, body, 4);
            assert!(matches!(outcome, RequestOutcome::Blocked { .. }), "{status}: {outcome:?}");
        }
        // Envoy's request timeout.
        assert!(matches!(classify_response(408, b"upstream request timeout", 4), RequestOutcome::RetryAll { .. }));
        // 413 (from a proxy or from Elasticsearch): split.
        assert!(matches!(classify_response(413, b"<html>too large</html>", 4), RequestOutcome::Split { .. }));
        // Elasticsearch's own JSON error: split to isolate the culprit.
        let es = br#"{"error":{"root_cause":[],"type":"x_content_parse_exception","reason":"[1:2] Unexpected"},"status":400}"#;
        assert!(matches!(classify_response(400, es, 4), RequestOutcome::Split { .. }));
    }

    #[test]
    fn mixed_response_is_classified_per_item_in_order() {
        let body = br#"{"errors":true,"items":[
            {"create":{"status":201}},
            {"create":{"status":409,"error":{"type":"version_conflict_engine_exception","reason":"document already exists"}}},
            {"create":{"status":429,"error":{"type":"es_rejected_execution_exception","reason":"rejected execution"}}},
            {"create":{"status":400,"error":{"type":"document_parsing_exception","reason":"failed to parse"}}}
        ]}"#;
        let RequestOutcome::Items(items) = classify_response(200, body, 4) else { panic!() };
        assert_eq!(items[0], ItemOutcome::Indexed);
        assert_eq!(items[1], ItemOutcome::Duplicate);
        assert!(matches!(items[2], ItemOutcome::Retry { overload: true, .. }));
        assert!(
            matches!(&items[3], ItemOutcome::Reject { error_type, .. } if error_type == "document_parsing_exception")
        );
    }

    #[test]
    fn whole_request_outcomes() {
        assert_eq!(
            classify_response(429, b"{}", 5),
            RequestOutcome::RetryAll { reason: "http_429".into(), overload: true }
        );
        assert_eq!(
            classify_response(503, b"", 5),
            RequestOutcome::RetryAll { reason: "http_503".into(), overload: true }
        );
        assert!(matches!(classify_response(502, b"", 5), RequestOutcome::RetryAll { overload: false, .. }));
        assert!(matches!(classify_response(401, b"{}", 5), RequestOutcome::Blocked { .. }));
        let too_large = classify_response(413, b"", 5);
        assert!(matches!(too_large, RequestOutcome::Split { ref error_type, .. } if error_type == "http_413"));
        // Hostile input (issue #14): Elasticsearch's 413 has an empty body; the dead letter of the
        // record that is too large alone still carries a reason.
        assert!(
            matches!(too_large, RequestOutcome::Split { ref reason, .. } if reason.contains("http.max_content_length")),
            "{too_large:?}"
        );
        let malformed = br#"{"error":{"type":"illegal_argument_exception","reason":"Malformed action/metadata line [1]"},"status":400}"#;
        assert!(
            matches!(classify_response(400, malformed, 5), RequestOutcome::Split { ref error_type, .. } if error_type == "illegal_argument_exception")
        );
        let blocked = br#"{"error":{"type":"cluster_block_exception","reason":"blocked by: [FORBIDDEN/12/index read-only / allow delete (api)]"},"status":403}"#;
        assert!(matches!(classify_response(403, blocked, 5), RequestOutcome::Blocked { .. }));
    }

    #[test]
    fn inconsistent_responses_are_retried_whole() {
        let body = br#"{"errors":true,"items":[{"create":{"status":201}}]}"#;
        assert!(matches!(classify_response(200, body, 2), RequestOutcome::RetryAll { .. }));
        assert!(matches!(classify_response(200, b"not json", 2), RequestOutcome::RetryAll { .. }));
    }
}

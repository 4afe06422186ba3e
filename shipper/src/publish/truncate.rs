//! Fitting a record into Kafka's message size limit: the `message` field is cut at a UTF-8 boundary
//! and the record tagged `truncated`; its id and every other field stay as they were.

use std::borrow::Cow;

use sluice_common::schema::{Document, tag};

/// Why a document could not be made small enough.
#[derive(Debug, thiserror::Error)]
pub enum TruncateError {
    /// The bytes are not a schema v1 document.
    #[error("not a schema v1 document: {0}")]
    NotADocument(#[from] serde_json::Error),
    /// Even with an empty message the document is larger than the limit.
    #[error("the document without its message is {0} bytes, over the limit")]
    TooLargeWithoutMessage(usize),
}

/// Re-encodes `value` (a schema v1 document) with its `message` shortened so that the JSON is at most
/// `max` bytes, adding the `truncated` tag. Returns the new JSON.
pub fn truncate_document(value: &[u8], max: usize) -> Result<Vec<u8>, TruncateError> {
    let mut doc: Document<'_> = serde_json::from_slice(value)?;
    if !doc.tags.iter().any(|t| t == tag::TRUNCATED) {
        doc.tags.insert(0, Cow::Borrowed(tag::TRUNCATED));
    }
    let message = doc.message.clone().into_owned();
    let mut out = Vec::with_capacity(max.min(value.len()));
    let encode = |doc: &Document<'_>, out: &mut Vec<u8>| -> Result<usize, TruncateError> {
        out.clear();
        serde_json::to_writer(&mut *out, doc)?;
        Ok(out.len())
    };
    doc.message = Cow::Borrowed("");
    let skeleton = encode(&doc, &mut out)?;
    if skeleton > max {
        return Err(TruncateError::TooLargeWithoutMessage(skeleton));
    }
    // Escaping makes the encoded length differ from the byte length: binary search the longest
    // prefix (cut at a char boundary) whose document fits.
    let (mut lo, mut hi) = (0usize, message.len());
    while lo < hi {
        let mid = floor_char_boundary(&message, lo + (hi - lo).div_ceil(2));
        if mid <= lo {
            break;
        }
        doc.message = Cow::Borrowed(&message[..mid]);
        if encode(&doc, &mut out)? <= max {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    doc.message = Cow::Borrowed(&message[..lo]);
    encode(&doc, &mut out)?;
    Ok(out)
}

/// The largest char boundary of `s` at or below `i`.
fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(message: &str, tags: &[&str]) -> Vec<u8> {
        let mut d: Document<'_> = serde_json::from_str(include_str!("../../../docs/golden-document.json")).unwrap();
        d.message = Cow::Owned(message.to_owned());
        d.tags = tags.iter().map(|t| Cow::Owned(t.to_string())).collect();
        serde_json::to_vec(&d).unwrap()
    }

    #[test]
    fn cuts_at_a_utf8_boundary_and_tags() {
        let big = doc(&"é😀x".repeat(5000), &["multiline"]);
        let out = truncate_document(&big, 4096).unwrap();
        assert!(out.len() <= 4096 && out.len() > 3900, "{}", out.len());
        let d: Document<'_> = serde_json::from_slice(&out).unwrap();
        assert!("é😀x".repeat(5000).starts_with(d.message.as_ref()));
        assert_eq!(d.tags, vec!["truncated", "multiline"]);
    }

    #[test]
    fn escaped_characters_are_measured_encoded() {
        // Each control byte is six bytes encoded (\u0001).
        let big = doc(&"\u{1}".repeat(10_000), &[]);
        let out = truncate_document(&big, 5000).unwrap();
        assert!(out.len() <= 5000, "{}", out.len());
        let d: Document<'_> = serde_json::from_slice(&out).unwrap();
        assert!(d.message.len() > 500);
        assert_eq!(d.tags, vec!["truncated"]);
    }

    #[test]
    fn tag_is_not_repeated_and_limit_below_skeleton_is_an_error() {
        let big = doc(&"x".repeat(3000), &["truncated"]);
        let out = truncate_document(&big, 1000).unwrap();
        let d: Document<'_> = serde_json::from_slice(&out).unwrap();
        assert_eq!(d.tags, vec!["truncated"]);
        assert!(matches!(truncate_document(&big, 50), Err(TruncateError::TooLargeWithoutMessage(_))));
        assert!(truncate_document(b"{]", 50).is_err());
    }
}

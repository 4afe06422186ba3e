//! Line formats: CRI ([`cri`]) and docker json-file ([`docker`]), detected per file.
//!
//! A parser turns one physical line (without its `\n`) into a [`Fragment`]: timestamp, stream,
//! whether it is partial, and content. Reassembly of partial fragments is [`crate::reassemble`]'s job.

use std::borrow::Cow;

use sluice_common::schema::Stream;

pub use crate::config::Format;

pub mod cri;
pub mod docker;
pub mod timestamp;

/// One parsed physical line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment<'a> {
    /// The timestamp as written (validated and normalised when the record is built).
    pub timestamp: Cow<'a, [u8]>,
    /// Output stream.
    pub stream: Stream,
    /// More fragments of the same line follow (CRI `P`, docker `log` without trailing newline).
    pub partial: bool,
    /// The content, without the line terminator of a final fragment.
    pub content: Cow<'a, [u8]>,
}

/// Why a line did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The line has fewer fields than the format needs.
    #[error("missing field")]
    MissingField,
    /// The timestamp is not RFC 3339.
    #[error("invalid timestamp")]
    Timestamp,
    /// The stream is neither `stdout` nor `stderr`.
    #[error("invalid stream")]
    Stream,
    /// The CRI tag is neither `P` nor `F`.
    #[error("invalid partial tag")]
    Tag,
    /// The docker line is not the expected JSON object.
    #[error("invalid JSON")]
    Json,
}

impl ParseError {
    /// Short label for the `reason` of the parse-error metric.
    pub fn label(self) -> &'static str {
        match self {
            ParseError::MissingField => "missing_field",
            ParseError::Timestamp => "timestamp",
            ParseError::Stream => "stream",
            ParseError::Tag => "tag",
            ParseError::Json => "json",
        }
    }
}

/// Detects the format of a file from its first line: a JSON object is docker, anything else CRI.
pub fn detect(first_line: &[u8]) -> Format {
    let trimmed = first_line.iter().position(|c| !c.is_ascii_whitespace()).map(|i| &first_line[i..]);
    match trimmed {
        Some([b'{', ..]) => Format::Docker,
        _ => Format::Cri,
    }
}

/// Parses one physical line (without `\n`) in `format` (`Auto` is treated as CRI).
pub fn parse_line(format: Format, line: &[u8]) -> Result<Fragment<'_>, ParseError> {
    match format {
        Format::Docker => docker::parse(line),
        Format::Cri | Format::Auto => cri::parse(line),
    }
}

/// Parses a stream name.
pub fn parse_stream(b: &[u8]) -> Option<Stream> {
    match b {
        b"stdout" => Some(Stream::Stdout),
        b"stderr" => Some(Stream::Stderr),
        _ => None,
    }
}

//! How `sluice logs` prints a record: `ns/pod/container` prefix (coloured per pod on a terminal),
//! or the raw message, one JSON object, or a wide line; optional timestamps in UTC or local time.
//!
//! Colours are plain ANSI SGR codes (a dozen fixed colours, picked by a hash of namespace/pod): a
//! terminal-styling crate would add nothing here. Every coloured prefix ends with a reset, so an
//! interrupted run never leaves the terminal coloured.

use std::io::{self, Write};

use chrono::{DateTime, Local, SecondsFormat, Utc};
use clap::ValueEnum;
use serde_json::{Value, json};

/// Output format (`-o`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Format {
    /// `ns/pod/container message`.
    #[default]
    Default,
    /// The message only, like `kubectl logs`.
    Raw,
    /// One JSON object per record: `{"id", "index", "doc"}` (the stored document).
    Json,
    /// Time, node, `ns/pod/container`, stream, message.
    Wide,
}

/// Colours used for prefixes (SGR foreground codes: normal and bright red..cyan).
const PALETTE: [u8; 12] = [31, 32, 33, 34, 35, 36, 91, 92, 93, 94, 95, 96];

/// The SGR colour of a pod (stable: FNV-1a of `namespace/pod`).
pub fn pod_colour(namespace: &str, pod: &str) -> u8 {
    let mut h: u32 = 0x811c_9dc5;
    for b in namespace.bytes().chain([b'/']).chain(pod.bytes()) {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    PALETTE[(h % PALETTE.len() as u32) as usize]
}

/// A record to print.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// `_id`.
    pub id: &'a str,
    /// `_index`.
    pub index: &'a str,
    /// `_source`.
    pub doc: &'a Value,
}

impl Record<'_> {
    fn str(&self, path: &[&str]) -> &str {
        let mut v = self.doc;
        for p in path {
            v = &v[*p];
        }
        v.as_str().unwrap_or("")
    }

    /// `message`.
    pub fn message(&self) -> &str {
        self.str(&["message"])
    }
}

/// Prints records to a writer.
#[derive(Debug)]
pub struct Printer<W: Write> {
    out: W,
    format: Format,
    colour: bool,
    timestamps: bool,
    local_time: bool,
}

impl<W: Write> Printer<W> {
    /// A printer; `colour` only for a terminal.
    pub fn new(out: W, format: Format, colour: bool, timestamps: bool, local_time: bool) -> Printer<W> {
        Printer { out, format, colour, timestamps, local_time }
    }

    fn time(&self, rec: &Record<'_>) -> String {
        let raw = rec.str(&["@timestamp"]);
        match DateTime::parse_from_rfc3339(raw) {
            Ok(t) if self.local_time => t.with_timezone(&Local).to_rfc3339_opts(SecondsFormat::AutoSi, false),
            Ok(t) => t.with_timezone(&Utc).to_rfc3339_opts(SecondsFormat::AutoSi, true),
            Err(_) => raw.to_owned(),
        }
    }

    /// Prints one record (a multi-line message stays whole).
    pub fn record(&mut self, rec: &Record<'_>) -> io::Result<()> {
        let ns = rec.str(&["kubernetes", "namespace"]);
        let pod = rec.str(&["kubernetes", "pod", "name"]);
        let container = rec.str(&["kubernetes", "container", "name"]);
        let message = rec.message();
        match self.format {
            Format::Json => {
                let line = json!({"id": rec.id, "index": rec.index, "doc": rec.doc});
                writeln!(self.out, "{line}")
            }
            Format::Raw => {
                if self.timestamps {
                    write!(self.out, "{} ", self.time(rec))?;
                }
                writeln!(self.out, "{message}")
            }
            Format::Default | Format::Wide => {
                if self.timestamps || self.format == Format::Wide {
                    write!(self.out, "{} ", self.time(rec))?;
                }
                if self.format == Format::Wide {
                    write!(self.out, "{} ", rec.str(&["kubernetes", "node", "name"]))?;
                }
                if self.colour {
                    write!(self.out, "\x1b[{}m{ns}/{pod}/{container}\x1b[0m ", pod_colour(ns, pod))?;
                } else {
                    write!(self.out, "{ns}/{pod}/{container} ")?;
                }
                if self.format == Format::Wide {
                    write!(self.out, "{} ", rec.str(&["stream"]))?;
                }
                writeln!(self.out, "{message}")
            }
        }
    }

    /// Flushes the writer.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// The writer.
    pub fn into_inner(self) -> W {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Value {
        json!({"@timestamp": "2026-12-02T10:00:00.123456789Z", "message": "boom\n  at a\n  at b", "stream": "stderr",
               "kubernetes": {"namespace": "shop", "pod": {"name": "web-0"}, "container": {"name": "app"},
               "node": {"name": "node-1"}}})
    }

    fn print(format: Format, colour: bool, timestamps: bool) -> String {
        let doc = doc();
        let mut p = Printer::new(Vec::new(), format, colour, timestamps, false);
        p.record(&Record { id: "g-1", index: "i", doc: &doc }).unwrap();
        String::from_utf8(p.into_inner()).unwrap()
    }

    #[test]
    fn formats() {
        assert_eq!(print(Format::Default, false, false), "shop/web-0/app boom\n  at a\n  at b\n");
        assert_eq!(
            print(Format::Default, false, true),
            "2026-12-02T10:00:00.123456789Z shop/web-0/app boom\n  at a\n  at b\n"
        );
        let c = pod_colour("shop", "web-0");
        assert_eq!(
            print(Format::Default, true, false),
            format!("\x1b[{c}mshop/web-0/app\x1b[0m boom\n  at a\n  at b\n")
        );
        assert_eq!(print(Format::Raw, true, false), "boom\n  at a\n  at b\n");
        assert_eq!(
            print(Format::Wide, false, false),
            "2026-12-02T10:00:00.123456789Z node-1 shop/web-0/app stderr boom\n  at a\n  at b\n"
        );
        let j: Value = serde_json::from_str(print(Format::Json, true, false).trim_end()).unwrap();
        assert_eq!(j, json!({"id": "g-1", "index": "i", "doc": doc()}));
    }
}

//! Which metric names the binaries declare, read from their sources — so that a test helper can
//! tell "this metric has no sample yet" (0) from "no binary has a metric of this name" (a renamed,
//! removed or misspelled metric, which must fail the test instead of reading as 0).
//!
//! prometheus-client leaves a family out of `/metrics` until it has a sample (a `Family` before its
//! first label set), so the scrape alone cannot tell the two apart. The names come from the
//! `register("name", "help", [unit,] m.field.clone())` / `register_with_unit(…)` calls in the
//! sources of `sluice-shipper` and `sluice-indexer` (every `.rs` file under their `src/`), joined
//! as prometheus-client joins them: the root prefix of `Registry::with_prefix("…")` in the
//! binary's `main.rs`, the `sub_registry_with_prefix("…")` of the same file if any, the name, and
//! the unit (`register_with_unit`). A counter registered as `docs` is exposed as `docs_total`,
//! so a sample name is matched against a family *and its kind*: `_total` for counters, nothing
//! for gauges, `_bucket` / `_sum` / `_count` for histograms. The kind comes from the type of the
//! field the call registers (`docs: Family<Labels, Counter>` → counter).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The crates whose binaries expose `/metrics` (directories of the workspace).
pub const METRIC_CRATES: [&str; 2] = ["shipper", "indexer"];

/// The kind of a metric family, as far as the sample names go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Samples `<family>_total` (and `_created`).
    Counter,
    /// Samples `<family>`.
    Gauge,
    /// Samples `<family>_bucket`, `_sum`, `_count` (and `_created`).
    Histogram,
    /// Samples `<family>_info`.
    Info,
    /// The registered field's type was not recognised: any sample suffix is accepted.
    Unknown,
}

impl Kind {
    /// The suffixes prometheus-client appends to the family name in sample lines.
    pub fn sample_suffixes(self) -> &'static [&'static str] {
        match self {
            Kind::Counter => &["_total", "_created"],
            Kind::Gauge => &[""],
            Kind::Histogram => &["_bucket", "_sum", "_count", "_created"],
            Kind::Info => &["_info"],
            Kind::Unknown => &["", "_total", "_bucket", "_sum", "_count", "_created", "_info"],
        }
    }

    /// The kind of a `# TYPE` line's type (`counter`, `gauge`, …).
    pub fn from_type_line(kind: &str) -> Kind {
        match kind {
            "counter" => Kind::Counter,
            "gauge" => Kind::Gauge,
            "histogram" => Kind::Histogram,
            "info" => Kind::Info,
            _ => Kind::Unknown,
        }
    }

    /// The kind of a registered field from its Rust type (`Family<Labels, Counter>`, `Gauge`, …).
    fn from_rust_type(ty: &str) -> Kind {
        if ty.contains("Histogram") {
            Kind::Histogram
        } else if ty.contains("Counter") {
            Kind::Counter
        } else if ty.contains("Gauge") {
            Kind::Gauge
        } else if ty.contains("Info") {
            Kind::Info
        } else {
            Kind::Unknown
        }
    }
}

/// One `register` call: the family name as exposed (prefixes and unit included, without the
/// sample suffix), its kind, and where it is declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    /// The exposed family name, e.g. `sluice_indexer_docs` (whose samples are `…_docs_total`).
    pub family: String,
    /// Its kind, from the registered field's type.
    pub kind: Kind,
    /// `file:line` of the `register` call.
    pub source: String,
}

impl Declared {
    /// Whether `sample` (a sample name, without labels) is a sample of this family.
    pub fn has_sample(&self, sample: &str) -> bool {
        sample.strip_prefix(self.family.as_str()).is_some_and(|suffix| self.kind.sample_suffixes().contains(&suffix))
    }
}

/// The workspace root (this crate's parent directory, fixed at build time).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned()
}

/// Every metric family the binaries declare (read once per process).
pub fn declared() -> &'static [Declared] {
    static DECLARED: OnceLock<Vec<Declared>> = OnceLock::new();
    DECLARED.get_or_init(|| {
        let root = workspace();
        let mut out = Vec::new();
        for krate in METRIC_CRATES {
            let src = root.join(krate).join("src");
            let main = std::fs::read_to_string(src.join("main.rs"))
                .unwrap_or_else(|e| panic!("reading {}/main.rs for the metric prefix: {e}", src.display()));
            let prefix = string_arg_after(&main, "Registry::with_prefix(")
                .unwrap_or_else(|| panic!("no Registry::with_prefix(\"…\") in {}/main.rs", src.display()));
            for file in rust_files(&src) {
                let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
                let shown = file.strip_prefix(&root).unwrap_or(&file).display().to_string();
                out.extend(parse_declarations(&prefix, &text, &shown));
            }
        }
        assert!(
            !out.is_empty(),
            "no metric registration found under {}/{{{}}}/src: the parser no longer fits the sources",
            root.display(),
            METRIC_CRATES.join(",")
        );
        out
    })
}

/// The declared family `sample` (a sample name such as `sluice_indexer_docs_total`) belongs to.
pub fn family_of(sample: &str) -> Option<&'static Declared> {
    declared().iter().find(|d| d.has_sample(sample))
}

/// Panics unless some binary declares a metric whose samples are named `sample`: the guard a
/// helper applies before reading an absent series as 0.
pub fn assert_declared(sample: &str) {
    if family_of(sample).is_some() {
        return;
    }
    let stem = |s: &str| s.split('_').take(3).collect::<Vec<_>>().join("_");
    let mut near: Vec<String> = declared()
        .iter()
        .filter(|d| stem(&d.family) == stem(sample) || sample.starts_with(d.family.as_str()))
        .map(|d| format!("{} ({:?}: {}{})", d.family, d.kind, d.family, d.kind.sample_suffixes()[0]))
        .collect();
    near.sort();
    panic!(
        "metric `{sample}` is not in the scrape and no binary declares it (no register(…) in {}/src that \
         yields this sample name): renamed, removed or misspelled? A counter registered as `x` is exposed \
         as `x_total`, a gauge as `x`. Declared families with a similar name: {near:#?}",
        METRIC_CRATES.join("/src, ")
    )
}

/// The `.rs` files under `dir`, recursively, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).unwrap_or_else(|e| panic!("listing {}: {e}", d.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The string literal that is the first argument after `call` (e.g. `Registry::with_prefix(`).
fn string_arg_after(text: &str, call: &str) -> Option<String> {
    let at = text.find(call)? + call.len();
    string_literal(text[at..].trim_start()).map(|(s, _)| s)
}

/// A leading `"…"` literal of `text`: its value and the rest after it.
fn string_literal(text: &str) -> Option<(String, &str)> {
    let body = text.strip_prefix('"')?;
    let mut value = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((value, &body[i + 1..])),
            '\\' => value.push(chars.next()?.1),
            c => value.push(c),
        }
    }
    None
}

/// The top-level, comma-separated arguments of a call whose text starts right after its `(`.
fn call_args(text: &str) -> Vec<&str> {
    let mut args = Vec::new();
    let (mut depth, mut start, mut in_str, mut escaped) = (0usize, 0usize, false, false);
    for (i, c) in text.char_indices() {
        if in_str {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_str = true,
            '(' | '[' | '{' | '<' => depth += 1,
            ')' | ']' | '}' | '>' if depth > 0 => depth -= 1,
            ')' => {
                args.push(text[start..i].trim());
                break;
            }
            ',' if depth == 0 => {
                args.push(text[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    args.retain(|a| !a.is_empty());
    args
}

/// The metric registrations in one source file (`source` names it in messages).
pub fn parse_declarations(root_prefix: &str, text: &str, source: &str) -> Vec<Declared> {
    let mut out = Vec::new();
    for call in [".register(", ".register_with_unit("] {
        for (at, _) in text.match_indices(call) {
            let args = call_args(&text[at + call.len()..]);
            let Some((name, _)) = args.first().and_then(|a| string_literal(a)) else { continue };
            let unit = if call == ".register_with_unit(" { args.get(2).map(|u| unit_name(u)) } else { None };
            // The sub-registry the call registers in: the last one this file created before it.
            let sub = text[..at]
                .rmatch_indices("sub_registry_with_prefix(")
                .next()
                .and_then(|(p, m)| string_literal(text[p + m.len()..].trim_start()))
                .map(|(s, _)| s);
            let mut family = root_prefix.to_owned();
            for part in sub.iter().chain(std::iter::once(&name)).chain(unit.iter()) {
                if !family.is_empty() {
                    family.push('_');
                }
                family.push_str(part);
            }
            let kind = args.last().and_then(|m| field_of(m)).map_or(Kind::Unknown, |f| field_kind(text, f));
            let line = text[..at].lines().count();
            out.push(Declared { family, kind, source: format!("{source}:{line}") });
        }
    }
    out
}

/// `Unit::Seconds` → `seconds`, `Unit::Other("x".into())` → `x`.
fn unit_name(arg: &str) -> String {
    let unit = arg.trim().trim_start_matches("prometheus_client::registry::").trim_start_matches("Unit::");
    match unit.strip_prefix("Other(") {
        Some(rest) => string_literal(rest.trim_start()).map(|(s, _)| s).unwrap_or_default(),
        None => unit.to_ascii_lowercase(),
    }
}

/// The field a registered metric expression names: `m.docs.clone()` → `docs`.
fn field_of(expr: &str) -> Option<&str> {
    let expr = expr.trim().trim_end_matches(".clone()");
    let field = expr.rsplit('.').next()?;
    (!field.is_empty() && field.chars().all(|c| c.is_alphanumeric() || c == '_')).then_some(field)
}

/// The kind of the metric in field `field`, from its declaration `field: Type` in `text` (the
/// first one whose type names a metric; a `field: Family::default()` initialiser names none).
fn field_kind(text: &str, field: &str) -> Kind {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    for (at, _) in text.match_indices(field) {
        if text[..at].chars().next_back().is_some_and(ident) {
            continue;
        }
        let rest = &text[at + field.len()..];
        let Some(ty) = rest.trim_start().strip_prefix(':') else { continue };
        if ty.starts_with(':') {
            continue; // a path, `field::…`
        }
        let ty = type_text(ty);
        match Kind::from_rust_type(ty) {
            Kind::Unknown => continue,
            kind => return kind,
        }
    }
    Kind::Unknown
}

/// The type at the start of `text` (after a field's `:`): up to the first `,` `;` `=` `{` `}`
/// or line end outside angle brackets.
fn type_text(text: &str) -> &str {
    let mut depth = 0usize;
    for (i, c) in text.char_indices() {
        match c {
            '<' => depth += 1,
            '>' => depth = depth.saturating_sub(1),
            ',' | ';' | '=' | '{' | '}' | '\n' if depth == 0 => return &text[..i],
            _ => {}
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prefixes_units_kinds_and_calls_over_several_lines() {
        let text = r#"
            pub struct M { pub docs: Family<Labels, Counter>, pub lat: Histogram, pub up: Family<L, Gauge>, pub n: Gauge }
            impl Default for M { fn default() -> Self { M { docs: Family::default(), lat: Histogram::new(b()), up: Family::default(), n: Gauge::default() } } }
            fn register(registry: &mut Registry) {
                let r = registry.sub_registry_with_prefix("indexer");
                r.register("docs", "Documents, by outcome (a, b)", m.docs.clone());
                r.register_with_unit(
                    "bulk_latency",
                    "Latency, \"quoted\"",
                    Unit::Seconds,
                    m.lat.clone(),
                );
                r.register("node_up", "1 per node", m.up.clone());
                r.register(name_from_a_variable, "not a literal: skipped", m.n.clone());
            }
        "#;
        let got: Vec<(String, Kind)> =
            parse_declarations("sluice", text, "x.rs").into_iter().map(|d| (d.family, d.kind)).collect();
        assert_eq!(
            got,
            [
                ("sluice_indexer_docs".to_owned(), Kind::Counter),
                ("sluice_indexer_node_up".to_owned(), Kind::Gauge),
                ("sluice_indexer_bulk_latency_seconds".to_owned(), Kind::Histogram),
            ]
        );
    }

    #[test]
    fn the_binaries_sources_declare_their_metrics_with_kinds() {
        for (sample, kind) in [
            ("sluice_indexer_docs_total", Kind::Counter),
            ("sluice_indexer_in_flight_bytes", Kind::Gauge),
            ("sluice_indexer_bulk_latency_seconds_bucket", Kind::Histogram),
            ("sluice_indexer_dead_letter_failures_total", Kind::Counter),
            ("sluice_shipper_scans_total", Kind::Counter),
            ("sluice_shipper_files", Kind::Gauge),
            ("sluice_shipper_kafka_delivered_records_total", Kind::Counter),
            ("sluice_shipper_enrich_misses_total", Kind::Counter),
            ("sluice_shipper_enrich_synced", Kind::Gauge),
        ] {
            assert_eq!(family_of(sample).map(|d| d.kind), Some(kind), "{sample}");
        }
        for wrong in [
            "sluice_indexer_docs",                  // a counter's sample ends in _total
            "sluice_indexer_in_flight_bytes_total", // a gauge's does not
            "sluice_indexer_doc_total",             // no prefix matching
            "sluice_indexer_documents_total",
            "sluice_shipper_enrich_miss_total",
            "sluice_docs_total", // without the sub-registry's prefix
        ] {
            assert!(family_of(wrong).is_none(), "{wrong} read as declared: {:?}", family_of(wrong));
        }
        // Every registration was understood: none of unknown kind, one per `.register(` call.
        let unknown: Vec<_> = declared().iter().filter(|d| d.kind == Kind::Unknown).collect();
        assert!(unknown.is_empty(), "registered fields of unrecognised type: {unknown:#?}");
        let calls: usize = METRIC_CRATES
            .iter()
            .flat_map(|k| rust_files(&workspace().join(k).join("src")))
            .map(|f| {
                let t = std::fs::read_to_string(f).unwrap();
                t.matches(".register(").count() + t.matches(".register_with_unit(").count()
            })
            .sum();
        assert_eq!(declared().len(), calls, "registrations parsed vs. register calls in the sources");
    }

    #[test]
    #[should_panic(expected = "no binary declares it")]
    fn assert_declared_refuses_a_name_no_binary_declares() {
        assert_declared("sluice_indexer_documents_total");
    }
}

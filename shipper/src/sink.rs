//! Where records go: the [`Sink`] trait with explicit, possibly asynchronous and out-of-order
//! acknowledgements, and the sinks of this crate ([`StdoutSink`], [`NullSink`], [`CollectSink`]).
//!
//! A sink receives each record with an [`AckToken`] and, once the record is durable downstream
//! (written and flushed for stdout; acknowledged with `acks=all` for the Kafka publisher), hands the
//! token back through its [`Acker`] from any thread, in any order. Only then can the checkpoint move
//! over the record (invariant 1).

use std::io::{self, Write};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::record::Record;

/// Identifies one record handed to a sink; give it back to [`Acker::ack`] once it is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AckToken {
    /// The generation the record was read from (an in-process key, never reused).
    pub generation: u64,
    /// The record's sequence number within the generation.
    pub seq: u64,
}

/// Messages to the pipeline thread.
#[derive(Debug)]
pub enum Event {
    /// Records acknowledged by the sink.
    Acks(Vec<AckToken>),
    /// Something happened (file-system event, shutdown): look again.
    Wake,
}

/// Sends acknowledgements to the pipeline. Cheap to clone; usable from any thread.
#[derive(Debug, Clone)]
pub struct Acker {
    tx: Sender<Event>,
}

impl Acker {
    /// An acker sending to `tx`.
    pub fn new(tx: Sender<Event>) -> Self {
        Acker { tx }
    }

    /// Acknowledges one record.
    pub fn ack(&self, token: AckToken) {
        self.ack_all(vec![token]);
    }

    /// Acknowledges several records (any order).
    pub fn ack_all(&self, tokens: Vec<AckToken>) {
        if !tokens.is_empty() {
            // The pipeline being gone means nothing waits for these acks any more.
            let _ = self.tx.send(Event::Acks(tokens));
        }
    }
}

/// A sink failure.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Writing failed (for stdout: the reader of the pipe went away).
    #[error("output failed: {0}")]
    Io(#[from] io::Error),
    /// The sink gave up (e.g. it was closed).
    #[error("output closed: {0}")]
    Closed(String),
}

/// Destination of records.
///
/// `submit` may block to apply back-pressure. Acknowledgements are asynchronous: a sink acks through
/// the [`Acker`] it was built with, whenever and in whatever order records become durable.
pub trait Sink: Send {
    /// Hands one record to the sink. The record's buffers are only borrowed: copy what you keep.
    fn submit(&mut self, record: &Record<'_>, token: AckToken) -> Result<(), SinkError>;
    /// Called when the reader pauses (no data, back-pressure, checkpoint time): deliver buffered
    /// records and ack what is durable.
    fn flush(&mut self) -> Result<(), SinkError>;
    /// Whether this sink takes records as contract-v2 record lines with their frame
    /// ([`Record::frame`]) rather than as whole documents.
    fn record_lines(&self) -> bool {
        false
    }
    /// Shutdown: deliver and ack what can be within `timeout`.
    fn close(&mut self, _timeout: Duration) -> Result<(), SinkError> {
        self.flush()
    }
}

/// Writes one `{"id":…,"doc":…}` line, the format of `inspect` and `output: stdout`.
pub fn write_line(out: &mut impl Write, record: &Record<'_>) -> io::Result<()> {
    out.write_all(b"{\"id\":")?;
    serde_json::to_writer(&mut *out, record.id).map_err(io::Error::other)?;
    out.write_all(b",\"doc\":")?;
    out.write_all(record.value)?;
    out.write_all(b"}\n")
}

const ACK_BATCH: usize = 4096;
const STDOUT_BUFFER: usize = 64 * 1024;

/// `output: stdout`: one line per record, acknowledged once written and flushed.
pub struct StdoutSink<W: Write + Send> {
    out: io::BufWriter<W>,
    pending: Vec<AckToken>,
    acker: Acker,
}

impl<W: Write + Send> StdoutSink<W> {
    /// A sink writing to `out` (the process's stdout in production).
    pub fn new(out: W, acker: Acker) -> Self {
        StdoutSink { out: io::BufWriter::with_capacity(STDOUT_BUFFER, out), pending: Vec::new(), acker }
    }
}

impl<W: Write + Send> Sink for StdoutSink<W> {
    fn submit(&mut self, record: &Record<'_>, token: AckToken) -> Result<(), SinkError> {
        write_line(&mut self.out, record)?;
        self.pending.push(token);
        if self.pending.len() >= ACK_BATCH {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.out.flush()?;
        self.acker.ack_all(std::mem::take(&mut self.pending));
        Ok(())
    }
}

/// Discards records and acknowledges them at once (benchmarks).
pub struct NullSink {
    pending: Vec<AckToken>,
    acker: Acker,
    /// Records received.
    pub records: u64,
    /// Document bytes received.
    pub bytes: u64,
}

impl NullSink {
    /// A null sink acking through `acker`.
    pub fn new(acker: Acker) -> Self {
        NullSink { pending: Vec::new(), acker, records: 0, bytes: 0 }
    }
}

impl Sink for NullSink {
    fn submit(&mut self, record: &Record<'_>, token: AckToken) -> Result<(), SinkError> {
        self.records += 1;
        self.bytes += record.value.len() as u64;
        self.pending.push(token);
        if self.pending.len() >= ACK_BATCH {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.acker.ack_all(std::mem::take(&mut self.pending));
        Ok(())
    }
}

/// A record as kept by [`CollectSink`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collected {
    /// Record id.
    pub id: String,
    /// Kafka key.
    pub key: String,
    /// The document JSON.
    pub value: Vec<u8>,
}

/// How [`CollectSink`] acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// On every flush, in order.
    InOrder,
    /// Holds up to this many records and acks them in a pseudo-random order, like delivery reports
    /// from several Kafka partitions.
    Shuffled(usize),
    /// Never (a stalled downstream).
    Never,
}

/// Test sink: keeps every record in shared memory and acks according to its [`AckMode`].
pub struct CollectSink {
    /// Records received, shared with the test.
    pub received: Arc<Mutex<Vec<Collected>>>,
    /// While `true`, nothing is acknowledged (a downstream that holds deliveries, like a frozen
    /// broker); acks held meanwhile are released by the [`AckMode`] once it is `false` again.
    pub hold: Arc<std::sync::atomic::AtomicBool>,
    mode: AckMode,
    held: Vec<AckToken>,
    acker: Acker,
    rng: u64,
}

impl CollectSink {
    /// A collecting sink.
    pub fn new(acker: Acker, mode: AckMode) -> Self {
        CollectSink {
            received: Arc::default(),
            hold: Arc::default(),
            mode,
            held: Vec::new(),
            acker,
            rng: 0x9E37_79B9_7F4A_7C15,
        }
    }

    fn next(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn release_shuffled(&mut self, keep: usize) {
        let mut out = Vec::new();
        while self.held.len() > keep {
            let i = (self.next() % self.held.len() as u64) as usize;
            out.push(self.held.swap_remove(i));
        }
        self.acker.ack_all(out);
    }
}

impl Sink for CollectSink {
    fn submit(&mut self, record: &Record<'_>, token: AckToken) -> Result<(), SinkError> {
        self.received.lock().expect("collect lock").push(Collected {
            id: record.id.to_owned(),
            key: record.key.to_owned(),
            value: record.value.to_vec(),
        });
        self.held.push(token);
        if let AckMode::Shuffled(n) = self.mode
            && self.held.len() > n
            && !self.hold.load(std::sync::atomic::Ordering::SeqCst)
        {
            self.release_shuffled(n / 2);
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        if self.hold.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        match self.mode {
            AckMode::InOrder => self.acker.ack_all(std::mem::take(&mut self.held)),
            AckMode::Shuffled(_) => self.release_shuffled(0),
            AckMode::Never => {}
        }
        Ok(())
    }
}

//! Log set-up: `tracing` to stderr, as text for people or JSON for clusters. `RUST_LOG` narrows or
//! widens it (default `info`). No secret is ever passed to a log macro; see `core::secret`.
//!
//! Lines go into a shared in-memory buffer that a writer thread empties every
//! [`FLUSH_INTERVAL`] with one `write`, so the access log (a line per token request) costs the
//! request path a short memcpy, not a syscall or a thread wake-up. A buffer over [`MAX_BUFFER`] is
//! written at once by whoever fills it (bounded memory, back-pressure instead of loss). Keep the
//! returned guard alive: dropping it flushes.
//!
//! [`init`] publishes the writer and the format as the process's log sink ([`sink`]), which the
//! access log writes to directly; this module knows nothing of the access log.
use std::io::{IsTerminal as _, Write};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// For people.
    #[default]
    Text,
    /// For clusters: one JSON object per line.
    Json,
}

impl LogFormat {
    /// `text` or `json`; blank means `text`.
    pub fn parse(text: &str) -> Result<LogFormat, String> {
        match text.trim() {
            "" | "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("{other:?} is not one of: text, json")),
        }
    }
}

static SINK: OnceLock<(BatchWriter, LogFormat)> = OnceLock::new();

/// The batching writer and format set up by [`init`]; `None` before (a library user, tests).
pub fn sink() -> Option<&'static (BatchWriter, LogFormat)> {
    SINK.get()
}

pub const FLUSH_INTERVAL: Duration = Duration::from_millis(50);
pub const MAX_BUFFER: usize = 256 * 1024;

#[derive(Default)]
struct Shared {
    buf: Mutex<(Vec<u8>, bool)>,
    wake: Condvar,
}

/// A cheap handle that appends to the shared buffer; `tracing` makes one per event.
#[derive(Clone)]
pub struct BatchWriter(Arc<Shared>);

impl Write for BatchWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut g = self.0.buf.lock().unwrap_or_else(|p| p.into_inner());
        g.0.extend_from_slice(data);
        if g.0.len() >= MAX_BUFFER {
            let full = std::mem::take(&mut g.0);
            drop(g);
            let _ = std::io::stderr().lock().write_all(&full);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BatchWriter {
    type Writer = BatchWriter;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Flushes and stops the writer thread when dropped.
pub struct Guard {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(mut g) = self.shared.buf.lock() {
            g.1 = true;
        }
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn writer_thread(shared: Arc<Shared>) {
    loop {
        let (chunk, stop) = {
            let g = shared.buf.lock().unwrap_or_else(|p| p.into_inner());
            let (mut g, _) = shared
                .wake
                .wait_timeout(g, FLUSH_INTERVAL)
                .unwrap_or_else(|p| p.into_inner());
            (std::mem::take(&mut g.0), g.1)
        };
        if !chunk.is_empty() {
            let _ = std::io::stderr().lock().write_all(&chunk);
        }
        if stop {
            return;
        }
    }
}

pub fn init(format: LogFormat) -> Option<Guard> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    let shared = Arc::new(Shared::default());
    let writer = BatchWriter(Arc::clone(&shared));
    let _ = SINK.set((writer.clone(), format));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false)
        .with_ansi(ansi);
    let done = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    done.ok()?;
    let s = Arc::clone(&shared);
    let thread = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || writer_thread(s))
        .ok();
    Some(Guard { shared, thread })
}

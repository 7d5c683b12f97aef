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
//!
//! The release build aborts on panic (`panic = "abort"`): no destructor runs, so [`init`] also
//! installs a panic hook that writes out the buffer before the panic message, or the last lines
//! before a crash (up to [`FLUSH_INTERVAL`] of them) would be lost.
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

/// Writes out what is buffered now, for the panic hook: it may run on a thread that holds the
/// buffer's lock (a panic inside [`BatchWriter::write`]), so it tries the lock for a while
/// instead of waiting on it.
fn drain(shared: &Shared, out: &mut dyn Write) {
    for _ in 0..100 {
        let chunk = match shared.buf.try_lock() {
            Ok(mut g) => std::mem::take(&mut g.0),
            Err(std::sync::TryLockError::Poisoned(p)) => std::mem::take(&mut p.into_inner().0),
            Err(std::sync::TryLockError::WouldBlock) => {
                std::thread::sleep(Duration::from_micros(100));
                continue;
            }
        };
        let _ = out.write_all(&chunk);
        return;
    }
}

/// Chains a hook that drains the log buffer to stderr before the previous hook (the standard
/// one prints the panic message), so the lines come out in the order they were logged.
fn install_panic_hook(shared: Arc<Shared>) {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        drain(&shared, &mut std::io::stderr().lock());
        previous(info);
    }));
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
    install_panic_hook(Arc::clone(&shared));
    let s = Arc::clone(&shared);
    let thread = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || writer_thread(s))
        .ok();
    Some(Guard { shared, thread })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_takes_everything_buffered() {
        let shared = Arc::new(Shared::default());
        let mut w = BatchWriter(Arc::clone(&shared));
        w.write_all(b"one\n").expect("write");
        w.write_all(b"two\n").expect("write");
        let mut out = Vec::new();
        drain(&shared, &mut out);
        assert_eq!(out, b"one\ntwo\n");
        let mut again = Vec::new();
        drain(&shared, &mut again);
        assert!(again.is_empty());
    }

    const CHILD: &str = "IDENTITY_SIDECAR_TEST_PANIC_CHILD";

    /// Runs this test binary again as a child that logs one line and panics at once, then aborts
    /// as the release build does (no destructor, no later flush by the writer thread): the line
    /// must still reach stderr, before the panic message.
    #[test]
    fn a_panic_flushes_the_buffered_log_lines_first() {
        if std::env::var_os(CHILD).is_some() {
            let guard = init(LogFormat::Text);
            std::mem::forget(guard);
            let hook = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                hook(info);
                std::process::abort();
            }));
            tracing::info!("the last line before the crash");
            panic!("deliberate test panic");
        }
        let exe = std::env::current_exe().expect("test binary");
        let out = std::process::Command::new(exe)
            .args([
                "--exact",
                "telemetry::logging::tests::a_panic_flushes_the_buffered_log_lines_first",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .env("RUST_LOG", "info")
            .output()
            .expect("run the child");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "the child aborts: {stderr}");
        let line = stderr.find("the last line before the crash");
        let panic = stderr.find("deliberate test panic");
        assert!(
            line.is_some() && panic.is_some() && line < panic,
            "want the log line, then the panic message:\n{stderr}"
        );
    }
}

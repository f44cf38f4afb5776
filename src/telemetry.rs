//! Logging: `tracing` to stderr, `pretty` for people or `json` for collectors; the level
//! from `log.level` unless `RUST_LOG` is set.
//!
//! A log line must never stop the service: when stderr is closed (`waas serve | head`)
//! writes fail and are dropped, silently, instead of panicking in whatever task logged
//! (tracing-subscriber reports its own write errors with `eprintln!`, which panics on a
//! closed stderr, and a panic in the signal task used to leave SIGTERM unanswered).

use std::io::{self, IsTerminal, Write};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::{LogFormat, LogSettings};

pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Stderr)
        .log_internal_errors(false)
        // Colour codes only for a person at a terminal, never into a file or a pipe.
        .with_ansi(io::stderr().is_terminal());
    let result = match settings.format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}

/// Standard error that never fails: a line that cannot be written is dropped.
#[derive(Clone, Copy)]
struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Writes to a closed pipe fail with EPIPE (Rust ignores SIGPIPE); pretend they
        // succeeded so the formatter moves on.
        let _ = io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().flush();
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Stderr;

    fn make_writer(&'a self) -> Self::Writer {
        Stderr
    }
}

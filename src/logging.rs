//! Logging on stderr (sentences for people, JSON lines for machines), with every secret
//! masked, and the progress bars the log lines are written above.

use std::io::IsTerminal;

use indicatif::MultiProgress;

/// Sets up logging on stderr: sentences with fields for people, JSON lines for machines.
/// `RUST_LOG` overrides the default level (`info`).
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "info,deltalake=warn,deltalake_core=warn,buoyant_kernel=warn,buoyant_kernel_engine=warn,object_store=warn",
        )
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LogWriter);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .compact()
            .init();
    }
}

/// The progress bars of this process (drawn only when stderr is a terminal).
pub(crate) fn progress_bars() -> &'static MultiProgress {
    static BARS: std::sync::OnceLock<MultiProgress> = std::sync::OnceLock::new();
    BARS.get_or_init(MultiProgress::new)
}

/// Writes log lines to stderr above the progress bars instead of through them.
struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // The formatter hands over one whole event per write: mask any secret a vendor's
        // text or an error chain carried into it, as a last line of defence.
        let line = String::from_utf8_lossy(buf);
        let line = tributary_sdk::secret::scrub(&line);
        progress_bars().suspend(|| std::io::stderr().write_all(line.as_bytes()))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// An error chain as one line, with every secret masked: for anything printed or stored.
pub fn scrubbed(e: &anyhow::Error) -> String {
    tributary_sdk::secret::scrub(&format!("{e:#}")).into_owned()
}

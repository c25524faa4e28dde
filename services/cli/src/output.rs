//! Where results go: stdout, as human tables or as JSON for scripts; whether to colour.

use std::io::{IsTerminal as _, Write as _};

use serde_json::Value;

use crate::error::{Error, Result};

/// `-o table` (the default) or `-o json`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Tables and lines for people.
    #[default]
    Table,
    /// One JSON document (NDJSON, one document per line, for `ls --all` and `dlq ls --all`).
    Json,
}

/// Whether stdout (`stderr`: stderr) should carry colours: only to a terminal, and never
/// when `NO_COLOR` is set to something (<https://no-color.org>).
pub fn colour_wanted(stderr: bool) -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let terminal = if stderr {
        std::io::stderr().is_terminal()
    } else {
        std::io::stdout().is_terminal()
    };
    terminal && !no_color
}

/// Decides colour once for the process (tables, states, progress bars all ask `console`).
pub fn init_colours() {
    console::set_colors_enabled(colour_wanted(false));
    console::set_colors_enabled_stderr(colour_wanted(true));
}

/// The results of one command.
#[derive(Debug)]
pub struct Output {
    pub format: Format,
}

impl Output {
    pub fn new(format: Format) -> Self {
        Self { format }
    }

    pub fn json(&self) -> bool {
        self.format == Format::Json
    }

    /// Writes `text` as it is.
    pub fn write(&self, text: &str) -> Result<()> {
        write_stdout(text.as_bytes())
    }

    /// Writes `text` and a newline.
    pub fn line(&self, text: &str) -> Result<()> {
        let mut text = text.to_string();
        text.push('\n');
        write_stdout(text.as_bytes())
    }

    /// One JSON document: pretty to a terminal, compact on one line otherwise.
    pub fn document(&self, value: &impl serde::Serialize) -> Result<()> {
        let text = if std::io::stdout().is_terminal() {
            serde_json::to_string_pretty(value)
        } else {
            serde_json::to_string(value)
        }
        .map_err(|e| Error::Protocol(format!("cannot encode JSON: {e}")))?;
        self.line(&text)
    }

    /// One NDJSON line.
    pub fn ndjson(&self, value: &Value) -> Result<()> {
        self.line(&value.to_string())
    }
}

/// Writes to stdout; a reader that went away (`| head`) is [`Error::Closed`].
pub fn write_stdout(bytes: &[u8]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                Error::Closed
            } else {
                Error::Output(e)
            }
        })
}

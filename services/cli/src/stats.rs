//! `jetjobs stats`: the queue tables, once or refreshed every second in place.

use std::io::IsTerminal as _;
use std::time::Duration;

use crate::cli::StatsArgs;
use crate::client::Client;
use crate::error::{Result, exit};
use crate::output::Output;
use crate::tables;

const REFRESH: Duration = Duration::from_secs(1);

/// `jetjobs stats [--watch]`.
pub async fn stats(client: &Client, out: &Output, args: StatsArgs) -> Result<u8> {
    // The first read decides: a gateway that is not there is an error, not an empty screen.
    let first = client.stats().await?;
    if !args.watch {
        if out.json() {
            out.document(&first)?;
        } else {
            out.line(&tables::stats(&first))?;
        }
        return Ok(exit::OK);
    }
    let in_place = !out.json() && std::io::stdout().is_terminal();
    let mut screen = Screen::default();
    let mut current = Ok(first);
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        match &current {
            Ok(stats) if out.json() => out.ndjson(stats)?,
            Ok(stats) => {
                let frame = format!(
                    "{}  every {}s, Ctrl-C to stop\n\n{}",
                    client.base(),
                    REFRESH.as_secs(),
                    tables::stats(stats)
                );
                if in_place {
                    screen.draw(out, &frame)?;
                } else {
                    out.line(&frame)?;
                    out.line("")?;
                }
            }
            Err(e) if in_place => screen.draw(out, &format!("error: {e} (retrying)"))?,
            Err(e) => eprintln!("error: {e} (retrying)"),
        }
        tokio::select! {
            _ = &mut ctrl_c => break,
            _ = tick.tick() => {}
        }
        // Ctrl-C stops a read in flight too (a slow gateway holds it up to the timeout).
        current = tokio::select! {
            _ = &mut ctrl_c => break,
            stats = client.stats() => stats,
        };
    }
    Ok(exit::OK)
}

/// Redraws a frame over the previous one (cursor up, each line cleared), so the terminal's
/// scrollback keeps what was there before.
#[derive(Default)]
struct Screen {
    /// Terminal rows the last frame took.
    rows: usize,
}

impl Screen {
    fn draw(&mut self, out: &Output, frame: &str) -> Result<()> {
        let width = usize::from(console::Term::stdout().size().1).max(1);
        let mut text = String::new();
        if self.rows > 0 {
            text.push_str(&format!("\x1b[{}A\r", self.rows));
        }
        let mut rows = 0;
        for line in frame.lines() {
            text.push_str(line);
            text.push_str("\x1b[K\n");
            rows += console::measure_text_width(line).max(1).div_ceil(width);
        }
        // Whatever the previous, longer frame left below.
        text.push_str("\x1b[J");
        out.write(&text)?;
        self.rows = rows;
        Ok(())
    }
}

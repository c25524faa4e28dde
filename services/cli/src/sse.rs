//! A Server-Sent Events reader (the WHATWG event-stream format), enough for the
//! gateway's `event: snapshot` / `id:` / `data:` events and its keep-alive comments.

use crate::error::{Error, Result};

/// The longest line accepted: a snapshot with an inline result is at most about the
/// processors' inline limit (64 KiB) plus the snapshot, so this is generous.
const MAX_LINE: usize = 16 * 1024 * 1024;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// `event:`, or `message` when none was given.
    pub event: String,
    /// The `data:` lines, joined by newlines.
    pub data: String,
    /// The last `id:` seen on the stream so far (the one to reconnect from).
    pub id: Option<String>,
}

/// Feeds bytes in as they arrive; takes events out as they complete.
#[derive(Debug, Default)]
pub struct Parser {
    line: Vec<u8>,
    /// The last byte fed was a `\r`: a `\n` right after it ends no second line.
    after_cr: bool,
    event: String,
    data: String,
    has_data: bool,
    last_id: Option<String>,
}

impl Parser {
    pub fn new() -> Self {
        Self::default()
    }

    /// The events `chunk` completes.
    ///
    /// # Errors
    /// [`Error::Protocol`] for a line longer than 16 MiB.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Event>> {
        let mut events = Vec::new();
        for &byte in chunk {
            if self.after_cr {
                self.after_cr = false;
                if byte == b'\n' {
                    continue;
                }
            }
            match byte {
                b'\n' | b'\r' => {
                    self.after_cr = byte == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(event) = self.line_done(&line) {
                        events.push(event);
                    }
                }
                _ => {
                    if self.line.len() >= MAX_LINE {
                        return Err(Error::Protocol(
                            "an event line longer than 16 MiB".to_string(),
                        ));
                    }
                    self.line.push(byte);
                }
            }
        }
        Ok(events)
    }

    /// The last event id seen (for `Last-Event-ID` when reconnecting).
    pub fn last_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    fn line_done(&mut self, line: &[u8]) -> Option<Event> {
        if line.is_empty() {
            return self.dispatch();
        }
        let line = String::from_utf8_lossy(line);
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_ref(), ""),
        };
        match field {
            "event" => self.event = value.to_string(),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "id" if !value.contains('\0') => self.last_id = Some(value.to_string()),
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<Event> {
        let event = std::mem::take(&mut self.event);
        let data = std::mem::take(&mut self.data);
        if !std::mem::take(&mut self.has_data) {
            return None;
        }
        Some(Event {
            event: if event.is_empty() {
                "message".to_string()
            } else {
                event
            },
            data,
            id: self.last_id.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_anywhere_with_any_line_ending() {
        let stream =
            b": keep-alive\r\nevent: snapshot\r\nid: 7\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\n\
                       event: snapshot\nid: 8\ndata: {}\n\n:x\n\ndata:plain\r\r";
        // Every split point gives the same events.
        for split in 0..stream.len() {
            let mut parser = Parser::new();
            let mut events = parser.feed(&stream[..split]).expect("feed");
            events.extend(parser.feed(&stream[split..]).expect("feed"));
            assert_eq!(
                events,
                vec![
                    Event {
                        event: "snapshot".into(),
                        data: "{\"a\":\n1}".into(),
                        id: Some("7".into())
                    },
                    Event {
                        event: "snapshot".into(),
                        data: "{}".into(),
                        id: Some("8".into())
                    },
                    Event {
                        event: "message".into(),
                        data: "plain".into(),
                        id: Some("8".into())
                    },
                ],
                "split at {split}"
            );
            assert_eq!(parser.last_id(), Some("8"));
        }
    }

    #[test]
    fn an_event_without_data_is_not_dispatched() {
        let mut parser = Parser::new();
        assert!(
            parser
                .feed(b"event: x\nid: 3\n\n")
                .expect("feed")
                .is_empty()
        );
        assert_eq!(parser.last_id(), Some("3"));
    }
}

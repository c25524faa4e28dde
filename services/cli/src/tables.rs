//! Human renderings of the API's documents: plain column tables (no borders, like
//! `kubectl get`) and key/value blocks, coloured only when [`crate::output`] allows it.

use comfy_table::{Table, presets};
use console::style;
use serde_json::Value;

/// Longest cell of free text (errors, results) in a table; the JSON has the rest.
const MAX_CELL: usize = 80;
/// Longest result shown by `get`/`watch` (a thumbnail's is megabytes of base64).
const MAX_RESULT: usize = 400;

/// A table with `header` and `rows`: columns two spaces apart, no borders.
pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut table = Table::new();
    table.load_style(presets::NOTHING);
    table.set_header(
        header
            .iter()
            .map(|h| style(h.to_uppercase()).bold().to_string())
            .collect::<Vec<_>>(),
    );
    for row in rows {
        table.add_row(row);
    }
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    table.trim_fmt()
}

/// `key  value` lines, keys aligned, for one document.
pub fn fields(rows: Vec<(&str, String)>) -> String {
    let mut table = Table::new();
    table.load_style(presets::NOTHING);
    for (key, value) in rows {
        table.add_row(vec![style(key).bold().to_string(), value]);
    }
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    table.trim_fmt()
}

/// A string field, or "".
pub fn text(value: &Value, field: &str) -> String {
    match value.get(field) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// A number field, or "".
pub fn number(value: &Value, field: &str) -> String {
    value
        .get(field)
        .and_then(Value::as_u64)
        .map(|n| n.to_string())
        .unwrap_or_default()
}

/// An RFC 3339 time without its fraction of a second: `2026-11-21T12:00:00Z`.
pub fn time(value: &Value, field: &str) -> String {
    short_time(&text(value, field))
}

pub fn short_time(time: &str) -> String {
    match time.find('.') {
        Some(dot) => {
            let rest = &time[dot + 1..];
            let end = rest
                .find(|c: char| !c.is_ascii_digit())
                .map_or(rest.len(), |i| i);
            format!("{}{}", &time[..dot], &rest[end..])
        }
        None => time.to_string(),
    }
}

/// `s` cut to `max` characters, with `…` when cut; on one line.
pub fn cut(s: &str, max: usize) -> String {
    let one_line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= max {
        one_line
    } else {
        let mut cut: String = one_line.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

/// A state, coloured by what it means.
pub fn state(state: &str) -> String {
    let styled = style(state);
    match state {
        "succeeded" => styled.green(),
        "failed" => styled.red(),
        "cancelled" => styled.yellow(),
        "running" => styled.cyan(),
        "retrying" => styled.magenta(),
        _ => styled,
    }
    .to_string()
}

/// `attempt/max_attempts`.
pub fn attempts(job: &Value) -> String {
    format!("{}/{}", number(job, "attempt"), number(job, "max_attempts"))
}

/// `current/total (pct%)`, or "".
pub fn progress(job: &Value) -> String {
    let Some(progress) = job.get("progress").filter(|p| !p.is_null()) else {
        return String::new();
    };
    let current = progress.get("current").and_then(Value::as_u64);
    let total = progress.get("total").and_then(Value::as_u64);
    match (current, total) {
        (Some(current), Some(total)) if total > 0 => {
            format!(
                "{current}/{total} ({}%)",
                current.saturating_mul(100) / total
            )
        }
        (Some(current), Some(total)) => format!("{current}/{total}"),
        _ => cut(&progress.to_string(), MAX_CELL),
    }
}

/// Jobs, one row each (`ls`).
pub fn jobs(jobs: &[Value]) -> String {
    let rows = jobs
        .iter()
        .map(|job| {
            vec![
                text(job, "id"),
                text(job, "kind"),
                state(&text(job, "state")),
                attempts(job),
                progress(job),
                time(job, "created_at"),
                time(job, "updated_at"),
            ]
        })
        .collect();
    table(
        &[
            "id", "kind", "state", "attempt", "progress", "created", "updated",
        ],
        rows,
    )
}

/// One job, field by field (`get`, `submit`, `cancel`, `retry`, the end of `watch`).
pub fn snapshot(job: &Value) -> String {
    let mut rows = vec![
        ("id", text(job, "id")),
        ("kind", text(job, "kind")),
        ("state", state(&text(job, "state"))),
        ("attempt", attempts(job)),
    ];
    let mut optional = |key: &'static str, value: String| {
        if !value.is_empty() {
            rows.push((key, value));
        }
    };
    optional("progress", progress(job));
    optional("priority", text(job, "priority"));
    optional("schedule", text(job, "schedule"));
    optional("created", time(job, "created_at"));
    optional("updated", time(job, "updated_at"));
    optional("run at", time(job, "run_at"));
    optional("expires", time(job, "expires_at"));
    if let Some(result) = job.get("result").filter(|r| !r.is_null()) {
        let text = result.to_string();
        let shown = if text.chars().count() > MAX_RESULT {
            format!(
                "{} (cut: `jetjobs result {}` has all of it)",
                cut(&text, MAX_RESULT),
                self::text(job, "id")
            )
        } else {
            text
        };
        optional("result", shown);
    }
    if let Some(reference) = job.get("result_ref").filter(|r| !r.is_null()) {
        optional(
            "result",
            format!(
                "blob {} ({} bytes, {}): `jetjobs result {} -o FILE`",
                text(reference, "blob"),
                number(reference, "size"),
                text(reference, "content_type"),
                text(job, "id")
            ),
        );
    }
    optional("error", text(job, "error"));
    if let Some(errors) = job.get("errors").and_then(Value::as_array)
        && errors.len() > 1
    {
        for error in errors {
            optional(
                "  attempt",
                format!(
                    "{}: {}",
                    number(error, "attempt"),
                    cut(&text(error, "error"), MAX_CELL)
                ),
            );
        }
    }
    optional("callback", text(job, "callback_url"));
    if let Some(webhook) = job.get("webhook").filter(|w| !w.is_null()) {
        optional(
            "webhook",
            format!(
                "{} ({} after {} attempts)",
                text(webhook, "state"),
                text(webhook, "event"),
                number(webhook, "attempts")
            ),
        );
    }
    fields(rows)
}

/// What happened in one history entry, beyond its type.
fn history_detail(event: &Value) -> String {
    match text(event, "type").as_str() {
        "progress" => format!("{}/{}", number(event, "current"), number(event, "total")),
        "retrying" => format!(
            "{} (again in {} ms)",
            cut(&text(event, "error"), MAX_CELL),
            number(event, "retry_in_ms")
        ),
        "succeeded" => match event.get("result").filter(|r| !r.is_null()) {
            Some(result) => cut(&result.to_string(), MAX_CELL),
            None => event
                .get("result_ref")
                .map(|r| format!("blob {}", text(r, "blob")))
                .unwrap_or_default(),
        },
        "failed" => cut(&text(event, "error"), MAX_CELL),
        "cancelled" => cut(&text(event, "reason"), MAX_CELL),
        "webhook" => {
            let mut detail = format!(
                "{} {} (delivery {})",
                text(event, "event"),
                text(event, "outcome"),
                number(event, "delivery_attempt")
            );
            for (field, label) in [("status", "status"), ("error", "error")] {
                let value = text(event, field);
                if !value.is_empty() {
                    detail.push_str(&format!(", {label} {}", cut(&value, MAX_CELL)));
                }
            }
            detail
        }
        _ => String::new(),
    }
}

/// A job's history (`history`).
pub fn history(events: &[Value]) -> String {
    let rows = events
        .iter()
        .map(|event| {
            let kind = text(event, "type");
            let coloured = match kind.as_str() {
                "succeeded" | "failed" | "cancelled" | "running" | "retrying" => state(&kind),
                _ => kind.clone(),
            };
            vec![
                number(event, "seq"),
                time(event, "at"),
                coloured,
                format!(
                    "{}/{}",
                    number(event, "attempt"),
                    number(event, "max_attempts")
                ),
                history_detail(event),
            ]
        })
        .collect();
    table(&["seq", "at", "event", "attempt", "detail"], rows)
}

/// Dead letters (`dlq ls`).
pub fn dead_letters(letters: &[Value]) -> String {
    let rows = letters
        .iter()
        .map(|letter| {
            let id = match letter.get("id") {
                Some(Value::String(id)) => id.clone(),
                _ => "(not a job)".to_string(),
            };
            let replayable = match letter.get("replayable").and_then(Value::as_bool) {
                Some(true) => "yes",
                Some(false) => "no",
                None => "",
            };
            vec![
                id,
                text(letter, "kind"),
                number(letter, "seq"),
                time(letter, "failed_at"),
                number(letter, "attempt"),
                replayable.to_string(),
                cut(&text(letter, "error"), MAX_CELL),
            ]
        })
        .collect();
    table(
        &[
            "id",
            "kind",
            "seq",
            "failed",
            "attempt",
            "replayable",
            "error",
        ],
        rows,
    )
}

/// The queues (`stats`): per kind, per consumer, per processor instance, and the rates.
pub fn stats(stats: &Value) -> String {
    let list = |field: &str| {
        stats
            .get(field)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let kinds = list("kinds")
        .iter()
        .map(|k| {
            vec![
                text(k, "kind"),
                number(k, "waiting"),
                number(k, "scheduled"),
                number(k, "running"),
                number(k, "redelivered"),
                number(k, "dead_lettered"),
            ]
        })
        .collect();
    let consumers = list("consumers")
        .iter()
        .map(|c| {
            let connected = match c.get("connected").and_then(Value::as_bool) {
                Some(true) => style("yes").green().to_string(),
                Some(false) => style("no").red().to_string(),
                None => String::new(),
            };
            vec![
                format!("{} > {}", text(c, "stream"), text(c, "name")),
                number(c, "pending"),
                number(c, "ack_pending"),
                number(c, "redelivered"),
                number(c, "waiting_pulls"),
                connected,
                time(c, "last_active"),
            ]
        })
        .collect();
    let processors = list("processors")
        .iter()
        .map(|p| {
            let kinds = p
                .get("kinds")
                .and_then(Value::as_array)
                .map(|k| {
                    k.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            vec![
                text(p, "name"),
                text(p, "instance"),
                kinds,
                number(p, "running"),
                time(p, "started_at"),
                time(p, "seen_at"),
            ]
        })
        .collect();
    let rates = stats.get("rates").cloned().unwrap_or(Value::Null);
    let rate = |field: &str| {
        rates
            .get(field)
            .and_then(Value::as_f64)
            .map(|r| format!("{r:.1}"))
            .unwrap_or_else(|| "?".to_string())
    };
    let mut out = String::new();
    out.push_str(&table(
        &[
            "kind",
            "waiting",
            "scheduled",
            "running",
            "redelivered",
            "dead",
        ],
        kinds,
    ));
    out.push_str("\n\n");
    out.push_str(&table(
        &[
            "consumer",
            "pending",
            "ack pending",
            "redelivered",
            "pulls",
            "connected",
            "last active",
        ],
        consumers,
    ));
    out.push_str("\n\n");
    out.push_str(&table(
        &[
            "processor",
            "instance",
            "kinds",
            "running",
            "started",
            "seen",
        ],
        processors,
    ));
    out.push_str(&format!(
        "\n\nper second over {}s: {} submitted, {} succeeded, {} failed   (at {})",
        number(&rates, "window_secs"),
        rate("submitted_per_sec"),
        rate("succeeded_per_sec"),
        rate("failed_per_sec"),
        time(stats, "at"),
    ));
    out
}

/// An uploaded blob (`upload`).
pub fn blob(blob: &Value) -> String {
    fields(vec![
        ("id", text(blob, "id")),
        ("size", number(blob, "size")),
        ("sha256", text(blob, "sha256")),
        ("content type", text(blob, "content_type")),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn times_lose_their_fraction_only() {
        assert_eq!(
            short_time("2026-11-21T12:00:00.000001Z"),
            "2026-11-21T12:00:00Z"
        );
        assert_eq!(
            short_time("2026-11-21T12:00:00.5+01:00"),
            "2026-11-21T12:00:00+01:00"
        );
        assert_eq!(short_time("2026-11-21T12:00:00Z"), "2026-11-21T12:00:00Z");
    }

    #[test]
    fn cells_are_cut_on_one_line() {
        assert_eq!(cut("a\nb", 10), "a b");
        assert_eq!(cut("abcdef", 4), "abc…");
    }

    #[test]
    fn a_job_table_has_a_row_per_job() {
        console::set_colors_enabled(false);
        let job = json!({"id": "j1", "kind": "hash", "state": "running", "attempt": 1,
                         "max_attempts": 3, "progress": {"current": 5, "total": 10},
                         "created_at": "2026-11-21T12:00:00.1Z", "updated_at": null});
        let out = jobs(&[job.clone(), job]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].starts_with("ID"), "{out}");
        assert!(lines[1].contains("5/10 (50%)"), "{out}");
        assert!(lines[1].contains("2026-11-21T12:00:00Z"), "{out}");
    }
}

//! `jetjobs dlq ls` and `jetjobs dlq replay`: the dead letters of failed jobs.

use serde_json::{Value, json};

use crate::cli::{DlqLsArgs, DlqReplayArgs};
use crate::client::{Client, Replayed};
use crate::error::{Result, exit};
use crate::output::Output;
use crate::tables;

/// Ids per replay request (the gateway takes 1 to 1000).
const IDS_PER_REQUEST: usize = 1000;

/// `jetjobs dlq ls`.
pub async fn ls(client: &Client, out: &Output, args: DlqLsArgs) -> Result<u8> {
    let kind = args.kind.as_deref();
    let mut page = client.dead_letters(kind, args.limit, None).await?;
    if out.json() && !args.all {
        out.document(&json!({"dead_letters": page.dead_letters, "next_cursor": page.next_cursor}))?;
        return Ok(exit::OK);
    }
    let mut rows = Vec::new();
    let mut more = false;
    loop {
        if out.json() {
            for letter in &page.dead_letters {
                out.ndjson(letter)?;
            }
        } else {
            rows.append(&mut page.dead_letters);
        }
        match page.next_cursor.take() {
            Some(cursor) if args.all => {
                page = client.dead_letters(kind, args.limit, Some(&cursor)).await?;
            }
            Some(_) => {
                more = true;
                break;
            }
            None => break,
        }
    }
    if !out.json() {
        if rows.is_empty() {
            eprintln!("no dead letters");
        } else {
            out.line(&tables::dead_letters(&rows))?;
        }
        if more {
            eprintln!("(more dead letters: --all for every page, or a larger --limit)");
        }
    }
    Ok(exit::OK)
}

/// `jetjobs dlq replay`: the ids given (1000 per request), or with `--all` requests
/// again while the gateway says some are `remaining` (and the last one replayed any).
/// Exit code 1 if any could not be replayed.
pub async fn replay(client: &Client, out: &Output, args: DlqReplayArgs) -> Result<u8> {
    let mut total = Replayed::default();
    if args.all {
        let mut body = json!({"all": true});
        if let Some(kind) = &args.kind {
            body["kind"] = Value::String(kind.clone());
        }
        loop {
            let round = client.replay(&body).await?;
            let progressed = !round.replayed.is_empty();
            total.replayed.extend(round.replayed);
            total.failed.extend(round.failed);
            total.remaining = round.remaining;
            // Nothing moved (every one left failed to replay): asking again would spin.
            if round.remaining == 0 || !progressed {
                break;
            }
        }
    } else {
        let ids: Vec<String> = args.ids.iter().map(ToString::to_string).collect();
        for chunk in ids.chunks(IDS_PER_REQUEST) {
            let round = client.replay(&json!({"ids": chunk})).await?;
            total.replayed.extend(round.replayed);
            total.failed.extend(round.failed);
            total.remaining = round.remaining;
        }
    }
    if out.json() {
        out.document(&total)?;
    } else {
        let count = total.replayed.len();
        out.line(&format!(
            "replayed {count} job{}",
            if count == 1 { "" } else { "s" }
        ))?;
        if (1..=20).contains(&count) {
            for id in &total.replayed {
                out.line(&format!("  {id}"))?;
            }
        }
        if !total.failed.is_empty() {
            let rows = total
                .failed
                .iter()
                .map(|f| {
                    vec![
                        f.id.clone(),
                        f.status.to_string(),
                        tables::cut(&f.detail, 100),
                    ]
                })
                .collect();
            out.line(&format!("not replayed: {}", total.failed.len()))?;
            out.line(&tables::table(&["id", "status", "detail"], rows))?;
        }
        if total.remaining > 0 {
            out.line(&format!("{} still dead", total.remaining))?;
        }
    }
    Ok(if total.failed.is_empty() {
        exit::OK
    } else {
        exit::FAILURE
    })
}

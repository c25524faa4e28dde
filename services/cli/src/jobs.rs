//! Commands on jobs: `submit`, `get`, `result`, `history`, `ls`, `cancel`, `retry`.

use std::io::IsTerminal as _;
use std::path::Path;

use futures::StreamExt as _;
use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt as _;

use crate::cli::{LsArgs, ResultArgs, SubmitArgs};
use crate::client::{Client, ListFilter, SubmitRequest};
use crate::error::{Error, Result, exit};
use crate::output::{Output, write_stdout};
use crate::{tables, upload};

/// `jetjobs submit`.
pub async fn submit(client: &Client, out: &Output, args: SubmitArgs) -> Result<u8> {
    let mut body = Map::new();
    body.insert("kind".into(), Value::String(args.kind.clone()));
    if let Some(payload) = payload(&args)? {
        body.insert("payload".into(), payload);
    }
    if let Some(n) = args.max_attempts {
        body.insert("max_attempts".into(), json!(n));
    }
    if let Some(n) = args.timeout_secs {
        body.insert("timeout_secs".into(), json!(n));
    }
    if let Some(url) = &args.callback_url {
        body.insert("callback_url".into(), json!(url));
    }
    let request = SubmitRequest {
        body,
        id: args.id.map(|id| id.to_string()),
        idempotency_key: args.idempotency_key.clone(),
        wait_secs: args.wait,
    };
    let submitted = match &args.file {
        Some(path) => {
            let file = upload::FileBody::open(path).await?;
            let (part, bar) = file.into_part()?;
            let submitted = client.submit_multipart(&request, part).await;
            bar.finish_and_clear();
            submitted
        }
        None => client.submit(&request).await,
    };
    let submitted = submitted.map_err(|e| may_be_queued(e, &args.kind))?;
    if out.json() {
        out.document(&submitted.snapshot)?;
    } else {
        out.line(&tables::snapshot(&submitted.snapshot))?;
        if submitted.replayed {
            eprintln!("(an earlier submit with the same key or id made this job)");
        }
    }
    Ok(exit::OK)
}

/// A 503 that names a job: it may be queued. A PUT with that id finds it or queues it
/// once, where another POST would make a second job: the error says how to retry.
fn may_be_queued(error: Error, kind: &str) -> Error {
    match error {
        Error::Api {
            status,
            detail,
            job_id: Some(job_id),
        } => Error::Api {
            detail: format!(
                "{detail}; job {job_id} may be queued: retry with `jetjobs submit {kind} … --id {job_id}` \
                 and the same arguments"
            ),
            status,
            job_id: Some(job_id),
        },
        other => other,
    }
}

/// The payload from `--payload` or `--payload-file`, if either was given.
fn payload(args: &SubmitArgs) -> Result<Option<Value>> {
    let (text, origin) = match (&args.payload, &args.payload_file) {
        (Some(text), _) => (text.clone(), "--payload".to_string()),
        (None, Some(path)) if path == Path::new("-") => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .map_err(|e| Error::file(path, e))?;
            (text, "the payload on stdin".to_string())
        }
        (None, Some(path)) => (
            std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?,
            path.display().to_string(),
        ),
        (None, None) => return Ok(None),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::Usage(format!("{origin} is not JSON: {e}")))
}

/// `jetjobs get`.
pub async fn get(client: &Client, out: &Output, id: &str) -> Result<u8> {
    let job = client.job(id).await?;
    print_snapshot(out, &job)?;
    Ok(exit::OK)
}

/// `jetjobs cancel`.
pub async fn cancel(client: &Client, out: &Output, id: &str) -> Result<u8> {
    let job = client.cancel(id).await?;
    print_snapshot(out, &job)?;
    Ok(exit::OK)
}

/// `jetjobs retry`.
pub async fn retry(client: &Client, out: &Output, id: &str) -> Result<u8> {
    let job = client.retry(id).await?;
    print_snapshot(out, &job)?;
    Ok(exit::OK)
}

pub fn print_snapshot(out: &Output, job: &Value) -> Result<()> {
    if out.json() {
        out.document(job)
    } else {
        out.line(&tables::snapshot(job))
    }
}

/// `jetjobs result`: the document streamed to stdout or to `-o FILE` (a partial file is
/// removed when the transfer fails).
pub async fn result(client: &Client, args: ResultArgs) -> Result<u8> {
    let response = client.result(&args.id).await?;
    let length = response.content_length();
    let mut body = response.bytes_stream();
    // No bound on the whole transfer (a result can be large), but on each silence.
    let idle = client.timeout();
    match &args.output {
        None => {
            let mut last = None;
            while let Some(chunk) = next_chunk(&mut body, idle).await? {
                if let Some(&byte) = chunk.last() {
                    last = Some(byte);
                }
                write_stdout(&chunk)?;
            }
            if std::io::stdout().is_terminal() && last != Some(b'\n') {
                write_stdout(b"\n")?;
            }
        }
        Some(path) => {
            let bar = upload::bytes_bar(length);
            let written = async {
                let mut file = tokio::fs::File::create(path)
                    .await
                    .map_err(|e| Error::file(path, e))?;
                while let Some(chunk) = next_chunk(&mut body, idle).await? {
                    file.write_all(&chunk)
                        .await
                        .map_err(|e| Error::file(path, e))?;
                    bar.inc(chunk.len() as u64);
                }
                file.flush().await.map_err(|e| Error::file(path, e))?;
                file.sync_all().await.map_err(|e| Error::file(path, e))
            }
            .await;
            bar.finish_and_clear();
            if let Err(e) = written {
                let _ = tokio::fs::remove_file(path).await;
                return Err(e);
            }
            eprintln!("wrote {} bytes to {}", bar.position(), path.display());
        }
    }
    Ok(exit::OK)
}

/// The next chunk of a body, or an error when none came within `idle`.
async fn next_chunk(
    body: &mut (impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    idle: std::time::Duration,
) -> Result<Option<bytes::Bytes>> {
    match tokio::time::timeout(idle, body.next()).await {
        Ok(chunk) => Ok(chunk.transpose()?),
        Err(_) => Err(Error::Unavailable(format!(
            "the gateway sent nothing for {} s",
            idle.as_secs()
        ))),
    }
}

/// `jetjobs history`: every page, oldest first.
pub async fn history(client: &Client, out: &Output, id: &str) -> Result<u8> {
    let mut page = client.history(id, None).await?;
    let mut events = std::mem::take(&mut page.events);
    let mut cursor = page.next_cursor.take();
    while let Some(next) = cursor {
        let mut more = client.history(id, Some(&next)).await?;
        events.append(&mut more.events);
        cursor = more.next_cursor.take();
    }
    if out.json() {
        out.document(&json!({"id": page.id, "kind": page.kind, "events": events}))?;
    } else {
        out.line(&format!("job {} ({})", page.id, page.kind))?;
        out.line(&tables::history(&events))?;
    }
    Ok(exit::OK)
}

/// `jetjobs ls`.
pub async fn ls(client: &Client, out: &Output, args: LsArgs) -> Result<u8> {
    let filter = ListFilter {
        kind: args.kind,
        state: args.state,
        limit: args.limit,
    };
    let mut page = client.list(&filter, None).await?;
    if out.json() && !args.all {
        out.document(&json!({"jobs": page.jobs, "next_cursor": page.next_cursor}))?;
        return Ok(exit::OK);
    }
    let mut rows = Vec::new();
    let mut more = false;
    loop {
        if out.json() {
            for job in &page.jobs {
                out.ndjson(job)?;
            }
        } else {
            rows.append(&mut page.jobs);
        }
        match page.next_cursor.take() {
            Some(cursor) if args.all => page = client.list(&filter, Some(&cursor)).await?,
            Some(_) => {
                more = true;
                break;
            }
            None => break,
        }
    }
    if !out.json() {
        if rows.is_empty() {
            eprintln!("no jobs");
        } else {
            out.line(&tables::jobs(&rows))?;
        }
        if more {
            eprintln!("(more jobs: --all for every page, or a larger --limit)");
        }
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    #[test]
    fn a_503_naming_a_job_says_to_retry_with_its_id() {
        let body = br#"{"type":"/problems/unavailable","title":"Service Unavailable","status":503,
            "detail":"JetStream did not confirm the job in time","job_id":"6f1c1f0e-8a4b-4d7e-9d55-1d1f4b0f2a10"}"#;
        let error = may_be_queued(
            crate::client::problem(StatusCode::SERVICE_UNAVAILABLE, body.to_vec()),
            "hash",
        );
        let line = error.to_string();
        assert!(
            line.contains("--id 6f1c1f0e-8a4b-4d7e-9d55-1d1f4b0f2a10")
                && line.contains("submit hash"),
            "{line}"
        );
        assert_eq!(error.exit_code(), exit::UNAVAILABLE);
        // Without a job id, nothing was accepted: the error as it is.
        let plain = crate::client::problem(StatusCode::SERVICE_UNAVAILABLE, b"{}".to_vec());
        assert_eq!(
            may_be_queued(plain, "hash").to_string(),
            "Service Unavailable (503)"
        );
    }
}

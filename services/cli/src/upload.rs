//! Files sent to the gateway as streams (never whole in memory), with a progress bar:
//! `jetjobs upload` and the file of `submit --file`.

use std::path::{Path, PathBuf};

use futures::TryStreamExt as _;
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::UploadArgs;
use crate::client::Client;
use crate::error::{Error, Result, exit};
use crate::output::Output;
use crate::tables;

/// Bytes read from a file at once.
const CHUNK: usize = 256 * 1024;

/// A progress bar of bytes on stderr (hidden when stderr is not a terminal); a spinner
/// when the total is not known.
pub fn bytes_bar(total: Option<u64>) -> ProgressBar {
    match total {
        Some(total) => {
            let bar = ProgressBar::new(total);
            if let Ok(style) = ProgressStyle::with_template(
                "{wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            ) {
                bar.set_style(style);
            }
            bar
        }
        None => {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} {bytes} {bytes_per_sec}") {
                bar.set_style(style);
            }
            bar
        }
    }
}

/// A local file to send.
#[derive(Debug)]
pub struct FileBody {
    file: tokio::fs::File,
    path: PathBuf,
    len: u64,
}

impl FileBody {
    /// Opens `path` (a regular file: its size is the bar's total).
    pub async fn open(path: &Path) -> Result<Self> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| Error::file(path, e))?;
        let metadata = file.metadata().await.map_err(|e| Error::file(path, e))?;
        if !metadata.is_file() {
            return Err(Error::Usage(format!("{}: not a file", path.display())));
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
            len: metadata.len(),
        })
    }

    /// Its content type, from its name (`application/octet-stream` when unknown).
    pub fn content_type(&self) -> String {
        mime_guess::from_path(&self.path)
            .first_or_octet_stream()
            .to_string()
    }

    /// The file as a streamed request body, and the bar its reading moves.
    pub fn body(self) -> (reqwest::Body, ProgressBar) {
        let bar = bytes_bar(Some(self.len));
        let moved = bar.clone();
        let stream = tokio_util::io::ReaderStream::with_capacity(self.file, CHUNK)
            .inspect_ok(move |chunk| moved.inc(chunk.len() as u64));
        (reqwest::Body::wrap_stream(stream), bar)
    }

    /// The file as the multipart part `file` of a submit.
    pub fn into_part(self) -> Result<(reqwest::multipart::Part, ProgressBar)> {
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "file".to_string());
        let content_type = self.content_type();
        let len = self.len;
        let (body, bar) = self.body();
        let part = reqwest::multipart::Part::stream_with_length(body, len)
            .file_name(name)
            .mime_str(&content_type)
            .map_err(|e| Error::Usage(format!("content type {content_type:?}: {e}")))?;
        Ok((part, bar))
    }
}

/// `jetjobs upload`.
pub async fn upload(client: &Client, out: &Output, args: UploadArgs) -> Result<u8> {
    let file = FileBody::open(&args.file).await?;
    let content_type = args
        .content_type
        .clone()
        .unwrap_or_else(|| file.content_type());
    let (body, bar) = file.body();
    let uploaded = client.upload(body, &content_type).await;
    bar.finish_and_clear();
    let blob = uploaded?;
    if out.json() {
        out.document(&blob)?;
    } else {
        out.line(&tables::blob(&blob))?;
    }
    Ok(exit::OK)
}

//! One request, upload and job: `POST /v1/jobs` as `multipart/form-data` with a part
//! `job` (the usual JSON submit body) and a part `file` (the bytes, streamed into
//! `job_blobs` as they arrive). The parts may come in either order.

use axum::extract::Request;
use axum::http::{HeaderMap, header};
use jetjobs::blobs::BlobInfo;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiError;
use crate::submit::SubmitBody;

const JOB_PART: &str = "job";
const FILE_PART: &str = "file";

/// `POST /v1/jobs` as `multipart/form-data` (the schema in the OpenAPI document).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // a schema: the parts are read as a stream
pub struct MultipartSubmit {
    /// The job, as the JSON body would be (`Content-Type: application/json`); the
    /// kind's upload field is filled in with the file's blob id.
    #[schema(value_type = String, content_media_type = "application/json")]
    job: String,
    /// The file, streamed into `job_blobs`.
    #[schema(value_type = String, format = Binary, content_media_type = "application/octet-stream")]
    file: String,
}

pub fn is_multipart(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .eq_ignore_ascii_case("multipart/form-data")
        })
}

/// The uploaded file: its blob and the payload field it was put in.
pub struct File {
    pub blob: BlobInfo,
    pub field: String,
}

/// Reads both parts: the job's body with the file's blob id in its kind's upload field,
/// its size, and the file. On any error the file, if stored, is deleted.
pub async fn read(
    state: &AppState,
    request: Request,
) -> Result<(SubmitBody, usize, File), ApiError> {
    let mut stored: Option<BlobInfo> = None;
    let result = read_parts(state, request, &mut stored).await;
    if result.is_err()
        && let Some(blob) = stored
    {
        discard(state, &blob.id).await;
    }
    result
}

pub async fn discard(state: &AppState, blob: &str) {
    if let Err(e) = state.blobs.delete(blob).await {
        tracing::warn!(%blob, error = %e, "Could not delete an upload whose job was refused; the sweeper will.");
    }
}

async fn read_parts(
    state: &AppState,
    request: Request,
    stored: &mut Option<BlobInfo>,
) -> Result<(SubmitBody, usize, File), ApiError> {
    let limit = state.blob_limits.max_bytes;
    crate::blobs::refuse_declared_size(request.headers(), limit.saturating_add(1 << 20))?;
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let boundary = multer::parse_boundary(&content_type)
        .map_err(|e| ApiError::bad_request(format!("a multipart body needs a boundary: {e}")))?;
    let constraints = multer::Constraints::new()
        .allowed_fields(vec![JOB_PART, FILE_PART])
        .size_limit(multer::SizeLimit::new().for_field(JOB_PART, state.max_body_bytes as u64));
    let mut parts = multer::Multipart::with_constraints(
        request.into_body().into_data_stream(),
        boundary,
        constraints,
    );
    let mut job: Option<(SubmitBody, usize)> = None;
    loop {
        let part = match parts.next_field().await {
            Ok(Some(part)) => part,
            Ok(None) => break,
            Err(e) => return Err(multipart_error(e)),
        };
        match part.name() {
            Some(JOB_PART) if job.is_none() => {
                let bytes = part.bytes().await.map_err(multipart_error)?;
                let size = bytes.len();
                let body = axum::Json::<SubmitBody>::from_bytes(&bytes)
                    .map(|axum::Json(body)| body)
                    .map_err(ApiError::from)?;
                if body.id.is_some() {
                    return Err(ApiError::bad_request(
                        "`id` is chosen by the server on POST; use PUT /v1/jobs/{id} to choose it",
                    ));
                }
                // Refused before the file is read, when the job part comes first.
                upload_field(state, &body).await?;
                job = Some((body, size));
            }
            Some(FILE_PART) if stored.is_none() => {
                let content_type = part
                    .content_type()
                    .map(ToString::to_string)
                    .unwrap_or_else(|| crate::blobs::OCTET_STREAM.to_string());
                let id = uuid::Uuid::now_v7().to_string();
                let info = state
                    .blobs
                    .put(&id, &content_type, None, part, limit)
                    .await?;
                *stored = Some(info);
            }
            Some(name) => {
                return Err(ApiError::bad_request(format!(
                    "the part {name:?} came twice; send one `job` and one `file`"
                )));
            }
            None => {
                return Err(ApiError::bad_request(
                    "every part needs a name (Content-Disposition: form-data; name=...)",
                ));
            }
        }
    }
    let Some((mut body, size)) = job else {
        return Err(ApiError::invalid(
            "the multipart body has no part named `job` (the JSON submit body)",
        ));
    };
    let Some(blob) = stored.clone() else {
        return Err(ApiError::invalid(
            "the multipart body has no part named `file`; without a file, POST JSON",
        ));
    };
    let field = upload_field(state, &body).await?;
    let Some(payload) = body.payload.as_object_mut() else {
        return Err(ApiError::invalid("the payload must be a JSON object"));
    };
    if payload.contains_key(&field) {
        return Err(ApiError::invalid(format!(
            "the payload already names {field}; the uploaded file goes there"
        ))
        .with("field", json!(field)));
    }
    payload.insert(field.clone(), Value::String(blob.id.clone()));
    Ok((body, size, File { blob, field }))
}

/// The payload field the job's kind takes a file in, or a 422.
async fn upload_field(state: &AppState, body: &SubmitBody) -> Result<String, ApiError> {
    match state.kinds.lookup(&body.kind).await {
        Ok(Some(registered)) => registered.info.upload_field.clone().ok_or_else(|| {
            ApiError::invalid(format!(
                "kind {} takes no file; submit it as JSON",
                body.kind
            ))
        }),
        // The submit that follows says so in its own words (unknown kind).
        Ok(None) => Err(ApiError::invalid(format!("unknown kind \"{}\"", body.kind))),
        Err(e) => Err(ApiError::unavailable(
            format!("cannot read the kind registry: {e}"),
            1,
        )),
    }
}

fn multipart_error(e: multer::Error) -> ApiError {
    match e {
        multer::Error::UnknownField { field_name } => ApiError::bad_request(format!(
            "unknown part {:?}; a submit has a part `job` and a part `file`",
            field_name.unwrap_or_default()
        )),
        multer::Error::FieldSizeExceeded { .. } | multer::Error::StreamSizeExceeded { .. } => {
            ApiError::too_large("the `job` part is larger than the gateway accepts")
        }
        other => ApiError::bad_request(format!("the multipart body is malformed: {other}")),
    }
}

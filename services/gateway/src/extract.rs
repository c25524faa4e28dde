//! Extractors whose rejections are problem+json too.

use axum::extract::FromRequest;

use crate::error::ApiError;

/// `axum::Json`, but a malformed, mistyped, oversized or non-JSON body is an [`ApiError`].
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

//! What cursor pages share: the `limit` parameter and opaque cursors that are only
//! valid where they were given out.

use base64::Engine as _;

use crate::error::ApiError;

/// `limit` from a query: `default` when absent, else a whole number in `1..=max`.
pub fn limit(text: Option<&str>, default: usize, max: usize) -> Result<usize, ApiError> {
    let Some(text) = text else {
        return Ok(default);
    };
    match text.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(ApiError::bad_request(format!(
            "limit must be a whole number from 1 to {max}, got {text:?}"
        ))),
    }
}

/// A cursor: a stream sequence to continue after, bound to a `scope` (the job, the
/// filters) so that one listing's cursor is refused by another.
pub fn encode_cursor(tag: &str, after: u64, scope: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{tag}.{after}.{scope}"))
}

/// The sequence of a cursor [`encode_cursor`] made with the same `tag` and `scope`.
pub fn decode_cursor(cursor: &str, tag: &str, scope: &str) -> Result<u64, ApiError> {
    let invalid = || {
        ApiError::bad_request(format!(
            "cursor {cursor:?} is not one this listing gave out with these parameters \
             (use next_cursor as it is, with the same filters)"
        ))
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let mut parts = text.splitn(3, '.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(t), Some(after), Some(s)) if t == tag && s == scope => {
            after.parse().map_err(|_| invalid())
        }
        _ => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_are_valid_only_where_they_were_made() {
        let cursor = encode_cursor("h1", 42, "job-a");
        assert_eq!(decode_cursor(&cursor, "h1", "job-a").ok(), Some(42));
        assert!(decode_cursor(&cursor, "h1", "job-b").is_err());
        assert!(decode_cursor(&cursor, "d1", "job-a").is_err());
        assert!(decode_cursor("not-a-cursor", "h1", "job-a").is_err());
    }

    #[test]
    fn limits_are_bounded() {
        assert_eq!(limit(None, 50, 1000).ok(), Some(50));
        assert_eq!(limit(Some("1000"), 50, 1000).ok(), Some(1000));
        assert!(limit(Some("0"), 50, 1000).is_err());
        assert!(limit(Some("1001"), 50, 1000).is_err());
        assert!(limit(Some("ten"), 50, 1000).is_err());
    }
}

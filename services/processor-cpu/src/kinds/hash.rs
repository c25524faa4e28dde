//! `hash`: iterated SHA-256. `d0` is empty and `dk = sha256(d(k-1) ‖ data)`, so one round
//! is the plain SHA-256 of the data, and the work grows linearly with `rounds`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use jetjobs::processor::{Handler, JobContext, JobError, KindDef, constrain, schema_of};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest as _, Sha256};

pub const KIND: &str = "hash";

/// Bytes fed to the hasher per call; large inputs are streamed, never copied.
const CHUNK: usize = 64 * 1024;
/// About a millisecond of hashing between two looks at cancellation and progress:
/// often enough to stop promptly, rare enough to cost nothing.
const CHECK_EVERY_BYTES: u64 = 1024 * 1024;
/// Per-round cost charged to the pacing budget besides the data itself (the previous
/// digest and the final padding), so that tiny inputs are paced too.
const ROUND_OVERHEAD_BYTES: u64 = 64;

static ZEROS: [u8; CHUNK] = [0; CHUNK];

/// Exactly one of `data_b64`, `data_blob` and `size`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HashRequest {
    /// The data, base64 (standard alphabet, padded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_b64: Option<String>,
    /// The id of an uploaded blob (`POST /v1/blobs`) to hash, read as a stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_blob: Option<String>,
    /// Hash this many zero bytes instead of sending data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Rounds of `dk = sha256(d(k-1) ‖ data)`, at least 1.
    pub rounds: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema)]
pub struct HashResult {
    pub algorithm: &'static str,
    pub rounds: u64,
    /// `d(rounds)`, lower-case hex.
    pub digest: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashLimits {
    /// Largest input, in bytes.
    pub max_bytes: u64,
    pub max_rounds: u64,
}

pub struct Hash {
    limits: HashLimits,
}

impl Hash {
    pub fn new(limits: HashLimits) -> Self {
        Self { limits }
    }
}

impl Handler for Hash {
    type Payload = HashRequest;
    type Output = HashResult;

    fn def(&self) -> KindDef {
        KindDef::new(
            KIND,
            "Iterated SHA-256 of `data_b64`, of blob `data_blob` or of `size` zero bytes: d0 = empty, dk = sha256(d(k-1) ‖ data).",
        )
        .upload_field("data_blob")
    }

    /// The derived schema plus what [`validate`] checks: `rounds` within 1..=max,
    /// `size` and the decoded `data_b64` within the input limit, exactly one of the two.
    fn schema(&self) -> serde_json::Value {
        let mut schema = schema_of::<HashRequest>();
        let limits = &self.limits;
        constrain(
            &mut schema,
            "rounds",
            json!({"minimum": 1, "maximum": limits.max_rounds}),
        );
        constrain(&mut schema, "size", json!({"maximum": limits.max_bytes}));
        constrain(&mut schema, "data_b64", base64_bound(limits.max_bytes));
        if let Some(object) = schema.as_object_mut() {
            object.insert(
                "oneOf".into(),
                json!([
                    {"required": ["data_b64"], "properties": {"data_b64": {"type": "string"}}},
                    {"required": ["data_blob"], "properties": {"data_blob": {"type": "string"}}},
                    {"required": ["size"], "properties": {"size": {"type": "integer"}}}
                ]),
            );
        }
        schema
    }

    async fn handle(&self, payload: HashRequest, ctx: JobContext) -> Result<HashResult, JobError> {
        let (source, rounds) = validate(payload, &self.limits)?;
        if let Source::Blob(id) = source {
            let digest = hash_blob(&ctx, &id, rounds).await?;
            return Ok(HashResult {
                algorithm: "sha256",
                rounds,
                digest: hex(&digest),
            });
        }
        let max_bytes = self.limits.max_bytes;
        ctx.blocking(move |ctx| {
            // Decoding up to the size cap of base64 is CPU work too.
            let input = source.into_input(max_bytes)?;
            let digest = hash_rounds(
                &input,
                rounds,
                |done, total| ctx.progress(done, total),
                || ctx.is_cancelled(),
            )?;
            Ok(HashResult {
                algorithm: "sha256",
                rounds,
                digest: hex(&digest),
            })
        })
        .await?
    }
}

/// The schema of padded base64 that decodes to at most `max_bytes` bytes. A length
/// bounds the bytes only to a group of 4 characters (3 bytes); at the longest length,
/// the padding says how many bytes the last group holds.
fn base64_bound(max_bytes: u64) -> serde_json::Value {
    let max_len = max_bytes.div_ceil(3).saturating_mul(4);
    match max_bytes % 3 {
        0 => json!({"maxLength": max_len}),
        rest => json!({
            "maxLength": max_len,
            "if": {"type": "string", "minLength": max_len},
            "then": {"pattern": if rest == 1 { "==$" } else { "=$" }},
        }),
    }
}

/// Where the bytes come from, once the request is known to be well-formed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Base64(String),
    Zeros(u64),
    /// A blob in `job_blobs`, streamed (never whole in memory).
    Blob(String),
}

/// The bytes to hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    Bytes(Vec<u8>),
    /// A run of zeros, streamed from a static buffer rather than allocated.
    Zeros(u64),
}

/// The cheap checks, done before any work is scheduled. Every failure is permanent:
/// the same request fails the same way on every attempt.
pub fn validate(request: HashRequest, limits: &HashLimits) -> Result<(Source, u64), JobError> {
    let rounds = request.rounds;
    if rounds == 0 {
        return Err(JobError::permanent("rounds must be at least 1"));
    }
    if rounds > limits.max_rounds {
        return Err(JobError::Permanent(format!(
            "rounds = {rounds} is above the limit of {}",
            limits.max_rounds
        )));
    }
    let given = [
        request.data_b64.is_some(),
        request.data_blob.is_some(),
        request.size.is_some(),
    ];
    if given.iter().filter(|g| **g).count() > 1 {
        return Err(JobError::permanent(
            "give one of data_b64, data_blob or size, not several",
        ));
    }
    if let Some(id) = request.data_blob {
        return Ok((Source::Blob(id), rounds));
    }
    let source = match (request.data_b64, request.size) {
        (Some(data), None) => {
            // Base64 is 4 characters per 3 bytes: reject oversize input before decoding it.
            if (data.len() as u64) / 4 * 3 > limits.max_bytes.saturating_add(2) {
                return Err(too_large(
                    base64::decoded_len_estimate(data.len()) as u64,
                    limits.max_bytes,
                ));
            }
            Source::Base64(data)
        }
        (None, Some(size)) => {
            if size > limits.max_bytes {
                return Err(too_large(size, limits.max_bytes));
            }
            Source::Zeros(size)
        }
        (Some(_), Some(_)) => {
            return Err(JobError::permanent(
                "give either data_b64 or size, not both",
            ));
        }
        (None, None) => {
            return Err(JobError::permanent(
                "give one of data_b64, data_blob or size",
            ));
        }
    };
    Ok((source, rounds))
}

fn too_large(bytes: u64, max: u64) -> JobError {
    JobError::Permanent(format!(
        "the input is {bytes} bytes, above the limit of {max} bytes"
    ))
}

impl Source {
    pub fn into_input(self, max_bytes: u64) -> Result<Input, JobError> {
        match self {
            Self::Zeros(size) => Ok(Input::Zeros(size)),
            Self::Blob(id) => Err(JobError::Permanent(format!(
                "blob {id} is hashed as a stream, not loaded"
            ))),
            Self::Base64(data) => {
                let bytes = STANDARD.decode(data.as_bytes()).map_err(|e| {
                    JobError::Permanent(format!("data_b64 is not valid base64: {e}"))
                })?;
                if bytes.len() as u64 > max_bytes {
                    return Err(too_large(bytes.len() as u64, max_bytes));
                }
                Ok(Input::Bytes(bytes))
            }
        }
    }
}

impl Input {
    fn chunks(&self) -> Chunks<'_> {
        Chunks {
            input: self,
            offset: 0,
        }
    }
}

/// The input in slices of at most [`CHUNK`] bytes, without allocating.
struct Chunks<'a> {
    input: &'a Input,
    offset: u64,
}

impl<'a> Iterator for Chunks<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let chunk: &'a [u8] = match self.input {
            Input::Bytes(bytes) => {
                let start = usize::try_from(self.offset).ok()?;
                let end = start.saturating_add(CHUNK).min(bytes.len());
                bytes.get(start..end)?
            }
            Input::Zeros(size) => {
                let left = size.saturating_sub(self.offset);
                &ZEROS[..usize::try_from(left).map_or(CHUNK, |left| left.min(CHUNK))]
            }
        };
        if chunk.is_empty() {
            return None;
        }
        self.offset += chunk.len() as u64;
        Some(chunk)
    }
}

/// `d(rounds)` of blob `id`: each round reads the blob again from `job_blobs` as a
/// stream (bridged to a blocking reader on the blocking pool), so memory stays at one
/// chunk whatever the blob's size.
async fn hash_blob(ctx: &JobContext, id: &str, rounds: u64) -> Result<[u8; 32], JobError> {
    let mut digest = None;
    for round in 1..=rounds {
        let reader = tokio_util::io::SyncIoBridge::new(ctx.blob(id).await?);
        let previous = digest;
        digest = Some(
            ctx.blocking(move |ctx| {
                hash_reader(reader, previous, || {
                    if ctx.is_cancelled() {
                        return Err(super::cancelled());
                    }
                    ctx.progress(round - 1, rounds);
                    Ok(())
                })
            })
            .await??,
        );
    }
    digest.ok_or_else(|| JobError::permanent("rounds must be at least 1"))
}

/// One round over `reader`: `sha256(previous ‖ data)`. Calls `check` about every
/// [`CHECK_EVERY_BYTES`].
fn hash_reader(
    mut reader: impl std::io::Read,
    previous: Option<[u8; 32]>,
    mut check: impl FnMut() -> Result<(), JobError>,
) -> Result<[u8; 32], JobError> {
    let mut hasher = Sha256::new();
    if let Some(previous) = &previous {
        hasher.update(previous);
    }
    let mut pacer = Pacer {
        budget: CHECK_EVERY_BYTES,
    };
    let mut buffer = vec![0u8; CHUNK];
    loop {
        let n = reader
            .read(&mut buffer)
            .map_err(|e| JobError::Retryable(format!("reading the blob: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        if pacer.spend(n as u64) {
            check()?;
        }
    }
    Ok(hasher.finalize().into())
}

/// Counts work done and says when it is time to look at cancellation and report progress.
struct Pacer {
    budget: u64,
}

impl Pacer {
    fn spend(&mut self, bytes: u64) -> bool {
        self.budget = self.budget.saturating_sub(bytes);
        if self.budget == 0 {
            self.budget = CHECK_EVERY_BYTES;
            true
        } else {
            false
        }
    }
}

/// Computes `d(rounds)`. Calls `progress(rounds done, rounds)` and `cancelled()` about
/// every [`CHECK_EVERY_BYTES`] hashed, also inside a round over a large input.
pub fn hash_rounds(
    input: &Input,
    rounds: u64,
    mut progress: impl FnMut(u64, u64),
    cancelled: impl Fn() -> bool,
) -> Result<[u8; 32], JobError> {
    let mut pacer = Pacer {
        budget: CHECK_EVERY_BYTES,
    };
    let mut check = |done: u64| {
        if cancelled() {
            return Err(super::cancelled());
        }
        progress(done, rounds);
        Ok(())
    };
    let mut digest: Option<[u8; 32]> = None;
    for round in 1..=rounds {
        let mut hasher = Sha256::new();
        if let Some(previous) = &digest {
            hasher.update(previous);
        }
        for chunk in input.chunks() {
            hasher.update(chunk);
            if pacer.spend(chunk.len() as u64) {
                check(round - 1)?;
            }
        }
        digest = Some(hasher.finalize().into());
        if pacer.spend(ROUND_OVERHEAD_BYTES) {
            check(round)?;
        }
    }
    // rounds >= 1 is validated; zero rounds would be the empty d0, which has no digest.
    digest.ok_or_else(|| JobError::permanent("rounds must be at least 1"))
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[test]
    fn a_streamed_blob_hashes_like_the_same_bytes_inline() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let inline =
            hash_rounds(&Input::Bytes(data.clone()), 3, |_, _| {}, || false).expect("hash");
        let mut digest = None;
        for _ in 0..3 {
            digest = Some(hash_reader(&data[..], digest, || Ok(())).expect("hash"));
        }
        assert_eq!(digest, Some(inline));
    }
    use serde_json::json;

    /// Every refusal of [`validate`] and [`Source::into_input`] is a 422 at submit, and
    /// nothing the handler accepts is refused, at each residue of the byte limit.
    #[test]
    fn the_schema_refuses_what_the_handler_refuses() {
        for max_bytes in [9, 10, 11] {
            let limits = HashLimits {
                max_bytes,
                max_rounds: 5,
            };
            let mut payloads = vec![
                json!({"rounds": 1}),
                json!({"size": 1, "data_b64": "AA==", "rounds": 1}),
                json!({"size": 1, "data_b64": null, "rounds": 1}),
                json!({"size": 1, "rounds": 1, "extra": true}),
                json!({"size": -1, "rounds": 1}),
                json!({"size": 1, "rounds": "1"}),
            ];
            for rounds in [0, 1, 5, 6] {
                for size in [0, max_bytes, max_bytes + 1] {
                    payloads.push(json!({"size": size, "rounds": rounds}));
                }
                for len in 0..=max_bytes as usize + 4 {
                    let data = STANDARD.encode(vec![7u8; len]);
                    payloads.push(json!({"data_b64": data, "rounds": rounds}));
                }
            }
            let hash = Hash::new(limits);
            jetjobs::testing::assert_schema_agrees(&Handler::schema(&hash), &payloads, |p| {
                serde_json::from_value::<HashRequest>(p.clone())
                    .ok()
                    .and_then(|request| validate(request, &limits).ok())
                    .is_some_and(|(source, _)| source.into_input(limits.max_bytes).is_ok())
            });
        }
    }

    const LIMITS: HashLimits = HashLimits {
        max_bytes: 1024 * 1024,
        max_rounds: 1_000_000,
    };

    fn run(input: &Input, rounds: u64) -> String {
        hex(&hash_rounds(input, rounds, |_, _| {}, || false).expect("not cancelled"))
    }

    fn sha256(data: &[u8]) -> [u8; 32] {
        Sha256::digest(data).into()
    }

    #[test]
    fn one_round_is_plain_sha256() {
        assert_eq!(
            run(&Input::Bytes(b"abc".to_vec()), 1),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            run(&Input::Bytes(Vec::new()), 1),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn each_round_hashes_the_previous_digest_then_the_data() {
        let d1 = sha256(b"abc");
        let d2 = sha256(&[d1.as_slice(), b"abc"].concat());
        let d3 = sha256(&[d2.as_slice(), b"abc"].concat());
        let input = Input::Bytes(b"abc".to_vec());
        assert_eq!(run(&input, 2), hex(&d2));
        assert_eq!(run(&input, 3), hex(&d3));
    }

    #[test]
    fn size_hashes_that_many_zeros() {
        // Spans several chunks, with a partial one at the end.
        let size = CHUNK * 3 + 17;
        let zeros = Input::Zeros(size as u64);
        let bytes = Input::Bytes(vec![0; size]);
        assert_eq!(run(&zeros, 1), hex(&sha256(&vec![0; size])));
        assert_eq!(run(&zeros, 2), run(&bytes, 2));
        assert_eq!(
            run(&Input::Zeros(0), 1),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn progress_is_paced_and_monotonic() {
        let mut reports = Vec::new();
        // 1 KiB per round: about a thousand rounds between two reports.
        hash_rounds(
            &Input::Zeros(1024),
            10_000,
            |done, total| reports.push((done, total)),
            || false,
        )
        .expect("not cancelled");
        assert!(
            (5..=20).contains(&reports.len()),
            "{} reports",
            reports.len()
        );
        assert!(reports.windows(2).all(|w| w[0].0 <= w[1].0));
        assert!(
            reports
                .iter()
                .all(|&(done, total)| total == 10_000 && done <= total)
        );
    }

    #[test]
    fn cancellation_stops_it_early_even_within_one_round() {
        let checks = Cell::new(0);
        let outcome = hash_rounds(
            &Input::Zeros(64 * 1024 * 1024),
            1,
            |_, _| {},
            || {
                checks.set(checks.get() + 1);
                true
            },
        );
        assert_eq!(outcome, Err(JobError::Retryable("cancelled".to_string())));
        assert_eq!(checks.get(), 1, "stopped at the first check");
    }

    #[test]
    fn requests_are_validated() {
        let request = |value| serde_json::from_value::<HashRequest>(value).expect("decodes");
        assert_eq!(
            validate(request(json!({"data_b64": "YWJj", "rounds": 2})), &LIMITS),
            Ok((Source::Base64("YWJj".to_string()), 2))
        );
        assert_eq!(
            validate(request(json!({"size": 10, "rounds": 1})), &LIMITS),
            Ok((Source::Zeros(10), 1))
        );
        assert_eq!(
            validate(request(json!({"data_blob": "b", "rounds": 4})), &LIMITS),
            Ok((Source::Blob("b".to_string()), 4))
        );
        for (value, expected) in [
            (json!({"size": 1, "rounds": 0}), "at least 1"),
            (json!({"size": 1, "rounds": 1_000_001}), "above the limit"),
            (json!({"size": 1_048_577, "rounds": 1}), "above the limit"),
            (
                json!({"data_b64": "YWJj", "size": 3, "rounds": 1}),
                "not several",
            ),
            (
                json!({"data_blob": "0190a0a0-0000-7000-8000-000000000000", "size": 3, "rounds": 1}),
                "not several",
            ),
            (json!({"rounds": 1}), "one of"),
            (
                json!({"data_b64": "A".repeat(2 * 1024 * 1024), "rounds": 1}),
                "above the limit",
            ),
        ] {
            match validate(request(value.clone()), &LIMITS) {
                Err(JobError::Permanent(message)) => {
                    assert!(message.contains(expected), "{value}: {message}");
                }
                other => panic!("{value}: expected a permanent error, got {other:?}"),
            }
        }
        assert!(
            serde_json::from_value::<HashRequest>(json!({"size": 1, "rounds": 1, "x": 0})).is_err()
        );
    }

    #[test]
    fn base64_is_decoded_and_checked() {
        assert_eq!(
            Source::Base64("YWJj".to_string()).into_input(3),
            Ok(Input::Bytes(b"abc".to_vec()))
        );
        match Source::Base64("not base64!".to_string()).into_input(100) {
            Err(JobError::Permanent(message)) => assert!(message.contains("base64"), "{message}"),
            other => panic!("expected a permanent error, got {other:?}"),
        }
        // The length check before decoding is approximate; this one is exact.
        assert!(matches!(
            Source::Base64("YWJj".to_string()).into_input(2),
            Err(JobError::Permanent(_))
        ));
    }

    #[test]
    fn hex_is_lower_case_and_padded() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
        assert_eq!(hex(&[]), "");
    }
}

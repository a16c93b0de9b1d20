//! What Python publishes about a natively queued model, and the fast path's check of a request.
//!
//! The check is *conservative*: it accepts only requests it has verified in full
//! (every input raw, known, of the declared datatype and shape, sized exactly,
//! within its declared range; known outputs; no parameters it does not
//! understand). Everything else is handed, as its wire bytes, to the Python
//! handlers, which validate it with the one set of rules and messages
//! (`onnxserve/server/inference.py`) and answer it: a request Python would
//! refuse is never accepted here, and no refusal message is written twice.
use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;

use crate::proto::{infer_parameter::ParameterChoice, ModelInferRequest};

/// The most elements an input's non-zero dimensions may describe
/// (`onnxserve.server.inference.MAX_ELEMENTS`).
pub const MAX_ELEMENTS: u64 = 1 << 48;

/// One input or output of the model, as its completed config declares it.
#[derive(Clone, Debug)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: String,
    /// Dimensions after the batch dimension; -1 is any size.
    pub dims: Vec<i64>,
}

/// A model version whose batches Python runs from this queue.
#[derive(Clone, Debug)]
pub struct ModelSpec {
    pub name: String,
    /// The version label answers carry (`model_version`).
    pub version: String,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    pub max_batch_size: i64,
    /// Inclusive bounds of integer inputs (None: open on that side), by input index.
    pub ranges: HashMap<usize, (Option<i64>, Option<i64>)>,
    /// Rows at which a batch leaves at once (the largest preferred size, else max rows).
    pub target_rows: usize,
    /// The most rows one batch holds.
    pub max_rows: usize,
    /// How long the oldest request may wait for a fuller batch (0: leave with what is there).
    pub max_queue_delay: Duration,
    /// Requests queued at most (0: no bound).
    pub max_queue_size: usize,
    /// The queue policy's default timeout (0: none).
    pub default_timeout: Duration,
    pub allow_timeout_override: bool,
}

/// A request the fast path accepted: what the queue and the answer need.
#[derive(Debug)]
pub struct Accepted {
    pub id: String,
    pub rows: usize,
    /// Each input's shape after the batch dimension, in the spec's input order:
    /// only requests with equal keys share a batch.
    pub key: Vec<Vec<i64>>,
    /// Each input's raw bytes, in the spec's input order (slices of the request).
    pub inputs: Vec<Bytes>,
    /// Requested outputs as indices into the spec's outputs, in the order asked.
    pub outputs: Vec<usize>,
    /// The `timeout` request parameter in microseconds (0: not set).
    pub timeout_us: u64,
    /// The request came with typed contents: so does its answer, as Python answers
    /// (unless an output is FP16 or BF16, which have no typed field).
    pub typed: bool,
}

/// Bytes per element of a fixed-size datatype; None for BYTES and unknown names.
pub fn itemsize(datatype: &str) -> Option<usize> {
    Some(match datatype {
        "BOOL" | "INT8" | "UINT8" => 1,
        "INT16" | "UINT16" | "FP16" | "BF16" => 2,
        "INT32" | "UINT32" | "FP32" => 4,
        "INT64" | "UINT64" | "FP64" => 8,
        _ => return None,
    })
}

fn non_negative_int(choice: &Option<ParameterChoice>) -> Option<u64> {
    match choice {
        Some(ParameterChoice::Int64Param(v)) if *v >= 0 => Some(*v as u64),
        Some(ParameterChoice::Uint64Param(v)) => Some(*v),
        _ => None,
    }
}

impl ModelSpec {
    /// Accept the request for the fast path, or None: Python handles it.
    pub fn accept(&self, request: &mut ModelInferRequest) -> Option<Accepted> {
        // Typed contents (every input, no raw ones): converted to raw here, or Python's.
        let typed = request.raw_input_contents.is_empty()
            && !request.inputs.is_empty()
            && request.inputs.iter().all(|t| t.contents.is_some());
        if typed {
            let mut raw = Vec::with_capacity(request.inputs.len());
            for tensor in &request.inputs {
                let contents = tensor.contents.as_ref()?;
                raw.push(crate::typed::contents_to_raw(
                    &tensor.datatype,
                    &tensor.shape,
                    contents,
                )?);
            }
            for tensor in &mut request.inputs {
                tensor.contents = None;
            }
            request.raw_input_contents = raw;
        }
        let batching = self.max_batch_size > 0;
        if !batching
            || request.inputs.len() != self.inputs.len()
            || request.raw_input_contents.len() != request.inputs.len()
        {
            return None;
        }
        let mut timeout_us = 0;
        for (key, value) in &request.parameters {
            match key.as_str() {
                "priority" => {
                    non_negative_int(&value.parameter_choice)?;
                }
                "timeout" => timeout_us = non_negative_int(&value.parameter_choice)?,
                _ => {}
            }
        }
        let count = self.inputs.len();
        let mut slots: Vec<Option<(Vec<i64>, Bytes)>> = vec![None; count];
        let mut rows: Option<i64> = None;
        let raw = std::mem::take(&mut request.raw_input_contents);
        for (tensor, bytes) in request.inputs.iter().zip(raw) {
            if tensor.contents.is_some() {
                return None;
            }
            let index = self.inputs.iter().position(|s| s.name == tensor.name)?;
            let spec = &self.inputs[index];
            if slots[index].is_some() || tensor.datatype != spec.datatype {
                return None;
            }
            let size = itemsize(&spec.datatype);
            if size.is_none() && spec.datatype != "BYTES" {
                return None;
            }
            let shape = &tensor.shape;
            if shape.len() != spec.dims.len() + 1 || shape.iter().any(|d| *d < 0) {
                return None;
            }
            let batch = shape[0];
            if batch < 1 || batch > self.max_batch_size || rows.is_some_and(|r| r != batch) {
                return None;
            }
            rows = Some(batch);
            let body = &shape[1..];
            if body
                .iter()
                .zip(&spec.dims)
                .any(|(got, want)| *want != -1 && got != want)
            {
                return None;
            }
            // Python's MAX_ELEMENTS: the non-zero dimensions may describe at most 2**48.
            let described = shape
                .iter()
                .filter(|d| **d != 0)
                .try_fold(1u64, |acc, d| acc.checked_mul(*d as u64))?;
            if described > MAX_ELEMENTS {
                return None;
            }
            let elements = shape
                .iter()
                .try_fold(1u64, |acc, d| acc.checked_mul(*d as u64))?;
            let sized = match size {
                Some(size) => (elements as u128) * (size as u128) == bytes.len() as u128,
                None => text_framing_holds(&bytes, elements),
            };
            if !sized {
                return None;
            }
            if let Some(bounds) = self.ranges.get(&index) {
                if !within(&bytes, &spec.datatype, *bounds) {
                    return None;
                }
            }
            slots[index] = Some((body.to_vec(), bytes));
        }
        let mut key = Vec::with_capacity(count);
        let mut inputs = Vec::with_capacity(count);
        for slot in slots {
            let (shape, bytes) = slot?;
            key.push(shape);
            inputs.push(bytes);
        }
        let mut outputs = Vec::with_capacity(request.outputs.len());
        for asked in &request.outputs {
            if !asked.parameters.is_empty() {
                return None; // classification and other output parameters: Python's
            }
            let index = self.outputs.iter().position(|s| s.name == asked.name)?;
            if !outputs.contains(&index) {
                outputs.push(index);
            }
        }
        if outputs.is_empty() {
            outputs = (0..self.outputs.len()).collect();
        }
        let rows = usize::try_from(rows?).ok()?;
        if rows > self.max_rows {
            return None;
        }
        Some(Accepted {
            id: std::mem::take(&mut request.id),
            rows,
            key,
            inputs,
            outputs,
            timeout_us,
            typed,
        })
    }

    /// The request's queue timeout, as Triton decides it: the request's `timeout`
    /// may shorten the policy's default (never lengthen it) when overrides are allowed.
    pub fn timeout_of(&self, timeout_us: u64) -> Duration {
        let default = self.default_timeout;
        if self.allow_timeout_override && timeout_us > 0 {
            let asked = Duration::from_micros(timeout_us);
            if default.is_zero() || asked < default {
                return asked;
            }
        }
        default
    }
}

/// Whether raw BYTES contents hold exactly `count` length-prefixed elements (4-byte
/// little-endian lengths), each valid UTF-8: ONNX string tensors hold text, and the
/// Python side's batch decoder (`text_tensors.raw_text_tensor`) takes it from here.
fn text_framing_holds(bytes: &[u8], count: u64) -> bool {
    let mut rest = bytes;
    for _ in 0..count {
        let Some((header, tail)) = rest.split_first_chunk::<4>() else {
            return false;
        };
        let length = u32::from_le_bytes(*header) as usize;
        if tail.len() < length || std::str::from_utf8(&tail[..length]).is_err() {
            return false;
        }
        rest = &tail[length..];
    }
    rest.is_empty()
}

/// The elements of a BYTES tensor's raw bytes (each a 4-byte little-endian length,
/// then that many bytes), or None where that framing does not hold to the end.
pub fn framed_elements(raw: &[u8]) -> Option<Vec<&[u8]>> {
    let mut elements = Vec::new();
    let mut rest = raw;
    while let Some((header, tail)) = rest.split_first_chunk::<4>() {
        let (element, tail) = tail.split_at_checked(u32::from_le_bytes(*header) as usize)?;
        elements.push(element);
        rest = tail;
    }
    rest.is_empty().then_some(elements)
}

/// Whether every value of an integer tensor lies within the bounds.
fn within(bytes: &[u8], datatype: &str, (low, high): (Option<i64>, Option<i64>)) -> bool {
    let low = low.map_or(i128::MIN, i128::from);
    let high = high.map_or(i128::MAX, i128::from);
    let check = |value: i128| value >= low && value <= high;
    macro_rules! all {
        ($t:ty, $n:expr) => {
            bytes
                .chunks_exact($n)
                .all(|c| check(<$t>::from_le_bytes(c.try_into().unwrap_or([0; $n])) as i128))
        };
    }
    match datatype {
        "INT8" => all!(i8, 1),
        "UINT8" => all!(u8, 1),
        "INT16" => all!(i16, 2),
        "UINT16" => all!(u16, 2),
        "INT32" => all!(i32, 4),
        "UINT32" => all!(u32, 4),
        "INT64" => all!(i64, 8),
        "UINT64" => all!(u64, 8),
        _ => false, // a range on a non-integer input: let Python say what it makes of it
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};

    fn spec() -> ModelSpec {
        ModelSpec {
            name: "m".into(),
            version: "1".into(),
            inputs: vec![TensorSpec {
                name: "tokens".into(),
                datatype: "INT32".into(),
                dims: vec![-1],
            }],
            outputs: vec![TensorSpec {
                name: "p".into(),
                datatype: "FP32".into(),
                dims: vec![1],
            }],
            max_batch_size: 8,
            ranges: HashMap::from([(0, (Some(0), Some(9)))]),
            target_rows: 8,
            max_rows: 8,
            max_queue_delay: Duration::ZERO,
            max_queue_size: 0,
            default_timeout: Duration::ZERO,
            allow_timeout_override: true,
        }
    }

    fn request(shape: Vec<i64>, values: &[i32]) -> ModelInferRequest {
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        ModelInferRequest {
            model_name: "m".into(),
            inputs: vec![InferInputTensor {
                name: "tokens".into(),
                datatype: "INT32".into(),
                shape,
                ..Default::default()
            }],
            raw_input_contents: vec![Bytes::from(raw)],
            ..Default::default()
        }
    }

    #[test]
    fn accepts_a_valid_raw_request() {
        let accepted = spec()
            .accept(&mut request(vec![2, 3], &[1, 2, 3, 4, 5, 6]))
            .expect("valid");
        assert_eq!(accepted.rows, 2);
        assert_eq!(accepted.key, vec![vec![3]]);
        assert_eq!(accepted.outputs, vec![0]);
    }

    #[test]
    fn hands_python_what_it_must_refuse() {
        let s = spec();
        assert!(
            s.accept(&mut request(vec![2, 3], &[1, 2, 3, 4, 5]))
                .is_none(),
            "size"
        );
        assert!(
            s.accept(&mut request(vec![9, 1], &[0; 9])).is_none(),
            "batch"
        );
        assert!(
            s.accept(&mut request(vec![1, 2], &[1, 10])).is_none(),
            "range"
        );
        assert!(
            s.accept(&mut request(vec![1, 2], &[-1, 1])).is_none(),
            "range"
        );
        assert!(s.accept(&mut request(vec![2], &[1, 2])).is_none(), "rank");
        let mut absurd = request(vec![1, 0], &[]);
        absurd.inputs[0].shape = vec![1, 1 << 62];
        assert!(s.accept(&mut absurd).is_none(), "absurd");
        let mut typed = request(vec![1, 1], &[1]);
        typed.raw_input_contents.clear();
        assert!(s.accept(&mut typed).is_none(), "typed");
        let mut unknown = request(vec![1, 1], &[1]);
        unknown.outputs.push(InferRequestedOutputTensor {
            name: "q".into(),
            ..Default::default()
        });
        assert!(s.accept(&mut unknown).is_none(), "unknown output");
    }

    #[test]
    fn text_needs_exact_framing_and_utf8() {
        let frame = |words: &[&[u8]]| -> Vec<u8> {
            words
                .iter()
                .flat_map(|w| {
                    (w.len() as u32)
                        .to_le_bytes()
                        .into_iter()
                        .chain(w.iter().copied())
                })
                .collect()
        };
        assert!(text_framing_holds(
            &frame(&[b"good", b"", "caf\u{e9}".as_bytes()]),
            3
        ));
        assert!(!text_framing_holds(&frame(&[b"good"]), 2), "too few");
        assert!(
            !text_framing_holds(&frame(&[b"good", b"x"]), 1),
            "trailing bytes"
        );
        assert!(!text_framing_holds(&frame(&[b"\xff"]), 1), "not UTF-8");
        assert!(
            !text_framing_holds(&[9, 0, 0, 0, b'a'], 1),
            "length past the end"
        );
    }

    #[test]
    fn request_timeout_only_shortens() {
        let mut s = spec();
        s.default_timeout = Duration::from_millis(10);
        assert_eq!(s.timeout_of(5_000), Duration::from_millis(5));
        assert_eq!(s.timeout_of(50_000), Duration::from_millis(10));
        s.allow_timeout_override = false;
        assert_eq!(s.timeout_of(5_000), Duration::from_millis(10));
    }
}

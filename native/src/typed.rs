//! Typed tensor contents (`InferTensorContents`: one repeated field per kind of
//! element) to and from the raw little-endian bytes the queue carries, as the
//! Python codec reads and writes them (`onnxserve.protocol.codec`:
//! `contents_to_array`, `array_to_contents`).
//!
//! Conservative like the fast path's check: a tensor whose field holds the
//! wrong count, or a value its datatype cannot hold, is not converted (None),
//! and the request goes to Python, which refuses it with the usual message.
//! FP16 and BF16 have no typed field: they travel raw only.
use bytes::Bytes;

use crate::proto::InferTensorContents;

/// Elements a shape holds, or None for a negative dimension or an overflow.
fn count(shape: &[i64]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, d| {
        usize::try_from(*d).ok().and_then(|d| acc.checked_mul(d))
    })
}

/// A typed tensor's raw bytes in the protocol's layout (BYTES length-prefixed).
pub fn contents_to_raw(
    datatype: &str,
    shape: &[i64],
    contents: &InferTensorContents,
) -> Option<Bytes> {
    let count = count(shape)?;
    macro_rules! narrow {
        ($values:expr, $t:ty) => {{
            let values = &$values;
            if values.len() != count {
                return None;
            }
            let mut raw = Vec::with_capacity(count * std::mem::size_of::<$t>());
            for value in values {
                raw.extend_from_slice(&<$t>::try_from(*value).ok()?.to_le_bytes());
            }
            raw
        }};
    }
    let raw = match datatype {
        "BOOL" => {
            if contents.bool_contents.len() != count {
                return None;
            }
            contents
                .bool_contents
                .iter()
                .map(|b| u8::from(*b))
                .collect()
        }
        "INT8" => narrow!(contents.int_contents, i8),
        "INT16" => narrow!(contents.int_contents, i16),
        "INT32" => narrow!(contents.int_contents, i32),
        "INT64" => narrow!(contents.int64_contents, i64),
        "UINT8" => narrow!(contents.uint_contents, u8),
        "UINT16" => narrow!(contents.uint_contents, u16),
        "UINT32" => narrow!(contents.uint_contents, u32),
        "UINT64" => narrow!(contents.uint64_contents, u64),
        "FP32" => narrow!(contents.fp32_contents, f32),
        "FP64" => narrow!(contents.fp64_contents, f64),
        "BYTES" => {
            let items = &contents.bytes_contents;
            if items.len() != count {
                return None;
            }
            let mut raw = Vec::with_capacity(items.iter().map(|i| i.len() + 4).sum());
            for item in items {
                raw.extend_from_slice(&u32::try_from(item.len()).ok()?.to_le_bytes());
                raw.extend_from_slice(item);
            }
            raw
        }
        _ => return None,
    };
    Some(raw.into())
}

/// Whether a datatype has a typed field (FP16 and BF16 do not).
pub fn has_typed_field(datatype: &str) -> bool {
    !matches!(datatype, "FP16" | "BF16")
}

/// An output's raw bytes as typed contents, or None where its datatype has no field.
pub fn raw_to_contents(datatype: &str, raw: &[u8]) -> Option<InferTensorContents> {
    macro_rules! widen {
        ($t:ty, $n:expr, $into:ty) => {
            raw.chunks_exact($n)
                .map(|chunk| {
                    let mut bytes = [0u8; $n];
                    bytes.copy_from_slice(chunk);
                    <$into>::from(<$t>::from_le_bytes(bytes))
                })
                .collect()
        };
    }
    let mut contents = InferTensorContents::default();
    match datatype {
        "BOOL" => contents.bool_contents = raw.iter().map(|b| *b != 0).collect(),
        "INT8" => contents.int_contents = widen!(i8, 1, i32),
        "INT16" => contents.int_contents = widen!(i16, 2, i32),
        "INT32" => contents.int_contents = widen!(i32, 4, i32),
        "INT64" => contents.int64_contents = widen!(i64, 8, i64),
        "UINT8" => contents.uint_contents = widen!(u8, 1, u32),
        "UINT16" => contents.uint_contents = widen!(u16, 2, u32),
        "UINT32" => contents.uint_contents = widen!(u32, 4, u32),
        "UINT64" => contents.uint64_contents = widen!(u64, 8, u64),
        "FP32" => contents.fp32_contents = widen!(f32, 4, f32),
        "FP64" => contents.fp64_contents = widen!(f64, 8, f64),
        "BYTES" => {
            contents.bytes_contents = crate::spec::framed_elements(raw)?
                .into_iter()
                .map(Bytes::copy_from_slice)
                .collect();
        }
        _ => return None,
    }
    Some(contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_inputs_become_raw_and_refuse_what_python_refuses() {
        let contents = InferTensorContents {
            int_contents: vec![1, -2],
            ..Default::default()
        };
        let raw = contents_to_raw("INT16", &[1, 2], &contents).expect("converted");
        assert_eq!(&raw[..], &[1, 0, 0xfe, 0xff]);
        assert!(contents_to_raw("INT16", &[1, 3], &contents).is_none()); // count
        assert!(contents_to_raw("UINT8", &[2], &contents).is_none()); // wrong field: empty
        let big = InferTensorContents {
            int_contents: vec![300],
            ..Default::default()
        };
        assert!(contents_to_raw("INT8", &[1], &big).is_none()); // out of range
        assert!(contents_to_raw("FP16", &[1], &big).is_none()); // no typed field
        let text = InferTensorContents {
            bytes_contents: vec![Bytes::from_static(b"ab")],
            ..Default::default()
        };
        let framed = contents_to_raw("BYTES", &[1, 1], &text).expect("framed");
        assert_eq!(&framed[..], &[2, 0, 0, 0, b'a', b'b']);
    }

    #[test]
    fn raw_outputs_become_typed_fields() {
        let raw: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let contents = raw_to_contents("FP32", &raw).expect("typed");
        assert_eq!(contents.fp32_contents, vec![1.5, -2.0]);
        let small = raw_to_contents("UINT16", &[1, 1]).expect("typed");
        assert_eq!(small.uint_contents, vec![257]);
        let text = raw_to_contents("BYTES", &[1, 0, 0, 0, b'z']).expect("typed");
        assert_eq!(text.bytes_contents, vec![Bytes::from_static(b"z")]);
        assert!(raw_to_contents("BF16", &[0, 0]).is_none());
        // The framing must hold to the end: an element past it, or half a length.
        assert!(raw_to_contents("BYTES", &[5, 0, 0, 0, b'a']).is_none());
        assert!(raw_to_contents("BYTES", &[1, 0, 0, 0, b'z', 1, 0]).is_none());
    }
}

//! Tensor data as the REST protocol writes it in JSON, to and from the raw
//! little-endian bytes the gRPC protocol (and the batching queue) carries.
//!
//! Input data may be flat or nested (row-major either way); numbers for the
//! numeric datatypes, `true`/`false` for BOOL, strings for BYTES. FP16 and
//! BF16 travel only as binary data (Triton's rule: JSON has no half floats).
//! Outputs are written flat, as Triton does.
use serde_json::{Number, Value};

use crate::spec::{framed_elements, itemsize};

/// The elements a shape holds; an error a caller can act on for a negative
/// dimension or one past what memory could hold.
pub fn element_count(name: &str, shape: &[i64]) -> Result<usize, String> {
    let mut count: u64 = 1;
    for &dim in shape {
        if dim < 0 {
            return Err(format!(
                "input '{name}' has shape {shape:?}, which has a negative dimension"
            ));
        }
        count = count.saturating_mul(dim as u64);
    }
    usize::try_from(count)
        .ok()
        .filter(|&c| c <= crate::spec::MAX_ELEMENTS as usize)
        .ok_or_else(|| format!("input '{name}' has shape {shape:?}, which is too large"))
}

/// One input's JSON `data` as raw bytes in the protocol's layout (BYTES in its
/// 4-byte length-prefixed framing), checked against its shape's element count.
pub fn data_to_raw(
    name: &str,
    datatype: &str,
    shape: &[i64],
    data: &Value,
) -> Result<Vec<u8>, String> {
    if matches!(datatype, "FP16" | "BF16") {
        return Err(format!(
            "input '{name}' is {datatype}, which JSON cannot carry: send it as binary data \
             (the binary_data_size parameter, Triton's binary tensor extension)"
        ));
    }
    let size = match itemsize(datatype) {
        Some(size) => Some(size),
        None if datatype == "BYTES" => None,
        None => {
            return Err(format!(
                "input '{name}' has datatype '{}', which the protocol does not define",
                crate::core::quoted(datatype)
            ))
        }
    };
    let count = element_count(name, shape)?;
    let mut raw = Vec::with_capacity(count.saturating_mul(size.unwrap_or(8)).min(1 << 26));
    let mut found = 0usize;
    let mut encode = |value: &Value| -> Result<(), String> {
        found += 1;
        if found > count {
            return Ok(()); // counted on; the error below says how many
        }
        push_element(&mut raw, datatype, value)
            .map_err(|why| format!("input '{name}' ({datatype}): element {} {why}", found - 1))
    };
    walk(data, &mut encode)?;
    if found != count {
        return Err(format!(
            "input '{name}' has shape {shape:?}, which holds {count} elements, but its data \
             holds {found}"
        ));
    }
    Ok(raw)
}

/// Each leaf of a (nested) JSON array in row-major order; a scalar is one leaf.
fn walk(value: &Value, visit: &mut impl FnMut(&Value) -> Result<(), String>) -> Result<(), String> {
    match value {
        Value::Array(items) => {
            for item in items {
                walk(item, visit)?;
            }
            Ok(())
        }
        leaf => visit(leaf),
    }
}

fn push_element(raw: &mut Vec<u8>, datatype: &str, value: &Value) -> Result<(), String> {
    macro_rules! integer {
        ($t:ty) => {{
            let number = value
                .as_number()
                .ok_or_else(|| format!("is {}, not a number", kind(value)))?;
            let parsed = number
                .as_i64()
                .and_then(|v| <$t>::try_from(v).ok())
                .or_else(|| number.as_u64().and_then(|v| <$t>::try_from(v).ok()));
            match parsed {
                Some(v) => raw.extend_from_slice(&v.to_le_bytes()),
                None if number.is_f64() => return Err(format!("is {number}, not an integer")),
                None => return Err(format!("is {number}, out of range for {datatype}")),
            }
        }};
    }
    match datatype {
        "BOOL" => match value {
            Value::Bool(b) => raw.push(u8::from(*b)),
            other => return Err(format!("is {}, not true or false", kind(other))),
        },
        "INT8" => integer!(i8),
        "INT16" => integer!(i16),
        "INT32" => integer!(i32),
        "INT64" => integer!(i64),
        "UINT8" => integer!(u8),
        "UINT16" => integer!(u16),
        "UINT32" => integer!(u32),
        "UINT64" => integer!(u64),
        "FP32" | "FP64" => {
            let v = value
                .as_f64()
                .ok_or_else(|| format!("is {}, not a number", kind(value)))?;
            if datatype == "FP32" {
                raw.extend_from_slice(&(v as f32).to_le_bytes());
            } else {
                raw.extend_from_slice(&v.to_le_bytes());
            }
        }
        // BYTES
        _ => {
            let text = value
                .as_str()
                .ok_or_else(|| format!("is {}, not a string", kind(value)))?;
            let length = u32::try_from(text.len()).map_err(|_| "is too long".to_owned())?;
            raw.extend_from_slice(&length.to_le_bytes());
            raw.extend_from_slice(text.as_bytes());
        }
    }
    Ok(())
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// An output's raw bytes as a flat JSON array, or None when JSON cannot carry
/// them exactly (BYTES elements that are not UTF-8 text): that output then
/// travels as binary data. Half floats are widened to numbers.
pub fn raw_to_data(datatype: &str, raw: &[u8]) -> Option<Vec<Value>> {
    macro_rules! numbers {
        ($t:ty, $n:expr, $to:expr) => {
            raw.chunks_exact($n)
                .map(|chunk| {
                    let mut bytes = [0u8; $n];
                    bytes.copy_from_slice(chunk);
                    $to(<$t>::from_le_bytes(bytes))
                })
                .collect()
        };
    }
    let float = |v: f64| Number::from_f64(v).map_or(Value::Null, Value::Number);
    Some(match datatype {
        "BOOL" => raw.iter().map(|b| Value::Bool(*b != 0)).collect(),
        "INT8" => numbers!(i8, 1, |v: i8| Value::from(v)),
        "INT16" => numbers!(i16, 2, |v: i16| Value::from(v)),
        "INT32" => numbers!(i32, 4, |v: i32| Value::from(v)),
        "INT64" => numbers!(i64, 8, |v: i64| Value::from(v)),
        "UINT8" => raw.iter().map(|v| Value::from(*v)).collect(),
        "UINT16" => numbers!(u16, 2, |v: u16| Value::from(v)),
        "UINT32" => numbers!(u32, 4, |v: u32| Value::from(v)),
        "UINT64" => numbers!(u64, 8, |v: u64| Value::from(v)),
        "FP16" => numbers!(u16, 2, |v: u16| float(half::f16::from_bits(v).to_f64())),
        "BF16" => numbers!(u16, 2, |v: u16| float(half::bf16::from_bits(v).to_f64())),
        "FP32" => numbers!(f32, 4, |v: f32| float(f64::from(v))),
        "FP64" => numbers!(f64, 8, float),
        "BYTES" => framed_elements(raw)?
            .into_iter()
            .map(|item| Some(Value::String(std::str::from_utf8(item).ok()?.to_owned())))
            .collect::<Option<Vec<_>>>()?,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_and_flat_data_give_the_same_bytes() {
        let nested = data_to_raw("x", "FP32", &[2, 2], &json!([[1, 2.5], [3, 4]])).unwrap();
        let flat = data_to_raw("x", "FP32", &[2, 2], &json!([1, 2.5, 3, 4])).unwrap();
        assert_eq!(nested, flat);
        assert_eq!(&nested[4..8], &2.5f32.to_le_bytes());
    }

    #[test]
    fn wrong_counts_and_kinds_say_what_is_wrong() {
        let short = data_to_raw("x", "INT32", &[1, 3], &json!([1, 2])).unwrap_err();
        assert!(
            short.contains("holds 3 elements, but its data holds 2"),
            "{short}"
        );
        let long = data_to_raw("x", "INT32", &[1], &json!([1, 2])).unwrap_err();
        assert!(long.contains("holds 2"), "{long}");
        let range = data_to_raw("x", "INT8", &[1], &json!([300])).unwrap_err();
        assert!(range.contains("out of range for INT8"), "{range}");
        let fraction = data_to_raw("x", "INT64", &[1], &json!([1.5])).unwrap_err();
        assert!(fraction.contains("not an integer"), "{fraction}");
        let half = data_to_raw("x", "FP16", &[1], &json!([1.0])).unwrap_err();
        assert!(half.contains("binary"), "{half}");
        let text = data_to_raw("x", "BOOL", &[1], &json!(["yes"])).unwrap_err();
        assert!(text.contains("not true or false"), "{text}");
    }

    #[test]
    fn bytes_round_trip_and_binary_when_not_text() {
        let raw = data_to_raw("s", "BYTES", &[2], &json!(["ab", "é"])).unwrap();
        assert_eq!(&raw[..6], &[2, 0, 0, 0, b'a', b'b']);
        assert_eq!(
            raw_to_data("BYTES", &raw),
            Some(vec![json!("ab"), json!("é")])
        );
        assert_eq!(raw_to_data("BYTES", &[1, 0, 0, 0, 0xff]), None);
    }

    #[test]
    fn outputs_of_every_width() {
        assert_eq!(
            raw_to_data("INT16", &(-2i16).to_le_bytes()),
            Some(vec![json!(-2)])
        );
        let half = half::f16::from_f32(1.5).to_bits().to_le_bytes();
        assert_eq!(raw_to_data("FP16", &half), Some(vec![json!(1.5)]));
        assert_eq!(
            raw_to_data("BOOL", &[0, 1]),
            Some(vec![json!(false), json!(true)])
        );
    }
}

//! Splitting a batch's output tensor into each request's rows, without copying:
//! every part is a slice of the one buffer Python handed over.
use bytes::Bytes;

use crate::spec::itemsize;

/// One request's rows of an output: (shape, bytes).
pub type Part = (Vec<i64>, Bytes);

/// Each request's (shape, bytes) of an output whose first dimension is the batch's rows.
pub fn rows(
    datatype: &str,
    shape: &[i64],
    data: Bytes,
    rows: &[usize],
) -> Result<Vec<Part>, String> {
    let total: usize = rows.iter().sum();
    let Some((&first, inner)) = shape.split_first() else {
        return Err("a scalar output has no batch dimension".into());
    };
    if usize::try_from(first).ok() != Some(total) {
        return Err(format!(
            "its first dimension is {first}, not the batch's {total} rows"
        ));
    }
    let per_row: usize = inner
        .iter()
        .map(|d| usize::try_from(*d).map_err(|_| format!("negative dimension {d}")))
        .product::<Result<usize, String>>()?;
    let shape_of = |count: usize| {
        let mut own = Vec::with_capacity(shape.len());
        own.push(count as i64);
        own.extend_from_slice(inner);
        own
    };
    let mut parts = Vec::with_capacity(rows.len());
    let mut start = 0usize;
    match itemsize(datatype) {
        Some(size) => {
            let row_bytes = per_row * size;
            if data.len() != total * row_bytes {
                return Err(format!(
                    "{} bytes where the shape needs {}",
                    data.len(),
                    total * row_bytes
                ));
            }
            for &count in rows {
                let end = start + count * row_bytes;
                parts.push((shape_of(count), data.slice(start..end)));
                start = end;
            }
        }
        None => {
            // BYTES: each element is a 4-byte little-endian length and that many bytes.
            for &count in rows {
                let mut end = start;
                for _ in 0..count * per_row {
                    let header = data.get(end..end + 4).ok_or("its framing ends early")?;
                    let length =
                        u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
                    end += 4 + length;
                    if end > data.len() {
                        return Err("its framing ends early".into());
                    }
                }
                parts.push((shape_of(count), data.slice(start..end)));
                start = end;
            }
            if start != data.len() {
                return Err("its framing holds more elements than the shape".into());
            }
        }
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_size_rows_are_slices() {
        let data = Bytes::from((0u8..24).collect::<Vec<_>>());
        let parts = rows("FP32", &[3, 2], data, &[1, 2]).expect("split");
        assert_eq!(parts[0].0, vec![1, 2]);
        assert_eq!(parts[1].0, vec![2, 2]);
        assert_eq!(parts[1].1.len(), 16);
        assert!(rows("FP32", &[4, 2], Bytes::from(vec![0u8; 24]), &[1, 2]).is_err());
    }

    #[test]
    fn bytes_rows_follow_the_framing() {
        let mut data = Vec::new();
        for word in [&b"ab"[..], b"", b"xyz"] {
            data.extend_from_slice(&(word.len() as u32).to_le_bytes());
            data.extend_from_slice(word);
        }
        let parts = rows("BYTES", &[3], Bytes::from(data), &[2, 1]).expect("split");
        assert_eq!(parts[0].1.len(), 4 + 2 + 4);
        assert_eq!(&parts[1].1[4..], b"xyz");
        assert!(rows("BYTES", &[3], Bytes::from(vec![9, 0, 0, 0]), &[3]).is_err());
    }
}

//! The messages that cross the plugin boundary.
//!
//! A message is `[u64 LE: header length][JSON header][raw tail]`. The header
//! is serde JSON of the same plan and value types the snapshots cover; bulk
//! numbers (host tensors) travel as little-endian `f64` bytes in the tail,
//! the header pointing at them by offset, so a 10⁶-entry kernel is a copy,
//! not a text round trip.

use crate::backend::{BackendError, Emitted, HostTensor, RunContext, StepOutput};
use crate::plan::{Plan, StepId, Tags};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Host → plugin.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    /// `Backend::prepare`; the plugin keeps the plan for the `Run`s after it.
    Prepare {
        plan: Box<Plan>,
        ctx: RunContext,
    },
    /// `Backend::run` of one step of the prepared plan.
    Run {
        step: StepId,
    },
    Warnings,
}

/// Plugin → host, for a request that succeeded.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum Response {
    Prepared,
    Output { output: WireOutput },
    Warnings { warnings: Vec<String> },
}

/// [`StepOutput`] with its tensor in the tail.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WireOutput {
    Stored,
    Scalar {
        #[serde(with = "json_f64")]
        value: f64,
    },
    Tensor {
        shape: Vec<usize>,
        /// Byte offset in the tail; `len` f64 values.
        offset: usize,
        len: usize,
    },
}

/// [`Emitted`] on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireEmitted {
    pub step_id: StepId,
    pub key: String,
    pub train_step: Option<u64>,
    pub train_time: Option<f64>,
    pub tags: Tags,
    pub output: WireOutput,
}

/// JSON has no NaN or infinity (serde writes them as `null`, which does not
/// read back as a number): a scalar that is not finite travels as the
/// string `"NaN"`, `"inf"` or `"-inf"`. Tensors travel as raw bytes.
mod json_f64 {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        match *v {
            v if v.is_finite() => s.serialize_f64(v),
            v if v.is_nan() => s.serialize_str("NaN"),
            v if v > 0.0 => s.serialize_str("inf"),
            _ => s.serialize_str("-inf"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Num {
            Finite(f64),
            Word(String),
        }
        match Num::deserialize(d)? {
            Num::Finite(v) => Ok(v),
            Num::Word(w) => match w.as_str() {
                "NaN" => Ok(f64::NAN),
                "inf" => Ok(f64::INFINITY),
                "-inf" => Ok(f64::NEG_INFINITY),
                other => Err(D::Error::custom(format!(
                    "expected a number, \"NaN\", \"inf\" or \"-inf\", found {other:?}"
                ))),
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("malformed plugin message: {0}")]
    Malformed(String),
}

impl WireOutput {
    pub fn pack(out: StepOutput, tail: &mut Vec<u8>) -> Self {
        match out {
            StepOutput::Stored => WireOutput::Stored,
            StepOutput::Scalar { value } => WireOutput::Scalar { value },
            StepOutput::Tensor { tensor } => {
                let offset = tail.len();
                tail.reserve(tensor.data.len() * 8);
                for x in &tensor.data {
                    tail.extend_from_slice(&x.to_le_bytes());
                }
                WireOutput::Tensor {
                    shape: tensor.shape,
                    offset,
                    len: tensor.data.len(),
                }
            }
        }
    }

    pub fn unpack(self, tail: &[u8]) -> Result<StepOutput, WireError> {
        Ok(match self {
            WireOutput::Stored => StepOutput::Stored,
            WireOutput::Scalar { value } => StepOutput::Scalar { value },
            WireOutput::Tensor { shape, offset, len } => {
                let bytes = offset
                    .checked_add(len.saturating_mul(8))
                    .and_then(|end| tail.get(offset..end))
                    .ok_or_else(|| {
                        WireError::Malformed(format!(
                            "tensor of {len} values at byte {offset} past the tail's {} bytes",
                            tail.len()
                        ))
                    })?;
                if shape.iter().product::<usize>() != len {
                    return Err(WireError::Malformed(format!(
                        "tensor shape {shape:?} does not hold {len} values"
                    )));
                }
                let data = bytes
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8-byte chunk")))
                    .collect();
                StepOutput::Tensor {
                    tensor: HostTensor { shape, data },
                }
            }
        })
    }
}

impl WireEmitted {
    pub fn pack(e: Emitted, tail: &mut Vec<u8>) -> Self {
        WireEmitted {
            step_id: e.step_id,
            key: e.key,
            train_step: e.train_step,
            train_time: e.train_time,
            tags: e.tags,
            output: WireOutput::pack(e.output, tail),
        }
    }
    pub fn unpack(self, tail: &[u8]) -> Result<Emitted, WireError> {
        Ok(Emitted {
            step_id: self.step_id,
            key: self.key,
            train_step: self.train_step,
            train_time: self.train_time,
            tags: self.tags,
            output: self.output.unpack(tail)?,
        })
    }
}

/// Header and tail in one buffer.
pub fn encode<T: Serialize>(header: &T, tail: &[u8]) -> Vec<u8> {
    let json = serde_json::to_vec(header).expect("plugin messages always serialise");
    let mut out = Vec::with_capacity(8 + json.len() + tail.len());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(tail);
    out
}

/// Splits a message into its decoded header and its tail.
pub fn decode<T: DeserializeOwned>(msg: &[u8]) -> Result<(T, &[u8]), WireError> {
    let n = msg
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
        .ok_or_else(|| WireError::Malformed(format!("{} bytes, no header", msg.len())))?;
    let json = msg.get(8..8usize.saturating_add(n)).ok_or_else(|| {
        WireError::Malformed(format!(
            "header of {n} bytes in a {}-byte message",
            msg.len()
        ))
    })?;
    let header = serde_json::from_slice(json).map_err(|e| WireError::Malformed(e.to_string()))?;
    Ok((header, &msg[8 + n..]))
}

/// An error as it crosses the boundary (status `STATUS_ERROR`).
pub fn encode_error(e: &BackendError) -> Vec<u8> {
    encode(e, &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_cross_bit_for_bit() {
        let t = HostTensor {
            shape: vec![2, 3],
            data: vec![0.1, -2.5e-300, f64::MAX, 1.0 / 3.0, -0.0, 7.0],
        };
        let mut tail = Vec::new();
        let w = WireOutput::pack(StepOutput::Tensor { tensor: t.clone() }, &mut tail);
        let msg = encode(&Response::Output { output: w }, &tail);
        let (r, tail): (Response, _) = decode(&msg).unwrap();
        let Response::Output { output } = r else {
            panic!("wrong response {r:?}")
        };
        let StepOutput::Tensor { tensor } = output.unpack(tail).unwrap() else {
            panic!("not a tensor")
        };
        assert_eq!(tensor.shape, t.shape);
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&tensor.data), bits(&t.data));
    }

    #[test]
    fn truncated_messages_are_errors_not_panics() {
        let mut tail = Vec::new();
        let w = WireOutput::pack(
            StepOutput::Tensor {
                tensor: HostTensor {
                    shape: vec![4],
                    data: vec![1.0; 4],
                },
            },
            &mut tail,
        );
        let msg = encode(&Response::Output { output: w }, &tail);
        for cut in [0, 5, 12, msg.len() - 1] {
            let r = decode::<Response>(&msg[..cut]).and_then(|(r, tail)| match r {
                Response::Output { output } => output.unpack(tail).map(|_| ()),
                _ => Ok(()),
            });
            assert!(r.is_err(), "cut at {cut} accepted");
        }
    }

    #[test]
    fn scalars_round_trip_exactly_through_json() {
        // JSON has no NaN or infinity: they travel as words.
        for v in [
            0.1f64,
            1.0 / 3.0,
            2.0f64.sqrt(),
            6.02214076e23,
            5e-324,
            -0.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ] {
            let msg = encode(&WireOutput::Scalar { value: v }, &[]);
            let (w, _): (WireOutput, _) = decode(&msg).unwrap();
            let WireOutput::Scalar { value } = w else {
                panic!()
            };
            assert_eq!(value.to_bits(), v.to_bits());
        }
        let bad = br#"{"kind":"scalar","value":"many"}"#;
        let mut msg = (bad.len() as u64).to_le_bytes().to_vec();
        msg.extend_from_slice(bad);
        assert!(decode::<WireOutput>(&msg).is_err());
    }
}

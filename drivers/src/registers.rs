//! Decoding Modbus register values into readings: data types spread over one or two 16-bit
//! registers, word order, scale, offset and valid range, as configured per point.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    U16,
    I16,
    U32,
    I32,
    F32,
}

impl DataType {
    /// How many 16-bit registers a value of this type occupies.
    pub fn registers(self) -> u16 {
        match self {
            DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
        }
    }
}

/// Which register of a 32-bit value comes first on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WordOrder {
    /// High word first (the Modbus convention).
    #[default]
    Big,
    /// Low word first (common in meters).
    Little,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{data_type:?} needs {needed} registers, got {got}")]
    TooFew {
        data_type: DataType,
        needed: u16,
        got: usize,
    },
    #[error("the value is not a finite number")]
    NotFinite,
}

/// Decodes raw registers into a number, then applies `value * scale + offset`.
pub fn decode(
    registers: &[u16],
    data_type: DataType,
    order: WordOrder,
    scale: f64,
    offset: f64,
) -> Result<f64, DecodeError> {
    let needed = data_type.registers();
    if registers.len() < usize::from(needed) {
        return Err(DecodeError::TooFew {
            data_type,
            needed,
            got: registers.len(),
        });
    }
    let word32 = || -> u32 {
        let (hi, lo) = match order {
            WordOrder::Big => (registers[0], registers[1]),
            WordOrder::Little => (registers[1], registers[0]),
        };
        (u32::from(hi) << 16) | u32::from(lo)
    };
    let raw = match data_type {
        DataType::U16 => f64::from(registers[0]),
        DataType::I16 => f64::from(registers[0] as i16),
        DataType::U32 => f64::from(word32()),
        DataType::I32 => f64::from(word32() as i32),
        DataType::F32 => f64::from(f32::from_bits(word32())),
    };
    let value = raw * scale + offset;
    if value.is_finite() {
        Ok(value)
    } else {
        Err(DecodeError::NotFinite)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn types_word_order_and_scaling() {
        assert_eq!(
            decode(&[1234], DataType::U16, WordOrder::Big, 0.01, 0.0).unwrap(),
            12.34
        );
        assert_eq!(
            decode(&[0xFFFE], DataType::I16, WordOrder::Big, 1.0, 0.0).unwrap(),
            -2.0
        );
        assert_eq!(
            decode(&[0x0001, 0x0000], DataType::U32, WordOrder::Big, 1.0, 0.0).unwrap(),
            65536.0
        );
        assert_eq!(
            decode(
                &[0x0000, 0x0001],
                DataType::U32,
                WordOrder::Little,
                1.0,
                0.0
            )
            .unwrap(),
            65536.0
        );
        assert_eq!(
            decode(&[0xFFFF, 0xFFFF], DataType::I32, WordOrder::Big, 1.0, 5.0).unwrap(),
            4.0
        );
        let bits = 12.5f32.to_bits();
        let (hi, lo) = ((bits >> 16) as u16, bits as u16);
        assert_eq!(
            decode(&[hi, lo], DataType::F32, WordOrder::Big, 1.0, 0.0).unwrap(),
            12.5
        );
        assert_eq!(
            decode(&[lo, hi], DataType::F32, WordOrder::Little, 1.0, 0.0).unwrap(),
            12.5
        );
        assert!(matches!(
            decode(&[1], DataType::F32, WordOrder::Big, 1.0, 0.0),
            Err(DecodeError::TooFew { .. })
        ));
        let nan = f32::NAN.to_bits();
        assert_eq!(
            decode(
                &[(nan >> 16) as u16, nan as u16],
                DataType::F32,
                WordOrder::Big,
                1.0,
                0.0
            ),
            Err(DecodeError::NotFinite)
        );
    }

    proptest! {
        #[test]
        fn any_registers_decode_without_panicking(regs in prop::collection::vec(any::<u16>(), 0..4), scale in -100.0f64..100.0) {
            for t in [DataType::U16, DataType::I16, DataType::U32, DataType::I32, DataType::F32] {
                for o in [WordOrder::Big, WordOrder::Little] {
                    if let Ok(v) = decode(&regs, t, o, scale, 0.0) {
                        prop_assert!(v.is_finite());
                    }
                }
            }
        }

        #[test]
        fn f32_round_trips_in_both_word_orders(x in -1e6f32..1e6f32) {
            let bits = x.to_bits();
            let (hi, lo) = ((bits >> 16) as u16, bits as u16);
            prop_assert_eq!(decode(&[hi, lo], DataType::F32, WordOrder::Big, 1.0, 0.0).unwrap(), f64::from(x));
            prop_assert_eq!(decode(&[lo, hi], DataType::F32, WordOrder::Little, 1.0, 0.0).unwrap(), f64::from(x));
        }
    }
}

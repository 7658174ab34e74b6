//! The typed reading every driver emits: which device, which metric, when, what value, and how far
//! it can be trusted.

use serde::{Deserialize, Serialize};

/// How much a reading can be trusted. Suspect readings are kept, not dropped, so that an operator can
/// see a sensor going bad; rules decide whether to act on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quality {
    /// Measured and within the configured valid range.
    Good,
    /// Outside the configured valid range.
    OutOfRange,
    /// The device's clock was far in the future; the receive time was used instead.
    ClockCorrected,
    /// The device itself flagged the value (for example an HJ 212 flag other than `N`).
    DeviceFlagged,
}

/// One measured value from one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    pub device: String,
    pub metric: String,
    /// Milliseconds since the Unix epoch, as measured by the device where it says so.
    pub time_ms: i64,
    pub value: f64,
    pub unit: Option<String>,
    pub quality: Quality,
}

impl Reading {
    /// Applies a valid range, marking the reading rather than discarding it.
    pub fn with_range(mut self, min: Option<f64>, max: Option<f64>) -> Self {
        let below = min.is_some_and(|m| self.value < m);
        let above = max.is_some_and(|m| self.value > m);
        if (below || above || !self.value.is_finite()) && self.quality == Quality::Good {
            self.quality = Quality::OutOfRange;
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(value: f64) -> Reading {
        Reading {
            device: "wl-01".into(),
            metric: "water_level".into(),
            time_ms: 0,
            value,
            unit: Some("m".into()),
            quality: Quality::Good,
        }
    }

    #[test]
    fn range_marks_but_keeps() {
        assert_eq!(
            reading(5.0).with_range(Some(0.0), Some(20.0)).quality,
            Quality::Good
        );
        assert_eq!(
            reading(25.0).with_range(Some(0.0), Some(20.0)).quality,
            Quality::OutOfRange
        );
        assert_eq!(
            reading(-1.0).with_range(Some(0.0), None).quality,
            Quality::OutOfRange
        );
        assert_eq!(
            reading(f64::NAN).with_range(None, None).quality,
            Quality::OutOfRange
        );
        assert_eq!(reading(25.0).with_range(None, None).value, 25.0);
    }
}

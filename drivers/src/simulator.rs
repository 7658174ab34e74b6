//! Simulated stations, so a newcomer sees live data at once and tests have a source that behaves
//! like the county's gauges: a tipping-bucket rain gauge, a river level that rises after rain with a
//! delay and falls slowly, with drift and noise, an air station, and a scripted storm.
//!
//! Everything is a pure function of the seed and the elapsed simulated time, so a test can step the
//! model and know what to expect. Stations that share a catchment see the same rain.

use std::collections::HashMap;
use std::time::Duration;

use crate::driver::{Driver, DriverContext, DriverFuture};
use crate::reading::{Quality, Reading};

/// What a simulated station measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// `rainfall` (mm per report, in 0.5 mm tips) and `battery` (V).
    RainGauge,
    /// `water_level` (m) and `battery` (V).
    RiverGauge,
    /// `pm25`, `pm10` (µg/m³) and `temperature` (°C).
    AirStation,
}

impl Profile {
    pub fn parse(text: &str) -> Option<Profile> {
        match text {
            "rain" => Some(Profile::RainGauge),
            "river" => Some(Profile::RiverGauge),
            "air" => Some(Profile::AirStation),
            _ => None,
        }
    }
}

/// A scripted storm: starts `after` the node starts, lasts `duration`, peaks at `peak_mm_per_h`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Storm {
    pub after: Duration,
    pub duration: Duration,
    pub peak_mm_per_h: f64,
}

#[derive(Debug, Clone)]
pub struct SimulatedStation {
    pub device: String,
    pub profile: Profile,
    pub interval: Duration,
    /// Stations with the same catchment share rain (a river gauge downstream of a rain gauge).
    pub catchment: String,
}

/// The catchment model: rain intensity over simulated time and the river's response to it.
#[derive(Debug, Clone)]
pub struct Catchment {
    seed: u64,
    storm: Option<Storm>,
    /// Simulated seconds since the start.
    t: f64,
    /// Water stored in the catchment, in mm, draining to the river.
    store_mm: f64,
    /// Rain waiting to reach the river (mm per step), oldest first.
    lag: std::collections::VecDeque<f64>,
    /// Undelivered fraction of a bucket tip, in mm.
    bucket_mm: f64,
    tipped_mm: f64,
    level_m: f64,
}

/// Minutes between rain falling and it reaching the gauge.
const RIVER_LAG_STEPS: usize = 30;
const STEP_SECONDS: f64 = 60.0;
const TIP_MM: f64 = 0.5;

/// A cheap, deterministic hash to noise: the same seed and step give the same value on every run.
fn noise(seed: u64, step: u64, salt: u64) -> f64 {
    let mut x =
        seed ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ salt.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    (x % 2_000_001) as f64 / 1_000_000.0 - 1.0
}

impl Catchment {
    pub fn new(seed: u64, storm: Option<Storm>) -> Catchment {
        Catchment {
            seed,
            storm,
            t: 0.0,
            store_mm: 0.0,
            lag: std::iter::repeat_n(0.0, RIVER_LAG_STEPS).collect(),
            bucket_mm: 0.0,
            tipped_mm: 0.0,
            level_m: 2.0,
        }
    }

    /// Rain intensity in mm/h at simulated second `t`.
    pub fn intensity(&self, t: f64) -> f64 {
        let step = (t / STEP_SECONDS) as u64;
        let mut mm_h = 0.0;
        if let Some(storm) = self.storm {
            let start = storm.after.as_secs_f64();
            let len = storm.duration.as_secs_f64().max(1.0);
            if t >= start && t < start + len {
                // A smooth bell over the storm, with gusts.
                let x = (t - start) / len;
                let bell = (std::f64::consts::PI * x).sin().powi(2);
                mm_h = storm.peak_mm_per_h * bell * (1.0 + 0.3 * noise(self.seed, step, 1));
            }
        }
        // Occasional light showers outside the storm: a few hours in every few days.
        let shower = noise(self.seed, step / 180, 2);
        if shower > 0.85 {
            mm_h += 2.0 * (shower - 0.85) / 0.15 * (1.0 + 0.5 * noise(self.seed, step, 3)).max(0.0);
        }
        mm_h.max(0.0)
    }

    /// Advances one step (one simulated minute).
    pub fn step(&mut self) {
        let step = (self.t / STEP_SECONDS) as u64;
        let rain_mm = self.intensity(self.t) * STEP_SECONDS / 3600.0;
        self.bucket_mm += rain_mm;
        while self.bucket_mm >= TIP_MM {
            self.bucket_mm -= TIP_MM;
            self.tipped_mm += TIP_MM;
        }
        self.lag.push_back(rain_mm);
        let arriving = self.lag.pop_front().unwrap_or(0.0);
        self.store_mm += arriving;
        // The store drains with a three-hour time constant.
        let outflow = self.store_mm * STEP_SECONDS / (3.0 * 3600.0);
        self.store_mm -= outflow;
        let day = self.t / 86_400.0;
        let base = 2.0
            + 0.05 * (2.0 * std::f64::consts::PI * day).sin()
            + 0.02 * noise(self.seed, step / 1440, 4);
        self.level_m = base + 0.04 * self.store_mm + 0.004 * noise(self.seed, step, 5);
        self.t += STEP_SECONDS;
    }

    /// Rain tipped since the last call, in mm.
    pub fn take_tipped(&mut self) -> f64 {
        std::mem::take(&mut self.tipped_mm)
    }

    pub fn level_m(&self) -> f64 {
        self.level_m
    }

    pub fn simulated_seconds(&self) -> f64 {
        self.t
    }

    fn air(&self, salt: u64) -> (f64, f64, f64) {
        let step = (self.t / STEP_SECONDS) as u64;
        let hour = (self.t / 3600.0) % 24.0;
        let diurnal = (2.0 * std::f64::consts::PI * (hour - 8.0) / 24.0).cos();
        let washout = if self.intensity(self.t) > 1.0 {
            0.5
        } else {
            1.0
        };
        let pm25 =
            ((35.0 + 15.0 * diurnal + 5.0 * noise(self.seed, step, salt)) * washout).max(1.0);
        let pm10 = pm25 * (1.6 + 0.1 * noise(self.seed, step, salt + 1));
        let temperature = 18.0 - 6.0 * diurnal + 0.3 * noise(self.seed, step, salt + 2);
        (pm25, pm10, temperature)
    }
}

fn round_to(value: f64, step: f64) -> f64 {
    (value / step).round() * step
}

/// One driver for every simulated station on the node.
pub struct Simulator {
    stations: Vec<SimulatedStation>,
    catchments: HashMap<String, Catchment>,
    /// Simulated seconds per real second; above 1 a storm plays out in minutes.
    speedup: f64,
    seed: u64,
    storm: Option<Storm>,
}

impl Simulator {
    pub fn new(
        stations: Vec<SimulatedStation>,
        seed: u64,
        storm: Option<Storm>,
        speedup: f64,
    ) -> Simulator {
        Simulator {
            stations,
            catchments: HashMap::new(),
            speedup: speedup.clamp(0.001, 10_000.0),
            seed,
            storm,
        }
    }

    fn catchment(&mut self, name: &str) -> &mut Catchment {
        let seed = self.seed
            ^ name
                .bytes()
                .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        let storm = self.storm;
        self.catchments
            .entry(name.to_string())
            .or_insert_with(|| Catchment::new(seed, storm))
    }

    /// Readings for every station due at `now_ms`, advancing the catchments to `sim_seconds`.
    fn readings_due(&mut self, sim_seconds: f64, now_ms: i64, due: &[usize]) -> Vec<Reading> {
        let names: Vec<String> = self.stations.iter().map(|s| s.catchment.clone()).collect();
        for name in &names {
            let c = self.catchment(name);
            while c.simulated_seconds() + STEP_SECONDS <= sim_seconds {
                c.step();
            }
        }
        let mut out = Vec::new();
        let reading = |device: &str, metric: &str, value: f64, unit: &str| Reading {
            device: device.to_string(),
            metric: metric.to_string(),
            time_ms: now_ms,
            value,
            unit: Some(unit.to_string()),
            quality: Quality::Good,
        };
        for &i in due {
            let station = self.stations[i].clone();
            let salt = i as u64 * 16 + 100;
            let seed = self.seed;
            let c = self.catchment(&station.catchment);
            let step = (c.simulated_seconds() / STEP_SECONDS) as u64;
            let battery = round_to(12.6 - 0.2 * (noise(seed, step / 600, salt)).abs(), 0.01);
            match station.profile {
                Profile::RainGauge => {
                    out.push(reading(&station.device, "rainfall", c.take_tipped(), "mm"));
                    out.push(reading(&station.device, "battery", battery, "V"));
                }
                Profile::RiverGauge => {
                    out.push(reading(
                        &station.device,
                        "water_level",
                        round_to(c.level_m(), 0.01),
                        "m",
                    ));
                    out.push(reading(&station.device, "battery", battery, "V"));
                }
                Profile::AirStation => {
                    let (pm25, pm10, temperature) = c.air(salt);
                    out.push(reading(
                        &station.device,
                        "pm25",
                        round_to(pm25, 1.0),
                        "µg/m³",
                    ));
                    out.push(reading(
                        &station.device,
                        "pm10",
                        round_to(pm10, 1.0),
                        "µg/m³",
                    ));
                    out.push(reading(
                        &station.device,
                        "temperature",
                        round_to(temperature, 0.1),
                        "°C",
                    ));
                }
            }
        }
        out
    }
}

impl Driver for Simulator {
    fn name(&self) -> String {
        "simulator".into()
    }

    fn run<'a>(&'a mut self, ctx: &'a DriverContext) -> DriverFuture<'a> {
        Box::pin(async move {
            if self.stations.is_empty() {
                ctx.shutdown.cancelled().await;
                return Ok(());
            }
            let started = tokio::time::Instant::now();
            let mut next_due: Vec<tokio::time::Instant> = vec![started; self.stations.len()];
            loop {
                let wake = next_due.iter().min().copied().unwrap_or(started);
                tokio::select! {
                    () = tokio::time::sleep_until(wake) => {}
                    () = ctx.shutdown.cancelled() => return Ok(()),
                }
                let now = tokio::time::Instant::now();
                let due: Vec<usize> = (0..self.stations.len())
                    .filter(|&i| next_due[i] <= now)
                    .collect();
                for &i in &due {
                    let interval = self.stations[i].interval.max(Duration::from_millis(100));
                    while next_due[i] <= now {
                        next_due[i] += interval;
                    }
                }
                let sim_seconds = now.duration_since(started).as_secs_f64() * self.speedup;
                let now_ms = ctx.now();
                let readings = self.readings_due(sim_seconds, now_ms, &due);
                for station in due.iter().map(|&i| &self.stations[i]) {
                    ctx.health.ok(&station.device, now_ms);
                }
                ctx.sink.send(readings).await?;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn river_rises_after_the_storm_with_a_delay_and_falls_again() {
        let storm = Storm {
            after: Duration::from_secs(3600),
            duration: Duration::from_secs(2 * 3600),
            peak_mm_per_h: 40.0,
        };
        let mut c = Catchment::new(7, Some(storm));
        let mut levels = Vec::new();
        let mut rain = 0.0;
        for _ in 0..(12 * 60) {
            c.step();
            rain += c.take_tipped();
            levels.push(c.level_m());
        }
        let before = levels[59];
        let peak_at = levels
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
            .unwrap();
        assert!(
            rain > 30.0,
            "a 40 mm/h storm over two hours rains a lot: {rain}"
        );
        assert_eq!(rain % TIP_MM, 0.0, "the bucket tips in whole tips");
        assert!(
            levels[peak_at] > before + 1.0,
            "river rises: {before} -> {}",
            levels[peak_at]
        );
        // The peak comes after the storm's peak (minute 120) by at least the lag.
        assert!(peak_at > 120 + RIVER_LAG_STEPS, "peak at minute {peak_at}");
        assert!(
            levels[levels.len() - 1] < levels[peak_at] - 0.5,
            "and falls again"
        );
    }

    #[test]
    fn same_seed_same_series() {
        let run = || {
            let mut c = Catchment::new(42, None);
            (0..2000)
                .map(|_| {
                    c.step();
                    c.level_m()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn noise_stays_in_range() {
        for step in 0..10_000 {
            let n = noise(3, step, 9);
            assert!((-1.0..=1.0).contains(&n));
        }
    }
}

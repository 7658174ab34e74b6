//! Modbus RTU transactions per second on one port, through the node's own driver code
//! (`township_drivers::modbus::poll_loop`): one device, ten u16 points in registers 0-9 (one read of
//! ten registers per poll), polled back to back for SECONDS. Used by tests/bench/modbus.sh.
//!
//! Usage: modbus_rate PORT BAUD SECONDS   prints one JSON line.

use std::sync::Arc;
use std::time::Duration;

use township_drivers::driver::{DriverContext, Health, Sink};
use township_drivers::modbus::{ModbusDevice, ModbusPoint, poll_loop};
use township_drivers::registers::{DataType, WordOrder};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: modbus_rate PORT BAUD SECONDS");
        std::process::exit(2);
    }
    let (port, baud, seconds): (String, u32, f64) =
        (args[1].clone(), args[2].parse()?, args[3].parse()?);
    let device = ModbusDevice {
        id: "bench".into(),
        slave: 1,
        interval: Duration::from_micros(1),
        timeout: Duration::from_millis(200),
        points: (0..10)
            .map(|r| ModbusPoint {
                metric: format!("r{r}"),
                register: r,
                input: false,
                data_type: DataType::U16,
                word_order: WordOrder::Big,
                scale: 1.0,
                offset: 0.0,
                unit: None,
                min: None,
                max: None,
            })
            .collect(),
    };
    let (sink, mut rx) = Sink::channel(1 << 16);
    let health = Health::default();
    let ctx = DriverContext {
        sink,
        health: health.clone(),
        shutdown: tokio_util::sync::CancellationToken::new(),
        now_ms: Arc::new(|| 0),
    };
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let mut stream =
        township_drivers::serial::open(&port, baud, township_drivers::serial::Parity::None)?;
    let stop = ctx.shutdown.clone();
    let stopper = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
        stop.cancel();
    });
    let devices = [device];
    let started = std::time::Instant::now();
    poll_loop(&mut stream, baud, &devices, &ctx, &port).await?;
    stopper.await?;
    let elapsed = started.elapsed().as_secs_f64();
    drop(ctx);
    drain.abort();
    let h = health.device("bench").unwrap_or_default();
    let errors: u64 = h.errors.values().sum();
    println!(
        "{{\"transactions\": {}, \"errors\": {errors}, \"seconds\": {elapsed:.2}, \"per_second\": {:.1}}}",
        h.ok_total,
        h.ok_total as f64 / elapsed
    );
    Ok(())
}
